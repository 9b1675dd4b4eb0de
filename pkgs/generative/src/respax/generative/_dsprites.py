"""Procedural dSprites: the factor grid, ordering and index arithmetic of DeepMind's dSprites
(`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`), rendered on demand from factor values.

The real set holds 737,280 binary 64×64 images, every combination of colour {1}, shape
{1, 2, 3} = square, ellipse, heart, scale `linspace(0.5, 1, 6)`, orientation
`linspace(0, 2π, 40)` (both ends included) and posX, posY `linspace(0, 1, 32)`, in row-major
order with posY fastest: `index = latents_classes · (737280, 245760, 40960, 1024, 32, 1)`.

How the original maps (scale, position) to pixels and the heart's outline are not documented,
so the renderer matches the grid, the ordering and the metadata but not the pixels bit for bit:

* a sprite's *unit* is `7/64` of the image side times its scale; the square has half-side 1
  unit, the ellipse semi-axes 1.3 and 0.65 units, the heart is `(x² + y² − 1)³ ≤ x² y³`
  shifted so that its area centroid is the sprite's centre;
* the centre lies at `margin + pos · (side − 2 margin)` with `margin = 0.18 · side`, so every
  sprite stays inside the frame; posX moves along columns, posY along rows (downwards);
* the orientation turns the sprite counter-clockwise about its centre;
* a pixel is on when its centre is inside the shape.

`load_dsprites_npz` reads the real file from a path the user gives (nothing is downloaded).
"""

import math
import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int
from numpy.typing import NDArray

ArrayLike = Array | NDArray

DSPRITES_FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
DSPRITES_FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
DSPRITES_SIZE = 737_280
_BASES = (737_280, 245_760, 40_960, 1024, 32, 1)
_UNIT = 7.0 / 64.0
_MARGIN = 0.18
_HEART_CENTROID = 0.29348  # area centroid of (x^2 + y^2 - 1)^3 <= x^2 y^3 above y = 0


def dsprites_factor_values() -> tuple[np.ndarray, ...]:
    """The values of each factor, in `DSPRITES_FACTOR_NAMES` order (as the real metadata).

    Example:
        >>> vals = dsprites_factor_values()
        >>> [len(v) for v in vals], float(vals[2][0]), round(float(vals[3][1]), 4)
        ([1, 3, 6, 40, 32, 32], 0.5, 0.1611)
    """
    return (
        np.ones(1),
        np.arange(1.0, 4.0),
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2.0 * math.pi, 40),
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    )


def dsprites_classes(index: Int[ArrayLike, "*batch"]) -> Int[Array, "*batch 6"]:
    """The factor classes (`latents_classes` rows) of dataset indices.

    Example:
        >>> import jax.numpy as jnp
        >>> dsprites_classes(jnp.asarray(737279)).tolist()
        [0, 2, 5, 39, 31, 31]
    """
    index = jnp.asarray(index)
    sizes = jnp.asarray(DSPRITES_FACTOR_SIZES, index.dtype)
    bases = jnp.asarray(_BASES, index.dtype)
    return (index[..., None] // bases) % sizes


def dsprites_index(classes: Int[ArrayLike, "*batch 6"]) -> Int[Array, "*batch"]:
    """The dataset index of factor classes: `classes · (737280, 245760, 40960, 1024, 32, 1)`.

    Example:
        >>> import jax.numpy as jnp
        >>> int(dsprites_index(jnp.asarray([0, 1, 2, 3, 4, 5])))
        330885
    """
    classes = jnp.asarray(classes)
    return jnp.sum(classes * jnp.asarray(_BASES, classes.dtype), axis=-1)


def dsprites_values(classes: Int[ArrayLike, "*batch 6"]) -> Float[Array, "*batch 6"]:
    """The factor values (`latents_values` rows) of factor classes.

    Example:
        >>> import jax.numpy as jnp
        >>> dsprites_values(jnp.asarray([0, 2, 5, 0, 31, 0])).tolist()
        [1.0, 3.0, 1.0, 0.0, 1.0, 0.0]
    """
    classes = jnp.asarray(classes)
    cols = [jnp.asarray(v, jnp.zeros(()).dtype)[classes[..., i]] for i, v in
            enumerate(dsprites_factor_values())]  # fmt: skip
    return jnp.stack(cols, axis=-1)


def sprite_centre(pos: Float[ArrayLike, "*batch"], image_size: int) -> Float[Array, "*batch"]:
    """The pixel coordinate (in `[0, image_size]`, pixel centres at `i + 0.5`) of a sprite
    centre at position factor `pos ∈ [0, 1]`.

    Example:
        >>> import jax.numpy as jnp
        >>> [round(float(c), 2) for c in sprite_centre(jnp.asarray([0.0, 1.0]), 64)]
        [11.52, 52.48]
    """
    margin = _MARGIN * image_size
    return margin + jnp.asarray(pos) * (image_size - 2.0 * margin)


def render_dsprites(values: Float[ArrayLike, "*batch 6"], *, image_size: int = 64) -> Array:
    """Binary images (0.0 / 1.0) of sprites given their factor values.

    A pure array function: vectorised over the leading axes, jit- and vmap-able, so batches are
    rendered on demand (`jax.jit(render_dsprites, static_argnames="image_size")`).

    Args:
        values: `latents_values` rows `(color, shape, scale, orientation, posX, posY)`; shape is
            1 = square, 2 = ellipse, 3 = heart.
        image_size: the image side in pixels (64 for dSprites).

    Returns:
        `(*batch, image_size, image_size)` images in the values' float dtype (rows = y).

    Example:
        >>> import jax.numpy as jnp
        >>> img = render_dsprites(jnp.asarray([1.0, 1.0, 1.0, 0.0, 0.5, 0.5]))
        >>> img.shape, int(img.sum())  # a 14 x 14 square
        ((64, 64), 196)
    """
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"`image_size` must be an int >= 4, got {image_size!r}.")
    values = jnp.asarray(values)
    if values.shape[-1:] != (6,):
        raise ValueError(f"`values` must end in the 6 dSprites factors, got {values.shape}.")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.zeros(()).dtype)
    dtype = values.dtype
    v = values[..., None, None, :]
    shape, scale, theta = v[..., 1], v[..., 2], v[..., 3]
    cx, cy = sprite_centre(v[..., 4], image_size), sprite_centre(v[..., 5], image_size)
    centres = jnp.arange(image_size, dtype=dtype) + 0.5
    px, py = centres[None, :], centres[:, None]
    unit = _UNIT * image_size * scale
    dx, dy = (px - cx) / unit, -(py - cy) / unit  # dy points up
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    u, w = cos * dx + sin * dy, -sin * dx + cos * dy  # the pixel in the sprite's own frame
    square = jnp.maximum(jnp.abs(u), jnp.abs(w)) <= 1.0
    ellipse = (u / 1.3) ** 2 + (w / 0.65) ** 2 <= 1.0
    hy = w + _HEART_CENTROID
    heart = (u**2 + hy**2 - 1.0) ** 3 - u**2 * hy**3 <= 0.0
    inside = jnp.where(shape < 1.5, square, jnp.where(shape < 2.5, ellipse, heart))
    return inside.astype(dtype)


