"""Stability diagnostics, memory-saving gradients and the NF / finite-difference regularizers.

Choices the exploding-inverses authors' code makes implicitly are arguments here:
`fd_regularizer(normalize="example" | "batch_axis", power=1 | 2, reduction="sum" | "mean")` and
`fd_inverse_regularizer(differentiate_inverse=...)`. The authors' settings are
`normalize="batch_axis", power=1, reduction="sum"` with eps = 0.1, and an inverse term that has
no parameter gradient outside their memory-saving path (`differentiate_inverse=False`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._flow import Flow
from ._flow_scan import ScannedBlocks


def reconstruction_error(flow: Flow, x, context=None) -> Float[Array, " batch"]:
    """Per-example ||x - F^-1(F(x))||_2 over a batch `(batch, *event_shape)` (inf/NaN kept).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import AdditiveCoupling, Flow, StandardNormal
        >>> flow = Flow(StandardNormal((2,)), [AdditiveCoupling((2,), key=jax.random.key(0))])
        >>> float(reconstruction_error(flow, jnp.ones((3, 2))).max())
        0.0
    """
    back = flow.inverse(flow.forward(x, context), context)
    diff = (x - back).reshape(x.shape[0], -1)
    return jnp.sqrt(jnp.sum(diff**2, axis=1))


def nonfinite_fraction(values) -> Float[Array, ""]:
    """The fraction of examples (leading axis) with any NaN or inf entry."""
    flat = values.reshape(values.shape[0], -1)
    return jnp.mean(jnp.any(~jnp.isfinite(flat), axis=1).astype(flat.dtype))


def jacobian_singular_values(fn, x) -> Float[Array, " d"]:
    """All singular values of the dense Jacobian of `fn` at one example `x` (small d)."""
    n = x.size
    jac = jax.jacfwd(fn)(x).reshape(n, n)
    return jnp.linalg.svd(jac, compute_uv=False)


def condition_number(flow: Flow, x, context=None) -> Float[Array, ""]:
    """sigma_max / sigma_min of the Jacobian of F at one example (SVD; small d)."""
    s = jacobian_singular_values(lambda v: flow.forward(v, context), x)
    return s[0] / s[-1]


def local_lipschitz(flow: Flow, x, context=None) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Lower estimates of (Lip(F), Lip(F^-1)): the largest Jacobian spectral norms over the
    examples of a batch `x` (forward at x, inverse at F(x))."""

    def one(v, c):
        sf = jacobian_singular_values(lambda u: flow.forward(u, c), v)[0]
        z = flow.forward(v, c)
        si = jacobian_singular_values(lambda u: flow.inverse(u, c), z)[0]
        return sf, si

    sf, si = jax.vmap(one)(x, context)
    return jnp.max(sf), jnp.max(si)


def ood_probes(kind: str, shape, *, key: PRNGKeyArray, low: float = -0.49, high: float = 0.49):
    """OOD inputs as in the authors' protocol: "gaussian" N(0,1), "uniform" U(-0.5, 0.5) and
    "rademacher" (+-0.5), clipped to [low, high] (Glow's range [-0.5, 0.5])."""
    if kind == "gaussian":
        x = jax.random.normal(key, shape)
    elif kind == "uniform":
        x = jax.random.uniform(key, shape) - 0.5
    elif kind == "rademacher":
        x = 0.5 * jax.random.rademacher(key, shape, dtype=jnp.zeros(()).dtype)
    else:
        raise ValueError(f"`kind` must be 'gaussian', 'uniform' or 'rademacher', got {kind!r}.")
    return jnp.clip(x, low, high)


