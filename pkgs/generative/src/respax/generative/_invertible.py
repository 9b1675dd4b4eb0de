"""Invertible blocks with exact log-determinants and declared bi-Lipschitz bounds.

Every block acts on **one example** of its event shape: vectors `(d,)` or images in **NHWC**
layout without the batch axis, i.e. `(H, W, C)`; vmap over a batch. Every block has
`forward_and_log_det(x, context=None) -> (y, log|det dy/dx|)`,
`inverse_and_log_det(y, context=None) -> (x, log|det dx/dy|)` and `lipschitz_bound()`, which
returns `(Lip(F), Lip(F^-1))` in the l2 norm as Python/JAX floats, `inf` where no global bound
exists (affine coupling). Couplings split the **last axis** (features or channels) in two halves.

The bounds (derived, see the module docs of `respax.generative`):

| block | Lip(F) | Lip(F^-1) |
|---|---|---|
| additive coupling, L = Lip(t) | (L + sqrt(L^2 + 4)) / 2 | same |
| affine coupling | inf (only local) | inf |
| ActNorm | max sigma_i | 1 / min sigma_i |
| 1x1 LU convolution | sigma_max(W) | 1 / sigma_min(W) |
| permutation, squeeze | 1 | 1 |
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray


def _check_shape(name: str, x, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have the event shape {tuple(shape)}, got {tuple(x.shape)}."
        )


def _check_context(context, shape: tuple[int, ...] | None) -> None:
    if shape is None:
        if context is not None:
            raise ValueError("`context` was given to an unconditional block; pass context=None.")
        return
    if context is None:
        raise ValueError(
            f"`context` of shape {tuple(shape)} is required by this conditional block."
        )
    if tuple(context.shape) != tuple(shape):
        raise ValueError(f"`context` must have shape {tuple(shape)}, got {tuple(context.shape)}.")


class InvertibleBlock(eqx.Module):
    """Base class: an invertible map of one example with its log|det| and Lipschitz bounds.

    Subclasses define `event_shape`, `forward_and_log_det`, `inverse_and_log_det` and
    `lipschitz_bound`.
    """

    def forward_and_log_det(self, x, context=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse_and_log_det(self, y, context=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def lipschitz_bound(self):  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Conditioners.


class MLPConditioner(eqx.Module):
    """An MLP `x1 (+ context) -> out` on the last axis of vectors or NHWC images (per pixel for
    images: a stack of 1x1 convolutions, so the conditioner sees one pixel's channels).

    Its `lipschitz_bound()` is the product of the layers' spectral norms (the activations are
    1-Lipschitz: relu, elu, tanh). The last layer is zero-initialised (identity blocks at init)
    unless `zero_init=False`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> t = MLPConditioner(2, 3, width=8, depth=1, key=jax.random.key(0))
        >>> t(jnp.ones(2)).shape
        (3,)
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable = eqx.field(static=True)
    context_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        width: int = 64,
        depth: int = 2,
        context_size: int = 0,
        activation: Callable = jax.nn.relu,
        zero_init: bool = True,
        key: PRNGKeyArray,
    ):
        sizes = [in_size + context_size] + [width] * depth + [out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)]
        if zero_init:
            last = layers[-1]
            last = eqx.tree_at(
                lambda m: (m.weight, m.bias),
                last,
                (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
            )
            layers[-1] = last
        self.layers = tuple(layers)
        self.activation = activation
        self.context_size = context_size

    def _vector(self, h, c):
        if c is not None:
            h = jnp.concatenate([h, c.astype(h.dtype)])
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)

    def __call__(self, x, context=None):
        if x.ndim == 1:
            return self._vector(x, context)
        flat = x.reshape(-1, x.shape[-1])
        out = jax.vmap(lambda h: self._vector(h, context))(flat)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def lipschitz_bound(self):
        bound = jnp.asarray(1.0, self.layers[0].weight.dtype)
        for layer in self.layers:
            bound = bound * jnp.linalg.norm(layer.weight, ord=2)
        return bound