def render_dsprites_at(indices: Int[ArrayLike, "*batch"], *, image_size: int = 64) -> Array:
    """The images at dataset indices (`render_dsprites` of their factor values).

    Example:
        >>> import jax.numpy as jnp
        >>> render_dsprites_at(jnp.arange(3), image_size=32).shape
        (3, 32, 32)
    """
    return render_dsprites(dsprites_values(dsprites_classes(indices)), image_size=image_size)


class DSpritesData(NamedTuple):
    """The arrays of a dSprites npz file.

    Attributes:
        imgs: `(N, 64, 64)` uint8 images with values 0/1.
        latents_values: `(N, 6)` factor values.
        latents_classes: `(N, 6)` factor classes.
    """

    imgs: np.ndarray
    latents_values: np.ndarray
    latents_classes: np.ndarray


def load_dsprites_npz(path: str | os.PathLike) -> DSpritesData:
    """Read a dSprites `.npz` (keys `imgs`, `latents_values`, `latents_classes`) from a path.

    Checks the layout: 3-D binary images, `(N, 6)` classes within the grid's sizes and values
    that match them. A file of the full 737,280 images must be in the real set's order (index =
    classes · bases); a smaller file (e.g. a test fixture) may hold any rows of the grid.

    Args:
        path: the npz, e.g. `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`.

    Returns:
        A `DSpritesData`.

    Raises:
        ValueError: a missing key, a wrong shape or values outside the grid, naming which.

    Example:
        >>> data = load_dsprites_npz("dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
        ... # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"`path`: no dSprites npz file at {path!r}.")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("imgs", "latents_values", "latents_classes") if k not in f]
        if missing:
            raise ValueError(
                f"`path`: {path!r} lacks the dSprites key(s) {missing}; it holds {sorted(f)}."
            )
        imgs, values, classes = f["imgs"], f["latents_values"], f["latents_classes"]
    n = imgs.shape[0] if imgs.ndim else 0
    if imgs.ndim != 3 or n == 0:
        raise ValueError(f"`path`: `imgs` must be (N, H, W) images, got shape {imgs.shape}.")
    for name, arr in (("latents_values", values), ("latents_classes", classes)):
        if arr.shape != (n, 6):
            raise ValueError(f"`path`: `{name}` must have shape ({n}, 6), got {arr.shape}.")
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"`path`: `latents_classes` must be integers, got {classes.dtype}.")
    if np.any(classes < 0) or np.any(classes >= np.asarray(DSPRITES_FACTOR_SIZES)):
        raise ValueError(f"`path`: `latents_classes` outside the grid {DSPRITES_FACTOR_SIZES}.")
    expected = np.stack([v[classes[:, i]] for i, v in enumerate(dsprites_factor_values())], axis=1)
    if not np.allclose(values, expected, atol=1e-6):
        raise ValueError("`path`: `latents_values` do not match `latents_classes`.")
    if not np.isin(imgs, (0, 1)).all():
        raise ValueError("`path`: `imgs` must be binary (0/1).")
    if n == DSPRITES_SIZE and not np.array_equal(classes @ np.asarray(_BASES), np.arange(n)):
        raise ValueError("`path`: the 737,280 rows are not in the dSprites index order.")
    return DSpritesData(imgs.astype(np.uint8), values, classes.astype(np.int64))
