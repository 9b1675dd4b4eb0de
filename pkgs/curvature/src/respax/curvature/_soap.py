"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam") as an optax
transform: Adam run in the eigenbasis of Shampoo's two gradient factors.

For a matrix parameter `W` (shape `[m, n]`, e.g. an Equinox `Linear`'s `[out, in]` weight) with
gradient `G`:

1. Shampoo's factors, exponential moving averages `L <- β L + (1-β) G G^T` (`[m, m]`) and
   `R <- β R + (1-β) G^T G` (`[n, n]`);
2. every `precondition_frequency` steps (including the first) the eigenbases `QL`, `QR` of `L`
   and `R` are recomputed, after the step, for the steps that follow, by a symmetric
   eigendecomposition (the same Kronecker-eigenbasis code as EK-FAC's
   `kfac_eigendecomposition`: `QL` plays `UG`, `QR` plays `UA`);
3. Adam in that basis: the first moment `m` (kept in the parameter's own coordinates, so a basis
   change carries it over exactly) and the gradient are rotated, `G' = QL^T G QR`; the second
   moment `v <- b2 v + (1-b2) G'^2` lives in the current eigenbasis (not rotated when the basis
   changes, as in the authors' implementation); the update is
   `QL (m̂' / (sqrt(v̂) + eps)) QR^T` with optax-Adam's bias correction (`m̂ = m / (1 - b1^t)`,
   `v̂ = v / (1 - b2^t)`, eps outside the square root).

A side longer than `max_precond_dim` keeps the identity basis (no factor); parameters that are
not matrices (biases, scalars, >2-d arrays) get plain Adam. With both sides unpreconditioned SOAP
is exactly `optax.adam` applied to the gradients after the first.

Choices where the paper leaves room (stated, not tuned): the eigenbasis is refreshed by `eigh`
every `precondition_frequency` steps (the authors use one power-iteration + QR step after the
first `eigh`); as in their code the first call only builds the preconditioner (a zero update;
Adam's step count starts at the second call: in the basis of a single gradient that gradient's
rotation is diagonal and Adam's ratio would be 0/0 off the diagonal), and a step uses the basis
of the gradients before it; no weight decay unless asked (`weight_decay`, decoupled, as
`optax.adamw`).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PyTree

from respax.core import check_positive, check_positive_int

from ._factors import _from_eigenbasis, _sym_eigh, _to_eigenbasis

__all__ = ["SOAPState", "scale_by_soap", "soap"]

# A hyperparameter that `optax.inject_hyperparams` may hand over as an array.
Scalar = float | Float[Array, ""]


@jax.custom_batching.custom_vmap
def _eigh_one_at_a_time(m: Array) -> tuple[Array, Array]:
    """`_sym_eigh`, but under `vmap` (a population of optimizers, e.g. a learning-rate grid)
    the batch is decomposed one matrix at a time (`lax.map`), not by one batched `eigh`: on CPU
    a batched `eigh` runs LAPACK on XLA's parallel thread pool, and inside the refresh's
    `lax.cond` in a jitted training `scan` that deadlocked (a 5-member grid of the
    kfac_autoencoder model never finished its first step)."""
    w, v = _sym_eigh(m)
    return w, v


@_eigh_one_at_a_time.def_vmap
def _eigh_one_at_a_time_vmap(axis_size: int, in_batched: list, m: Array):
    del axis_size, in_batched
    return jax.lax.map(_eigh_one_at_a_time, m), (True, True)


@jax.custom_jvp
def _basis(m: Array) -> Array:
    """The eigenvectors of a factor's symmetric part (`_eigh_one_at_a_time`), differentiable:
    `custom_vmap` has no reverse mode of its own, so the derivative is given here (eigh's,
    `dV = V (F * (V^T dM V))` with `F_ij = 1 / (w_j - w_i)` off the diagonal), which keeps
    gradients through SOAP's update (e.g. with respect to the learning rate) working."""
    return _eigh_one_at_a_time(m)[1]


@_basis.defjvp
def _basis_jvp(primals, tangents):
    (m,), (dm,) = primals, tangents
    w, v = _eigh_one_at_a_time(m)
    eye = jnp.eye(w.shape[-1], dtype=bool)
    gap = w[None, :] - w[:, None]
    f = jnp.where(eye, 0.0, 1.0 / jnp.where(eye, 1.0, gap))
    dm = 0.5 * (dm + dm.T)
    return v, v @ (f * (v.T @ dm @ v))


class SOAPState(NamedTuple):
    """The state of `scale_by_soap`, one pytree of arrays.

    `factors` and `bases` hold one dict per parameter leaf (in `jax.tree.leaves` order):
    `{"L": [m, m], "R": [n, n]}` and `{"QL": [m, m], "QR": [n, n]}` for the sides that are
    preconditioned, `{}` for a leaf that gets plain Adam.
    """

    count: Int[Array, ""]  # int32: updates applied
    mu: PyTree  # first moment, in the parameters' own coordinates
    nu: PyTree  # second moment, in the current eigenbasis
    factors: tuple  # per leaf: Shampoo's EMA factors
    bases: tuple  # per leaf: their eigenvectors


def _sides(shape: tuple[int, ...], max_dim: int) -> tuple[bool, bool]:
    if len(shape) != 2:
        return False, False
    return shape[0] <= max_dim, shape[1] <= max_dim


def _check_beta(name: str, value: Any) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")


def scale_by_soap(
    b1: Scalar = 0.95,
    b2: Scalar = 0.95,
    eps: Scalar = 1e-8,
    *,
    shampoo_beta: Scalar | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
) -> optax.GradientTransformationExtraArgs:
    """SOAP's preconditioning (no learning rate): Adam in Shampoo's Kronecker eigenbasis.

    Args:
        b1: first-moment decay (the authors' default 0.95).
        b2: second-moment decay (0.95).
        eps: added to the square root of the second moment.
        shampoo_beta: decay of the factors `L`, `R`; None uses `b2` (as the authors).
        precondition_frequency: steps between eigenbasis refreshes (10).
        max_precond_dim: a side longer than this keeps the identity basis.

    Returns:
        An `optax.GradientTransformationExtraArgs`; `update(grads, state, params=None, *,
        refresh=None)`. `refresh` (a boolean scalar) overrides when the eigenbasis is recomputed
        after this step (default: every `precondition_frequency` calls of the state's own
        count, starting with the first). Under `jax.vmap`
        over a population of states the count is batched and the refresh then runs on every step
        (a `lax.cond` with a batched predicate becomes a select): pass an unbatched `refresh`, e.g.
        from the training loop's step index, to keep it a real branch.

    Example:
        >>> import jax.numpy as jnp
        >>> opt = scale_by_soap()
        >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(3)}
        >>> state = opt.init(params)
        >>> sorted(state.factors[1]), state.factors[0]  # leaves in order: b, w
        (['L', 'R'], {})
        >>> updates, state = opt.update({"w": jnp.eye(3, 2), "b": jnp.ones(3)}, state)
        >>> updates["w"].shape, int(state.count)
        ((3, 2), 1)
    """
    _check_beta("b1", b1)
    _check_beta("b2", b2)
    sb = b2 if shampoo_beta is None else shampoo_beta
    _check_beta("shampoo_beta", sb)
    if not isinstance(eps, jax.core.Tracer):
        check_positive("eps", eps, allow_zero=True)
    check_positive_int("precondition_frequency", precondition_frequency)
    check_positive_int("max_precond_dim", max_precond_dim)

    def init(params):
        factors, bases = [], []
        for p in jax.tree.leaves(params):
            left, right = _sides(jnp.shape(p), max_precond_dim)
            f, q = {}, {}
            if left:
                f["L"] = jnp.zeros((p.shape[0],) * 2, p.dtype)
                q["QL"] = jnp.eye(p.shape[0], dtype=p.dtype)
            if right:
                f["R"] = jnp.zeros((p.shape[1],) * 2, p.dtype)
                q["QR"] = jnp.eye(p.shape[1], dtype=p.dtype)
            factors.append(f)
            bases.append(q)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return SOAPState(
            count=jnp.zeros((), jnp.int32),
            mu=zeros,
            nu=jax.tree.map(jnp.zeros_like, params),
            factors=tuple(factors),
            bases=tuple(bases),
        )

    def update(updates, state, params=None, *, refresh: Bool[Array, ""] | None = None, **extra):
        del params, extra
        grads, treedef = jax.tree.flatten(updates)
        if len(grads) != len(state.factors):
            raise ValueError(
                f"`updates` must have the structure of the parameters given to init "
                f"({len(state.factors)} leaves), got {len(grads)} leaves."
            )
        # 1. Adam in the current eigenbasis (built from the gradients before this one). The
        # first call only builds the preconditioner: a zero update, moments kept at zero.
        first = state.count == 0
        t = jnp.maximum(state.count, 1)  # Adam's step number (the first call is not one)
        mus, nus, outs = [], [], []
        for g, m, v, q in zip(
            grads, jax.tree.leaves(state.mu), jax.tree.leaves(state.nu), state.bases, strict=True
        ):
            ql, qr = q.get("QL"), q.get("QR")
            rot = lambda x, ql=ql, qr=qr: x if ql is None and qr is None else _rotate(x, ql, qr)
            m = jnp.where(first, m, b1 * m + (1 - b1) * g)
            gr = rot(g)
            v = jnp.where(first, v, b2 * v + (1 - b2) * gr * gr)
            tt = t.astype(m.dtype)
            m_hat = rot(m) / (1 - jnp.asarray(b1, m.dtype) ** tt)
            v_hat = v / (1 - jnp.asarray(b2, v.dtype) ** tt)
            u = m_hat / (jnp.sqrt(v_hat) + eps)
            if ql is not None or qr is not None:
                u = _unrotate(u, ql, qr)
            mus.append(m)
            nus.append(v)
            outs.append(jnp.where(first, jnp.zeros_like(g), u).astype(g.dtype))

        # 2. Shampoo's factors, then (when due) their eigenbases for the next steps.
        hi = jax.lax.Precision.HIGHEST
        factors = []
        for g, f in zip(grads, state.factors, strict=True):
            new = {}
            if "L" in f:
                new["L"] = sb * f["L"] + (1 - sb) * jnp.matmul(g, g.T, precision=hi)
            if "R" in f:
                new["R"] = sb * f["R"] + (1 - sb) * jnp.matmul(g.T, g, precision=hi)
            factors.append(new)
        factors = tuple(factors)

        def eig(_):
            out = []
            for f in factors:
                out.append({"Q" + k: _basis(v).astype(v.dtype) for k, v in f.items()})
            return tuple(out)

        due = state.count % precondition_frequency == 0 if refresh is None else refresh
        bases = jax.lax.cond(due, eig, lambda _: state.bases, None)
        new_state = SOAPState(
            count=state.count + 1,
            mu=treedef.unflatten(mus),
            nu=treedef.unflatten(nus),
            factors=factors,
            bases=bases,
        )
        return treedef.unflatten(outs), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _rotate(x: Array, ql: Array | None, qr: Array | None) -> Array:
    """`QL^T X QR` (a missing side: identity), through EK-FAC's `_to_eigenbasis`."""
    if ql is None:
        return x @ qr
    return _to_eigenbasis(x, ql, qr)


def _unrotate(x: Array, ql: Array | None, qr: Array | None) -> Array:
    if ql is None:
        return x @ qr.T
    return _from_eigenbasis(x, ql, qr)


def soap(
    learning_rate: optax.ScalarOrSchedule,
    b1: Scalar = 0.95,
    b2: Scalar = 0.95,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    *,
    shampoo_beta: Scalar | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
) -> optax.GradientTransformationExtraArgs:
    """SOAP: `scale_by_soap`, then decoupled weight decay (if any), then the learning rate.

    Args:
        learning_rate: a number or an optax schedule (works under `optax.inject_hyperparams`).
        b1, b2, eps, shampoo_beta, precondition_frequency, max_precond_dim: see
            `scale_by_soap`.
        weight_decay: decoupled weight decay (as `optax.adamw`); 0 (default) for none.

    Returns:
        An `optax.GradientTransformationExtraArgs` (pass `refresh=` through `update` as in
        `scale_by_soap`). Under `optax.inject_hyperparams` name the integer arguments static:
        `optax.inject_hyperparams(soap, static_args=("precondition_frequency",
        "max_precond_dim"))(learning_rate=...)`.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 3))}
        >>> loss = lambda p: jnp.sum((p["w"] @ jnp.ones(3) - 1.0) ** 2)
        >>> opt = soap(learning_rate=0.1)
        >>> state, before = opt.init(params), loss(params)
        >>> for _ in range(50):
        ...     updates, state = opt.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(loss(params) < 0.1 * before)
        True
    """
    if not isinstance(weight_decay, jax.core.Tracer):
        check_positive("weight_decay", weight_decay, allow_zero=True)
    parts = [
        scale_by_soap(
            b1,
            b2,
            eps,
            shampoo_beta=shampoo_beta,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
        )
    ]
    if not isinstance(weight_decay, int | float) or weight_decay:  # an injected array: keep it
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
