"""Procedural dSprites: the grid, the ordering and index arithmetic, the rendered sprites'
centroids and areas, and the npz loader on a small generated file of the real layout."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.generative import (
    DSPRITES_FACTOR_SIZES,
    DSPRITES_SIZE,
    dsprites_classes,
    dsprites_factor_values,
    dsprites_index,
    dsprites_values,
    load_dsprites_npz,
    render_dsprites,
    render_dsprites_at,
    sprite_centre,
)


def test_grid_and_metadata():
    assert DSPRITES_FACTOR_SIZES == (1, 3, 6, 40, 32, 32)
    assert DSPRITES_SIZE == math.prod(DSPRITES_FACTOR_SIZES) == 737_280
    color, shape, scale, orient, posx, posy = dsprites_factor_values()
    np.testing.assert_allclose(scale, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(orient[[0, -1]], [0.0, 2 * math.pi])  # both ends included
    np.testing.assert_allclose(np.diff(orient), 2 * math.pi / 39)
    np.testing.assert_allclose(posx, np.linspace(0, 1, 32))
    np.testing.assert_array_equal(shape, [1, 2, 3])


def test_ordering_is_row_major_with_pos_y_fastest():
    idx = jnp.arange(DSPRITES_SIZE)
    classes = np.asarray(jax.jit(dsprites_classes)(idx))
    # The same table as np.indices over the grid, flattened in C order.
    ref = np.indices(DSPRITES_FACTOR_SIZES).reshape(6, -1).T
    np.testing.assert_array_equal(classes, ref)
    np.testing.assert_array_equal(np.asarray(dsprites_index(classes)), np.arange(DSPRITES_SIZE))
    np.testing.assert_array_equal(classes[1], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(classes[32], [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(classes[245_760], [0, 1, 0, 0, 0, 0])
    vals = np.asarray(dsprites_values(classes[[0, 737_279]]))
    np.testing.assert_allclose(vals, [[1, 1, 0.5, 0, 0, 0], [1, 3, 1.0, 2 * math.pi, 1, 1]])


@pytest.mark.parametrize("image_size", [64, 32])
def test_centroid_and_area(image_size):
    render = jax.jit(render_dsprites, static_argnames="image_size")
    pos = np.linspace(0, 1, 32)[::5]
    scales = np.linspace(0.5, 1.0, 6)
    orients = np.linspace(0, 2 * math.pi, 40)[::7]
    rows = np.asarray(
        list(itertools.product([1.0], [1.0, 2.0, 3.0], scales, orients, pos, pos[::2]))
    )
    imgs = np.asarray(render(jnp.asarray(rows, jnp.float32), image_size=image_size))
    assert set(np.unique(imgs)) <= {0.0, 1.0}
    area = imgs.sum((1, 2))
    assert area.min() > 0
    grid = np.arange(image_size) + 0.5
    cx = (imgs.sum(1) * grid).sum(1) / area
    cy = (imgs.sum(2) * grid).sum(1) / area
    ex, ey = (
        np.asarray(sprite_centre(rows[:, 4], image_size)),
        np.asarray(sprite_centre(rows[:, 5], image_size)),
    )
    assert np.max(np.hypot(cx - ex, cy - ey)) < 1.0
    # No sprite touches the border.
    assert imgs[:, 0].sum() + imgs[:, -1].sum() + imgs[:, :, 0].sum() + imgs[:, :, -1].sum() == 0
    # Larger scale, same shape / orientation / position: a superset of pixels, so the area is
    # monotone (and grows from the smallest to the largest scale).
    by_scale = imgs.reshape(3, 6, -1, image_size, image_size)
    assert np.all(by_scale[:, 1:] >= by_scale[:, :-1])
    areas = by_scale.sum((3, 4))
    assert np.all(areas[:, -1] > areas[:, 0])


def test_shapes_differ_and_orientation_turns_the_sprite():
    rows = jnp.asarray([[1, s, 1.0, 0.3, 0.5, 0.5] for s in (1.0, 2.0, 3.0)])
    imgs = np.asarray(render_dsprites(rows))
    assert len({imgs[i].tobytes() for i in range(3)}) == 3
    # The ellipse turned by pi/2 is its transpose about the centre.
    ell = np.asarray(render_dsprites(jnp.asarray([1, 2.0, 1.0, 0.0, 0.5, 0.5])))
    turned = np.asarray(render_dsprites(jnp.asarray([1, 2.0, 1.0, math.pi / 2, 0.5, 0.5])))
    assert abs(ell.sum() - turned.sum()) <= 4
    assert np.sum(turned * ell.T) >= 0.9 * ell.sum()
    np.testing.assert_array_equal(
        render_dsprites_at(jnp.asarray([5]), image_size=16)[0],
        render_dsprites(dsprites_values(dsprites_classes(jnp.asarray(5))), image_size=16),
    )


def _write_npz(path, idx, **overrides):
    classes = np.asarray(dsprites_classes(jnp.asarray(idx)), np.int64)
    values = np.asarray(dsprites_values(classes), np.float64)
    imgs = np.asarray(render_dsprites_at(jnp.asarray(idx)), np.uint8)
    arrays = {"imgs": imgs, "latents_values": values, "latents_classes": classes}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)


def test_npz_loader(tmp_path):
    idx = np.random.default_rng(0).choice(DSPRITES_SIZE, 40, replace=False)
    good = tmp_path / "dsprites_small.npz"
    _write_npz(good, idx)
    data = load_dsprites_npz(good)
    assert data.imgs.shape == (40, 64, 64) and data.imgs.dtype == np.uint8
    np.testing.assert_array_equal(dsprites_index(data.latents_classes), idx)
    cases = {
        "lacks the dSprites key": {"imgs": None},
        "latents_classes` must have shape": {"latents_classes": np.zeros((40, 5), np.int64)},
        "imgs` must be": {"imgs": np.zeros((40, 64), np.uint8)},
        "outside the grid": {"latents_classes": np.full((40, 6), 7, np.int64)},
        "do not match": {"latents_values": np.zeros((40, 6))},
        "binary": {"imgs": np.full((40, 64, 64), 255, np.uint8)},
    }
    for i, (message, override) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.npz"
        _write_npz(bad, idx, **override)
        with pytest.raises(ValueError, match=message):
            load_dsprites_npz(bad)
    with pytest.raises(ValueError, match="path"):
        load_dsprites_npz(tmp_path / "missing.npz")


def test_render_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        render_dsprites(jnp.zeros(6), image_size=2)
    with pytest.raises((ValueError, TypeError), match="values"):
        render_dsprites(jnp.zeros(5))