# ---------------------------------------------------------------------------------------------
# Couplings.


def _split(x):
    k = x.shape[-1] // 2
    return x[..., :k], x[..., k:]


def _coupling_sizes(event_shape: tuple[int, ...]) -> tuple[int, int]:
    c = event_shape[-1]
    if c < 2:
        raise ValueError(f"`event_shape` must have a last axis >= 2 to split, got {event_shape}.")
    return c // 2, c - c // 2


def _couple(block, name, v, context, update):
    """The coupling skeleton shared by both directions of every coupling: check `v` and the
    context, split the last axis, keep the first half, `update(v1, v2) -> (new v2, log|det|)`."""
    _check_shape(name, v, block.event_shape)
    _check_context(context, block.context_shape)
    v1, v2 = _split(v)
    new2, log_det = update(v1, v2)
    return jnp.concatenate([v1, new2], axis=-1), log_det


class AdditiveCoupling(InvertibleBlock):
    """NICE coupling `y1 = x1, y2 = x2 + t(x1)`: log|det| = 0, globally bi-Lipschitz.

    Args:
        event_shape: `(d,)` or `(H, W, C)`; the last axis is split in halves.
        key: initialisation key.
        width, depth: the conditioner MLP.
        context_size: size of a vector context (0: unconditional).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> b = AdditiveCoupling((4,), key=jax.random.key(0))
        >>> y, ld = b.forward_and_log_det(jnp.ones(4))
        >>> float(ld)
        0.0
    """

    conditioner: MLPConditioner
    event_shape: tuple[int, ...] = eqx.field(static=True)
    context_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(
        self,
        event_shape,
        *,
        key,
        width=64,
        depth=2,
        context_size=0,
        activation=jax.nn.relu,
        zero_init=True,
    ):
        event_shape = tuple(event_shape)
        k1, k2 = _coupling_sizes(event_shape)
        self.conditioner = MLPConditioner(
            k1,
            k2,
            width=width,
            depth=depth,
            context_size=context_size,
            activation=activation,
            zero_init=zero_init,
            key=key,
        )
        self.event_shape = event_shape
        self.context_shape = (context_size,) if context_size else None

    def forward_and_log_det(self, x, context=None):
        def update(x1, x2):
            return x2 + self.conditioner(x1, context), jnp.zeros((), x.dtype)

        return _couple(self, "x", x, context, update)

    def inverse_and_log_det(self, y, context=None):
        def update(y1, y2):
            return y2 - self.conditioner(y1, context), jnp.zeros((), y.dtype)

        return _couple(self, "y", y, context, update)

    def lipschitz_bound(self):
        lip = self.conditioner.lipschitz_bound()
        b = (lip + jnp.sqrt(lip**2 + 4.0)) / 2.0
        return b, b


def coupling_scale(h, scale_fn: str, eps: float):
    """The positive coupling scale from the conditioner's raw output `h`.

    `"exp"`: exp(h) (+ eps); `"sigmoid"`: sigmoid(h + 2) + eps, as the exploding-inverses
    authors code it (so the scale is 1/(1+e^-2) + eps ~ 0.88 at h = 0); `"softplus"`:
    softplus(h) + eps, flowjax's default with eps = 1e-2.
    """
    if scale_fn == "exp":
        return jnp.exp(h) + eps
    if scale_fn == "sigmoid":
        return jax.nn.sigmoid(h + 2.0) + eps
    if scale_fn == "softplus":
        return jax.nn.softplus(h) + eps
    raise ValueError(f"`scale_fn` must be 'exp', 'sigmoid' or 'softplus', got {scale_fn!r}.")