def invertibility_attack(
    flow: Flow,
    x,
    *,
    key: PRNGKeyArray,
    radius: float,
    steps: int = 200,
    step_size: float = 5e-4,
    context=None,
):
    """PGD in the l-inf ball of `radius` around `x` maximising the reconstruction error
    (signed-gradient ascent, uniform random start), as in the authors' CelebA attack.

    Returns:
        `(x_adv, errors)`: the attacked batch and its per-example reconstruction errors.
    """
    x0 = x + jax.random.uniform(key, x.shape, x.dtype, -radius, radius)

    def loss(v):
        return jnp.sum(jnp.nan_to_num(reconstruction_error(flow, v, context), posinf=1e30))

    def step(v, _):
        g = jax.grad(loss)(v)
        v = v + step_size * jnp.sign(g)
        return jnp.clip(v, x - radius, x + radius), None

    xa, _ = jax.lax.scan(step, x0, None, length=steps)
    return xa, reconstruction_error(flow, xa, context)


# ---------------------------------------------------------------------------------------------
# Memory-saving gradients.


def memory_saving_forward(flow: Flow, x):
    """`flow.forward_and_log_det(x)` on a batch whose backward pass stores only the output and
    rebuilds every block's input by inverting it (as the authors' `--mem_saving`).

    The gradient equals autodiff's while the blocks are numerically invertible; once an inverse
    explodes, the rebuilt activations (hence the gradients) are wrong — which is the point of the
    diagnostic. Unconditional flows only.

    Memory: the backward pass holds one block's activations at a time. Each block's rebuilt
    input is tied to the cotangent flowing out of the block above by an optimization barrier
    (without it XLA hoists the whole inverse chain ahead of the first vjp and keeps every
    rebuilt input alive: temp memory grew 2.5x from depth 8 to 32). A `ScannedBlocks` block is
    rebuilt layer by layer inside one reverse `lax.scan`; other composite blocks (`Chain`) are
    rebuilt as one unit, storing their inner activations during their own vjp.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import AdditiveCoupling, Flow, StandardNormal
        >>> flow = Flow(StandardNormal((2,)), [AdditiveCoupling((2,), key=jax.random.key(0))])
        >>> memory_saving_forward(flow, jnp.ones((3, 2)))[0].shape
        (3, 2)
    """
    return _memsave((flow.blocks, x))


def _forward_batch(blocks, x):
    ld = jnp.zeros(x.shape[0], x.dtype)
    for b in blocks:
        x, l_ = jax.vmap(b.forward_and_log_det)(x)
        ld = ld + l_
    return x, ld


@eqx.filter_custom_vjp
def _memsave(blocks_and_x):
    return _forward_batch(*blocks_and_x)


@_memsave.def_fwd
def _memsave_fwd(perturbed, blocks_and_x):
    out = _forward_batch(*blocks_and_x)
    return out, out[0]


def _block_back(block, z, gz, gld):
    """Rebuild `block`'s input from its output `z` and pull the cotangents through it."""
    x_prev = jax.lax.stop_gradient(jax.vmap(block.inverse_and_log_det)(z)[0])
    params, static = eqx.partition(block, eqx.is_inexact_array)

    def fwd(p, v):
        return jax.vmap(eqx.combine(p, static).forward_and_log_det)(v)

    _, vjp = jax.vjp(fwd, params, x_prev)
    gp, gx = vjp((gz, gld))
    return gp, x_prev, gx


def _scanned_back(block: ScannedBlocks, z, gz, gld):
    arrays, static = eqx.partition(block, eqx.is_array)

    def body(carry, a_i):
        z, gz = carry
        gp, x_prev, gx = _block_back(eqx.combine(a_i, static).stacked, z, gz, gld)
        return (x_prev, gx), gp

    (z, gz), gps = jax.lax.scan(body, (z, gz), arrays, reverse=True)
    return eqx.tree_at(lambda m: m.stacked, block, gps), z, gz


@_memsave.def_bwd
def _memsave_bwd(z, cotangents, perturbed, blocks_and_x):
    blocks, x = blocks_and_x
    gz, gld = cotangents
    gz = jnp.zeros_like(z) if gz is None else gz
    gld = jnp.zeros(z.shape[0], z.dtype) if gld is None else gld
    grads = []
    for block in reversed(blocks):
        back = _scanned_back if isinstance(block, ScannedBlocks) else _block_back
        gp, z, gz = back(block, z, gz, gld)
        # The next block's inversion may start only once this block's vjp is done.
        z, gz = jax.lax.optimization_barrier((z, gz))
        grads.append(gp)
    return tuple(reversed(grads)), gz


