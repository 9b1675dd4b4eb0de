"""Stability diagnostics, memory-saving gradients and the NF / finite-difference regularizers.

Choices the exploding-inverses authors' code makes implicitly are arguments here:
`fd_regularizer(normalize="example" | "batch_axis", power=1 | 2, reduction="sum" | "mean")` and
`fd_inverse_regularizer(differentiate_inverse=...)`. The authors' settings are
`normalize="batch_axis", power=1, reduction="sum"` with eps = 0.1, and an inverse term that has
no parameter gradient outside their memory-saving path (`differentiate_inverse=False`).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._flow import Flow


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

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import AdditiveCoupling, Flow, StandardNormal
        >>> flow = Flow(StandardNormal((2,)), [AdditiveCoupling((2,), key=jax.random.key(0))])
        >>> memory_saving_forward(flow, jnp.ones((3, 2)))[0].shape
        (3, 2)
    """
    params, static = eqx.partition(flow.blocks, eqx.is_inexact_array)
    return _memsave(static, params, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _memsave(static, params, x):
    blocks = eqx.combine(params, static)
    ld = jnp.zeros(x.shape[0], x.dtype)
    for b in blocks:
        x, l_ = jax.vmap(b.forward_and_log_det)(x)
        ld = ld + l_
    return x, ld


def _memsave_fwd(static, params, x):
    out = _memsave(static, params, x)
    return out, (params, out[0])


def _memsave_bwd(static, residuals, cotangents):
    params, z = residuals
    gz, gld = cotangents
    grads = []
    for i in reversed(range(len(params))):
        p_i, s_i = params[i], static[i]
        block = eqx.combine(p_i, s_i)
        x_prev = jax.lax.stop_gradient(jax.vmap(block.inverse_and_log_det)(z)[0])

        def fwd(p, v, s_i=s_i):
            return jax.vmap(eqx.combine(p, s_i).forward_and_log_det)(v)

        _, vjp = jax.vjp(fwd, p_i, x_prev)
        gp, gz = vjp((gz, gld))
        grads.append(gp)
        z = x_prev
    return tuple(reversed(grads)), gz


_memsave.defvjp(_memsave_fwd, _memsave_bwd)


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