class AffineCoupling(InvertibleBlock):
    """RealNVP / Glow coupling `y1 = x1, y2 = x2 * s(x1) + t(x1)`, s = `coupling_scale(h)`.

    log|det| = sum log s. No global Lipschitz bound: the inverse divides by s, which can go to
    `eps` (or to 0 when eps = 0), and the Jacobian grows with |x2|; `lipschitz_bound()` returns
    `(inf, inf)`. `local_lipschitz` gives the local bounds at a point.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> b = AffineCoupling((4,), scale_fn="exp", key=jax.random.key(0))
        >>> x = jnp.arange(4.0)
        >>> y, ld = b.forward_and_log_det(x)
        >>> bool(jnp.allclose(b.inverse_and_log_det(y)[0], x))
        True
    """

    conditioner: MLPConditioner
    event_shape: tuple[int, ...] = eqx.field(static=True)
    context_shape: tuple[int, ...] | None = eqx.field(static=True)
    scale_fn: str = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        event_shape,
        *,
        key,
        scale_fn: str = "sigmoid",
        eps: float = 0.0,
        width=64,
        depth=2,
        context_size=0,
        activation=jax.nn.relu,
        zero_init=True,
    ):
        event_shape = tuple(event_shape)
        k1, k2 = _coupling_sizes(event_shape)
        if scale_fn not in ("exp", "sigmoid", "softplus"):
            raise ValueError(
                f"`scale_fn` must be 'exp', 'sigmoid' or 'softplus', got {scale_fn!r}."
            )
        if eps < 0:
            raise ValueError(f"`eps` must be >= 0, got {eps}.")
        self.conditioner = MLPConditioner(
            k1,
            2 * k2,
            width=width,
            depth=depth,
            context_size=context_size,
            activation=activation,
            zero_init=zero_init,
            key=key,
        )
        self.event_shape = event_shape
        self.context_shape = (context_size,) if context_size else None
        self.scale_fn = scale_fn
        self.eps = float(eps)

    def _scale_shift(self, x1, context):
        h = self.conditioner(x1, context)
        k2 = h.shape[-1] // 2
        s = coupling_scale(h[..., :k2], self.scale_fn, self.eps)
        return s, h[..., k2:]

    def forward_and_log_det(self, x, context=None):
        def update(x1, x2):
            s, t = self._scale_shift(x1, context)
            return x2 * s + t, jnp.sum(jnp.log(s))

        return _couple(self, "x", x, context, update)

    def inverse_and_log_det(self, y, context=None):
        def update(y1, y2):
            s, t = self._scale_shift(y1, context)
            return (y2 - t) / s, -jnp.sum(jnp.log(s))

        return _couple(self, "y", y, context, update)

    def lipschitz_bound(self):
        return math.inf, math.inf


# ---------------------------------------------------------------------------------------------
# Normalisations, mixing, reshaping.


class ActNorm(InvertibleBlock):
    """Glow's ActNorm `y = (x + b) * exp(log_scale)` per feature / channel (last axis).

    log|det| = (number of pixels) * sum log_scale. `initialize(x_batch)` sets b and the scale
    so that the batch has zero mean and unit variance per channel (Glow's data-dependent init).

    Example:
        >>> import jax.numpy as jnp
        >>> b = ActNorm((3,))
        >>> b.lipschitz_bound()[0]
        Array(1., dtype=float32)
    """

    bias: Float[Array, " c"]
    log_scale: Float[Array, " c"]
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, event_shape, *, dtype=None):
        event_shape = tuple(event_shape)
        dtype = dtype or jnp.zeros(()).dtype
        self.bias = jnp.zeros(event_shape[-1], dtype)
        self.log_scale = jnp.zeros(event_shape[-1], dtype)
        self.event_shape = event_shape

    def initialize(self, x_batch, eps: float = 1e-6) -> "ActNorm":
        """A copy with the data-dependent initialisation on `x_batch` (batch, *event_shape)."""
        if tuple(x_batch.shape[1:]) != self.event_shape:
            raise ValueError(
                f"`x_batch` must have shape (batch, *{self.event_shape}), "
                f"got {tuple(x_batch.shape)}."
            )
        flat = x_batch.reshape(-1, self.event_shape[-1])
        mean, std = jnp.mean(flat, 0), jnp.std(flat, 0)
        return eqx.tree_at(lambda m: (m.bias, m.log_scale), self, (-mean, -jnp.log(std + eps)))

    def _pixels(self):
        return math.prod(self.event_shape[:-1])

    def forward_and_log_det(self, x, context=None):
        _check_shape("x", x, self.event_shape)
        y = (x + self.bias) * jnp.exp(self.log_scale)
        return y, self._pixels() * jnp.sum(self.log_scale)

    def inverse_and_log_det(self, y, context=None):
        _check_shape("y", y, self.event_shape)
        x = y * jnp.exp(-self.log_scale) - self.bias
        return x, -self._pixels() * jnp.sum(self.log_scale)

    def lipschitz_bound(self):
        return jnp.exp(jnp.max(self.log_scale)), jnp.exp(-jnp.min(self.log_scale))