# ---------------------------------------------------------------------------------------------
# Regularizers.


def nf_regularizer(flow: Flow, x, context=None, *, num_bins: int | None = None):
    """The normalizing-flow regularizer: the flow's mean negative log-likelihood over the batch.

    With `num_bins` (e.g. 256), adds D log(num_bins) per example as the authors' objective does
    (it changes the value, not the gradient). Multiply by the coefficient (1e-5 / 1e-6 in [C]).
    """
    nll = -jnp.mean(flow.log_prob(x, context))
    if num_bins is not None:
        nll = nll + x[0].size * jnp.log(jnp.asarray(float(num_bins), x.dtype))
    return nll


def _directions(key, shape, dtype, normalize):
    d = jax.random.normal(key, shape, dtype)
    if normalize == "example":
        n = jnp.sqrt(jnp.sum(d.reshape(shape[0], -1) ** 2, axis=1))
        return d / n.reshape((-1,) + (1,) * (len(shape) - 1))
    if normalize == "batch_axis":
        return d / jnp.sqrt(jnp.sum(d**2, axis=0, keepdims=True))
    raise ValueError(f"`normalize` must be 'example' or 'batch_axis', got {normalize!r}.")


def _reduce(sq, reduction):
    per_example = jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)
    if reduction == "sum":
        return jnp.sum(per_example)
    if reduction == "mean":
        return jnp.mean(per_example)
    raise ValueError(f"`reduction` must be 'sum' or 'mean', got {reduction!r}.")


def fd_regularizer(
    fn,
    x,
    *,
    key: PRNGKeyArray,
    eps: float = 0.1,
    normalize: str = "batch_axis",
    power: int = 1,
    reduction: str = "sum",
):
    """Forward finite differences `||fn(x + eps d) - fn(x)||^2 / eps^power`, d ~ N(0, I) normalised
    per example or over the batch axis; -> ||J d||^2 eps^(2 - power) as eps -> 0.

    Args:
        fn: the batched map (e.g. `flow.forward`).
        x: a batch.
        key: for the directions.
        eps: the step (0.1 in [C]).
        normalize: "batch_axis" ([C]: each coordinate's column over the batch has unit norm) or
            "example" (each direction has unit norm).
        power: 1 ([C], divides by eps) or 2 (a derivative estimate).
        reduction: "sum" over the batch ([C]) or "mean".
    """
    if power not in (1, 2):
        raise ValueError(f"`power` must be 1 or 2, got {power!r}.")
    d = _directions(key, x.shape, x.dtype, normalize)
    sq = (fn(x + eps * d) - fn(x)) ** 2
    return _reduce(sq, reduction) / eps**power


def fd_inverse_regularizer(
    flow: Flow,
    x,
    *,
    key: PRNGKeyArray,
    eps: float = 0.1,
    normalize: str = "batch_axis",
    power: int = 1,
    reduction: str = "sum",
    differentiate_inverse: bool = True,
):
    """Inverse finite differences `||x - F^-1(F(x) + eps d')||^2 / eps^power`.

    `differentiate_inverse=False` reproduces plain autograd on the authors' code: the perturbed
    inverse is a detached leaf, so the penalty has no parameter gradient.
    """
    if power not in (1, 2):
        raise ValueError(f"`power` must be 1 or 2, got {power!r}.")
    z = flow.forward(x)
    d = _directions(key, z.shape, z.dtype, normalize)
    x_tilde = flow.inverse(z + eps * d)
    if not differentiate_inverse:
        x_tilde = jax.lax.stop_gradient(x_tilde)
    return _reduce((x - x_tilde) ** 2, reduction) / eps**power