class LUConv1x1(InvertibleBlock):
    """Glow's invertible 1x1 convolution in LU form, `W = P L (U + diag(sign * exp(log_s)))`,
    applied to the last axis (a dense invertible linear map for vectors).

    log|det| = (number of pixels) * sum log_s; Lip(F) = sigma_max(W), Lip(F^-1) = 1/sigma_min(W).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> b = LUConv1x1((4,), key=jax.random.key(0))
        >>> x = jnp.arange(4.0)
        >>> bool(jnp.allclose(b.inverse_and_log_det(b.forward_and_log_det(x)[0])[0], x,
        ...                   atol=1e-5))
        True
    """

    lower: Float[Array, "c c"]
    upper: Float[Array, "c c"]
    log_s: Float[Array, " c"]
    sign_s: tuple[float, ...] = eqx.field(static=True)
    perm: tuple[int, ...] = eqx.field(static=True)  # W's row i is row perm[i] of L U
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, event_shape, *, key, dtype=None):
        event_shape = tuple(event_shape)
        c = event_shape[-1]
        dtype = dtype or jnp.zeros(()).dtype
        q, _ = jnp.linalg.qr(jax.random.normal(key, (c, c), dtype))
        p, low, up = jax.scipy.linalg.lu(q)
        d = jnp.diag(up)
        self.perm = tuple(int(i) for i in np.argmax(np.asarray(p), axis=1))
        self.lower = low
        self.upper = jnp.triu(up, 1)
        self.log_s = jnp.log(jnp.abs(d))
        self.sign_s = tuple(float(v) for v in np.sign(np.asarray(d)))
        self.event_shape = event_shape

    def _factors(self):
        c = self.log_s.shape[0]
        eye = jnp.eye(c, dtype=self.log_s.dtype)
        low = jnp.tril(self.lower, -1) + eye
        sign = jnp.asarray(self.sign_s, self.log_s.dtype)
        up = jnp.triu(self.upper, 1) + jnp.diag(sign * jnp.exp(self.log_s))
        return low, up

    def weight(self) -> Float[Array, "c c"]:
        """The dense matrix W (acting as y = W x on the last axis)."""
        low, up = self._factors()
        return (low @ up)[jnp.asarray(self.perm)]

    def forward_and_log_det(self, x, context=None):
        _check_shape("x", x, self.event_shape)
        y = x @ self.weight().T
        return y, math.prod(self.event_shape[:-1]) * jnp.sum(self.log_s)

    def inverse_and_log_det(self, y, context=None):
        _check_shape("y", y, self.event_shape)
        c = self.log_s.shape[0]
        low, up = self._factors()
        flat = y.reshape(-1, c).T  # (c, pixels); W x = y with W = (L U)[perm]
        inv = np.argsort(np.asarray(self.perm))
        rhs = flat[jnp.asarray(inv)]
        z = jax.scipy.linalg.solve_triangular(low, rhs, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(up, z, lower=False)
        return x.T.reshape(y.shape), -math.prod(self.event_shape[:-1]) * jnp.sum(self.log_s)

    def lipschitz_bound(self):
        s = jnp.linalg.svd(self.weight(), compute_uv=False)
        return s[0], 1.0 / s[-1]


@jax.custom_jvp
def _permute_last(x, perm):
    """`x[..., perm]`; its derivative is a product with the one-hot matrix of `perm`, so that
    reverse mode transposes it into another matrix product instead of JAX's scatter-add for a
    gather (every scatter needs its own zero buffer and XLA allocated all of them up front: one
    activation per layer in the backward pass of memory-saving backprop)."""
    return x[..., perm]


@_permute_last.defjvp
def _permute_last_jvp(primals, tangents):
    x, perm = primals
    c = x.shape[-1]
    one_hot = (jnp.arange(c)[:, None] == perm[None, :]).astype(x.dtype)  # (t @ P)_j = t_perm[j]
    return x[..., perm], tangents[0] @ one_hot


class Permute(InvertibleBlock):
    """A fixed permutation of the last axis (default: reversal, Glow's "reverse"); log|det| = 0.

    The permutation is stored as an integer array (not a static field), so that flows whose
    layers use different permutations can be stacked and scanned (`ScannedBlocks`).

    Example:
        >>> import jax.numpy as jnp
        >>> Permute((3,)).forward_and_log_det(jnp.arange(3.0))[0]
        Array([2., 1., 0.], dtype=float32)
    """

    permutation: Int[Array, " c"]
    inverse_permutation: Int[Array, " c"]
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, event_shape, permutation=None):
        event_shape = tuple(event_shape)
        c = event_shape[-1]
        perm = np.arange(c)[::-1] if permutation is None else np.asarray(permutation).ravel()
        if perm.shape != (c,) or sorted(perm.tolist()) != list(range(c)):
            raise ValueError(
                f"`permutation` must be a permutation of range({c}), got {perm.tolist()}."
            )
        self.permutation = jnp.asarray(perm, jnp.int32)
        self.inverse_permutation = jnp.asarray(np.argsort(perm), jnp.int32)
        self.event_shape = event_shape

    def forward_and_log_det(self, x, context=None):
        _check_shape("x", x, self.event_shape)
        return _permute_last(x, self.permutation), jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, context=None):
        _check_shape("y", y, self.event_shape)
        return _permute_last(y, self.inverse_permutation), jnp.zeros((), y.dtype)

    def lipschitz_bound(self):
        return 1.0, 1.0


class Squeeze(InvertibleBlock):
    """Glow / RealNVP squeeze of an NHWC image `(H, W, C) -> (H/2, W/2, 4C)`; log|det| = 0.

    Example:
        >>> import jax.numpy as jnp
        >>> Squeeze((4, 4, 1)).forward_and_log_det(jnp.zeros((4, 4, 1)))[0].shape
        (2, 2, 4)
    """

    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, event_shape):
        event_shape = tuple(event_shape)
        if len(event_shape) != 3 or event_shape[0] % 2 or event_shape[1] % 2:
            raise ValueError(
                f"`event_shape` must be (H, W, C) with even H and W, got {event_shape}."
            )
        self.event_shape = event_shape

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w, c = self.event_shape
        return h // 2, w // 2, 4 * c

    def forward_and_log_det(self, x, context=None):
        _check_shape("x", x, self.event_shape)
        h, w, c = self.event_shape
        y = x.reshape(h // 2, 2, w // 2, 2, c).transpose(0, 2, 1, 3, 4).reshape(self.out_shape)
        return y, jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, context=None):
        _check_shape("y", y, self.out_shape)
        h, w, c = self.event_shape
        x = y.reshape(h // 2, w // 2, 2, 2, c).transpose(0, 2, 1, 3, 4).reshape(h, w, c)
        return x, jnp.zeros((), y.dtype)

    def lipschitz_bound(self):
        return 1.0, 1.0
