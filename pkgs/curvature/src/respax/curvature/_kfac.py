"""K-FAC (Martens & Grosse 2015) as a pure optax `GradientTransformationExtraArgs`.

The statistics come from `kfac_stats` (one forward pass, one backward pass plus the sampled ones);
`update(grads, state, params, stats=..., loss=..., batch=...)` consumes them:

1. L2 (declared once, `l2_reg`) is added to the gradient and to the damping;
2. factors: exponential moving average (normalised by the accumulated EMA weight);
3. every `inverse_update_period` steps: factored-Tikhonov (pi) damped inverses
   `(A + pi sqrt(λ) I)^-1` and `(G + sqrt(λ)/pi I)^-1` (`damped_inverse`): one Cholesky per factor,
   grouped by size class; where it fails, the eigendecomposition path (eigenvalue clipping, then a
   damped-diagonal fallback), every fallback and clip counted. Between refreshes the proposal
   costs two matmuls per block;
4. the proposal `Δ = -F̃^{-1} ∇h`; the step `δ = α Δ + μ v` with fixed `(α, μ)` or the minimiser of
   the exact quadratic model `½ δ^T (C + (λ+η) I) δ + ∇h^T δ` on `span{Δ, v}`, `C` the batch GGN;
5. norm constraint (fixed learning rate): `α ≤ sqrt(c / (Δ^T ∇h))`;
6. Levenberg-Marquardt: every `damping_adaptation_interval` steps, `ρ = (h(θ+δ) - h(θ)) / q(δ)`;
   `λ ← λ / ω` if `ρ < 1/4`, `λ ← λ ω` if `ρ > 3/4`, with `ω = damping_decay^interval`;
7. a step whose loss, gradient or statistics are not finite is skipped (zero update, state kept)
   and counted (the refresh and the extra loss evaluation are not run on such a step; the other
   state fields are kept by selects fused into the ops that compute them).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree as otu
from jaxtyping import Array, Bool, Float, Int, PyTree

from respax.core import check_positive, check_positive_int, check_same_structure

from ._capture import CapturePlan, _check_plan_params
from ._factors import KFACFactors, _apply_blocks, _block_inverses
from ._products import _batched_apply

__all__ = ["KFACConfig", "KFACState", "kfac", "kfac_factors_from_state", "kfac_report"]


Hyper = float | Float[Array, "..."] | Callable[[Int[Array, ""]], Float[Array, ""]]


def _check_hyper(name: str, value: Any, *, upper: float | None = None) -> None:
    """Check a hyperparameter that may be a schedule (checked when called, per step), a traced
    value (under `vmap` / `jit`: its value is unknown) or concrete numbers (every entry, so that
    a stacked config for `eqx.filter_vmap` is checked too)."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number or an optax schedule, got {value!r}.")
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a number, an array of numbers or an optax schedule (a function of "
            f"the step count), got {type(value).__name__}."
        ) from None
    ok = np.all(np.isfinite(v)) and np.all(v >= 0)
    if upper is not None:
        ok = ok and np.all(v < upper)
    if not ok:
        bound = f"in [0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {value!r}.")


def _at_step(value: Any, step: Array, dtype) -> Array:
    """A hyperparameter's value at `step`: a schedule is called, a number is taken as it is."""
    if value is None:
        return jnp.zeros((), dtype)
    if callable(value):
        return jnp.asarray(value(step), dtype)
    return jnp.asarray(value, dtype)


class KFACConfig(eqx.Module):
    """Hyperparameters of `kfac` (12 fields).

    The float hyperparameters `learning_rate`, `momentum` and `damping` are the config's pytree
    leaves: each may be a number, an optax schedule (a function of the step count, e.g.
    `optax.cosine_decay_schedule(0.1, 1000)`) or a traced value, so a config built inside
    `jax.vmap` (or a config of stacked arrays under `eqx.filter_vmap`) runs a population of
    hyperparameters at once. Every other field is static.

    Attributes:
        learning_rate: fixed step size α (or a schedule), or None to choose it from the
            quadratic model.
        momentum: fixed momentum μ in [0, 1) (or a schedule), or None to choose it from the
            quadratic model (with `learning_rate=None`: both jointly; with a fixed learning rate,
            `None` means 0).
        damping: the Tikhonov damping λ (>= 0), or a schedule of it; with `adapt_damping` the
            initial λ (a number, > 0).
        adapt_damping: Levenberg-Marquardt adaptation of λ (needs `loss` and `batch` in update).
        damping_adaptation_interval: steps between λ updates.
        damping_decay: ω per step; λ changes by `damping_decay ** interval` per adaptation.
        min_damping: lower bound for adapted λ.
        ema_decay: factor EMA decay in [0, 1); 0 uses only the current batch.
        inverse_update_period: steps between inverse refreshes (T).
        curvature_update_period: steps between curvature-statistics updates (k, as kfac-jax's
            `curvature_update_period`); on the other steps `kfac_stats(...,
            update_curvature=False)` computes only the loss and gradient, and `update` leaves
            the factors as they are. 1 (default): statistics every step.
        l2_reg: L2 regularisation η, added to the gradient, the damping and the loss of ρ.
        norm_constraint: None, or c > 0 bounding `α^2 Δ^T ∇h` (fixed learning rate only).

    Example:
        >>> import optax
        >>> cfg = KFACConfig(learning_rate=optax.linear_schedule(0.1, 0.01, 100), momentum=0.5)
        >>> cfg.needs_batch, cfg.curvature_update_period
        (False, 1)
    """

    learning_rate: Hyper | None = 1e-2
    momentum: Hyper | None = 0.9
    damping: Hyper = 1e-3
    adapt_damping: bool = eqx.field(default=False, static=True)
    damping_adaptation_interval: int = eqx.field(default=5, static=True)
    damping_decay: float = eqx.field(default=0.95, static=True)
    min_damping: float = eqx.field(default=1e-8, static=True)
    ema_decay: float = eqx.field(default=0.95, static=True)
    inverse_update_period: int = eqx.field(default=5, static=True)
    curvature_update_period: int = eqx.field(default=1, static=True)
    l2_reg: float = eqx.field(default=0.0, static=True)
    norm_constraint: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.learning_rate is not None:
            _check_hyper("learning_rate", self.learning_rate)
            if not callable(self.learning_rate) and not isinstance(
                self.learning_rate, jax.core.Tracer
            ):
                if not np.all(np.asarray(self.learning_rate, dtype=float) > 0):
                    raise ValueError(
                        f"`learning_rate` must be > 0 (or None), got {self.learning_rate!r}."
                    )
        if self.momentum is not None:
            _check_hyper("momentum", self.momentum, upper=1.0)
        _check_hyper("damping", self.damping)
        check_positive_int("damping_adaptation_interval", self.damping_adaptation_interval)
        if not (0.0 < self.damping_decay < 1.0):
            raise ValueError(f"`damping_decay` must be in (0, 1), got {self.damping_decay!r}.")
        check_positive("min_damping", self.min_damping, allow_zero=True)
        if not (0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}.")
        check_positive_int("inverse_update_period", self.inverse_update_period)
        check_positive_int("curvature_update_period", self.curvature_update_period)
        check_positive("l2_reg", self.l2_reg, allow_zero=True)
        if self.norm_constraint is not None:
            check_positive("norm_constraint", self.norm_constraint)
        if self.adapt_damping:
            if callable(self.damping):
                raise ValueError(
                    "`damping` must be a number (the initial λ), not a schedule, when "
                    "`adapt_damping=True`."
                )
            if not isinstance(self.damping, jax.core.Tracer) and not np.all(
                np.asarray(self.damping) > 0
            ):
                raise ValueError("`damping` must be > 0 when `adapt_damping=True`.")

    @property
    def needs_batch(self) -> bool:
        return self.learning_rate is None or self.momentum is None or self.adapt_damping

    def curvature_due(self, state: "KFACState") -> Bool[Array, ""]:
        """Whether the next `update` with `state` folds statistics into the factors: pass it as
        `kfac_stats(..., update_curvature=config.curvature_due(state))`.

        Example:
            >>> import equinox as eqx, jax, jax.numpy as jnp
            >>> from respax.core import GaussianLoss
            >>> from respax.curvature import capture_layers, kfac
            >>> lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
            >>> plan = capture_layers(lin, GaussianLoss(), jnp.zeros(2))
            >>> cfg = KFACConfig(curvature_update_period=2)
            >>> state = kfac(plan, cfg).init(eqx.filter(lin, eqx.is_inexact_array))
            >>> later = state._replace(step=jnp.asarray(1))
            >>> bool(cfg.curvature_due(state)), bool(cfg.curvature_due(later))
            (True, False)
        """
        if self.curvature_update_period == 1:
            return jnp.asarray(True)
        return state.step % self.curvature_update_period == 0


class KFACState(NamedTuple):
    """The whole K-FAC state: one pytree of arrays."""

    step: Int[Array, ""]  # int32: updates applied (skipped steps excluded)
    factors: tuple  # per group: EMA sums of {"A","G"} or {"F"}, param dtype
    ema_weight: Float[Array, ""]  # accumulated EMA weight (normalises `factors`)
    inverses: tuple  # per group: damped inverses {"A","G"} or {"F"}
    damping: Float[Array, ""]  # λ
    velocity: PyTree  # the previous update δ (structure of the float params)
    num_skipped: Int[Array, ""]  # int32: non-finite steps skipped
    num_fallbacks: Int[Array, ""]  # int32: inverse fallbacks (Cholesky -> eigh -> diagonal)
    num_clipped: Int[Array, ""]  # int32: negative eigenvalues clipped to 0 (eigh path)
    learning_rate: Float[Array, ""]  # α of the last step
    momentum: Float[Array, ""]  # μ of the last step
    rho: Float[Array, ""]  # last reduction ratio (nan before the first adaptation)
    quad_change: Float[Array, ""]  # q(δ) of the last step (nan when not computed)


def _zero_factors(plan: CapturePlan, diff: Any) -> tuple:
    out = []
    dtype = jnp.result_type(*[x.dtype for x in jax.tree.leaves(diff)])
    for info in plan.layers:
        if info.is_kronecker:
            a = (info.a_dim,) if info.kind == "embedding" else (info.a_dim, info.a_dim)
            out.append({"A": jnp.zeros(a, dtype), "G": jnp.zeros((info.g_dim, info.g_dim), dtype)})
        elif info.block == "full":
            out.append({"F": jnp.zeros((info.num_params, info.num_params), dtype)})
        else:
            out.append({"F": jnp.zeros((info.num_params,), dtype)})
    return tuple(out)


def _all_finite(tree) -> Array:
    """Whether every float leaf is finite, as ONE fused reduction: `x * 0` is 0 for finite `x`
    and NaN for inf/NaN, so the sum is NaN exactly when some entry is not finite (one kernel
    instead of two per leaf: fewer ops to compile)."""
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    if not leaves:
        return jnp.asarray(True)
    dtype = jnp.result_type(*leaves)
    flat = jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])
    return jnp.isfinite(jnp.sum(flat * 0))


def _gram(*trees) -> Array:
    """The Gram matrix of several pytrees of the same structure, as one matmul."""
    leaves = [jax.tree.leaves(t) for t in trees]
    dtype = jnp.result_type(*leaves[0])
    rows = jnp.stack([jnp.concatenate([jnp.ravel(x).astype(dtype) for x in ls]) for ls in leaves])
    return jnp.dot(rows, rows.T, precision=jax.lax.Precision.HIGHEST)


def kfac(
    plan: CapturePlan, config: KFACConfig = KFACConfig()
) -> optax.GradientTransformationExtraArgs:
    """K-FAC as an optax transform.

    Args:
        plan: from `capture_layers` (the model's layers, apply function and output loss).
        config: a `KFACConfig`.

    Returns:
        An `optax.GradientTransformationExtraArgs`. `init(params)` takes the model's float
        parameters (`eqx.filter(model, eqx.is_inexact_array)`); `update(grads, state, params, *,
        stats, loss=None, batch=None)` takes the outputs of `kfac_stats` (`loss` is required for
        damping adaptation; `batch=(inputs, targets)` whenever the learning rate, momentum or
        damping is adaptive). The returned updates are to be added to the parameters.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax
        >>> from respax.core import GaussianLoss
        >>> from respax.curvature import capture_layers, kfac, kfac_stats, KFACConfig
        >>> model = eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(0))
        >>> plan = capture_layers(model, GaussianLoss(), jnp.zeros(2))
        >>> opt = kfac(plan, KFACConfig(learning_rate=0.1, momentum=0.0, damping=1e-2))
        >>> params = eqx.filter(model, eqx.is_inexact_array)
        >>> state = opt.init(params)
        >>> x = jax.random.normal(jax.random.key(1), (32, 2)); y = x[:, :1] * x[:, 1:]
        >>> loss, grads, stats = kfac_stats(plan, params, x, y, mode="expected")
        >>> updates, state = opt.update(grads, state, params, stats=stats)
        >>> params = optax.apply_updates(params, updates)
        >>> int(state.step)
        1
    """
    if not isinstance(plan, CapturePlan):
        raise TypeError(
            f"`plan` must be a CapturePlan from capture_layers, got {type(plan).__name__}."
        )
    if not isinstance(config, KFACConfig):
        raise TypeError(f"`config` must be a KFACConfig, got {type(config).__name__}.")
    cfg = config
    eta = cfg.l2_reg

    def init(params):
        diff, _ = eqx.partition(params, eqx.is_inexact_array)
        _check_plan_params(plan, diff, "params")
        factors = _zero_factors(plan, diff)
        dtype = jnp.result_type(*[x.dtype for x in jax.tree.leaves(diff)])
        # The damped inverses of the zero factors at damping 1 (pi = 1): identities. Built
        # directly, not by `_block_inverses`, so that `init` dispatches no factorisations (the
        # first step refreshes them anyway).
        inverses = jax.tree.map(
            lambda f: jnp.eye(f.shape[0], dtype=f.dtype) if f.ndim == 2 else jnp.ones_like(f),
            factors,
        )
        f = lambda v: jnp.asarray(v, dtype)
        step0 = jnp.zeros((), jnp.int32)
        return KFACState(
            step=jnp.zeros((), jnp.int32),
            factors=factors,
            ema_weight=f(0.0),
            inverses=inverses,
            damping=_at_step(cfg.damping, step0, dtype),
            velocity=otu.zeros_like(diff),
            num_skipped=jnp.zeros((), jnp.int32),
            num_fallbacks=jnp.zeros((), jnp.int32),
            num_clipped=jnp.zeros((), jnp.int32),
            learning_rate=_at_step(cfg.learning_rate, step0, dtype),
            momentum=_at_step(cfg.momentum, step0, dtype),
            rho=f(jnp.nan),
            quad_change=f(jnp.nan),
        )

    def update(grads, state, params=None, *, stats=None, loss=None, batch=None, **unused):
        del unused
        if params is None:
            raise ValueError("kfac's update needs `params`.")
        if stats is None:
            raise ValueError("kfac's update needs `stats=` from kfac_stats.")
        diff, _ = eqx.partition(params, eqx.is_inexact_array)
        grads, _ = eqx.partition(grads, eqx.is_inexact_array)
        check_same_structure("grads", grads, "params", diff)
        if len(stats) != len(plan.layers):
            raise ValueError(f"`stats` must have {len(plan.layers)} groups, got {len(stats)}.")
        if cfg.needs_batch and batch is None:
            raise ValueError(
                "`batch=(inputs, targets)` is required for adaptive learning rate, "
                "momentum or damping."
            )
        if cfg.adapt_damping and loss is None:
            raise ValueError("`loss` is required when `adapt_damping=True`.")
        dtype = state.damping.dtype
        if eta > 0:
            grads = otu.add_scale(grads, eta, diff)
        if loss is not None:
            loss = jnp.asarray(loss, dtype)
        ok = _all_finite((grads, stats, loss))
        return _step(grads, state, diff, stats, loss, batch, dtype, ok)

    def _step(grads, state, diff, stats, loss, batch, dtype, ok):
        # A non-finite step (`ok` false) gives a zero update and keeps the state; only the counter
        # moves. The refresh and the extra loss evaluation are skipped through their `lax.cond`
        # predicates; everything else is kept by selects fused into the ops that produce the new
        # values (no extra pass over the state, no copy of it).
        # 1. Factor EMA.
        decay = jnp.asarray(cfg.ema_decay, dtype)
        factors = jax.tree.map(
            lambda old, new: decay * old + (1 - decay) * new.astype(old.dtype),
            state.factors,
            stats,
        )
        ema_weight = decay * state.ema_weight + (1 - decay)
        if cfg.curvature_update_period > 1:
            # Statistics only every k steps: on the other steps the factors stay as they are.
            due = cfg.curvature_due(state)
            factors = jax.tree.map(lambda a, b: jnp.where(due, a, b), factors, state.factors)
            ema_weight = jnp.where(due, ema_weight, state.ema_weight)
        if callable(cfg.damping) and not cfg.adapt_damping:
            damping = _at_step(cfg.damping, state.step, dtype)
        else:
            damping = state.damping
        gamma = damping + eta

        # 2. Inverse refresh every T steps: factored-Tikhonov damped inverses by Cholesky (eigh
        # fallback), so that the proposal below costs two matmuls per Kronecker block.
        def refresh(_):
            normed = jax.tree.map(lambda x: x / ema_weight, factors)
            inv, fb, cl = _block_inverses(plan, normed, gamma)
            inv = jax.tree.map(lambda a, b: a.astype(b.dtype), inv, state.inverses)
            return inv, fb, cl

        def keep(_):
            z = jnp.zeros((), jnp.int32)
            return state.inverses, z, z

        inverses, fb, cl = jax.lax.cond(
            (state.step % cfg.inverse_update_period == 0) & ok, refresh, keep, None
        )

        # 3. Proposal Δ = -F̃^{-1} ∇h.
        delta = otu.scale(-1.0, _apply_blocks(plan, inverses, grads, "grads"))
        v = state.velocity
        # Every inner product the step needs, from one Gram matrix of [∇h, Δ, v] (one matmul
        # instead of a reduction per leaf and pair: a smaller program to compile).
        gram = _gram(grads, delta, v) if cfg.needs_batch else None
        if gram is not None:
            g_dot_delta, g_dot_v = gram[0, 1], gram[0, 2]
        else:
            g_dot_delta, g_dot_v = otu.vdot(grads, delta), otu.vdot(grads, v)

        quad = None
        if cfg.needs_batch:
            inputs, targets = batch
            f = _batched_apply(plan.apply, plan.static, inputs)
            # J Δ and J v in one forward-mode pass: the primal is computed once and the two
            # tangents ride along as a batch (bigger matmuls than two separate jvps).
            tangents = jax.tree.map(lambda a, b: jnp.stack([a, b]), delta, v)
            outputs, jt = jax.vmap(lambda t: jax.jvp(f, (diff,), (t,)), out_axes=(None, 0))(
                tangents
            )
            # Output-space Hessian products by autodiff (never materialising k x k Hessians); for
            # the canonical losses the Hessian does not depend on the targets.
            out_grad = jax.grad(plan.output_loss.loss)

            def hvp_out(o, t, us):
                g = lambda z: out_grad(z, t)
                return jax.vmap(lambda u: jax.jvp(g, (o,), (u,))[1])(us)

            ht = jax.vmap(hvp_out, in_axes=(0, 0, 1), out_axes=1)(outputs, targets, jt)
            nb = outputs.shape[0]
            c = jnp.einsum("ibk,jbk->ij", jt, ht, precision=jax.lax.Precision.HIGHEST) / nb
            c = 0.5 * (c + c.T)
            dots = gram[1:, 1:]
            c_eta = (c + eta * dots).astype(dtype)  # undamped model (for ρ)
            c_damped = c_eta + damping * dots
            quad = (c_eta, c_damped)

        # 4. α and μ.
        b = jnp.stack([g_dot_delta, g_dot_v]).astype(dtype)
        if cfg.learning_rate is None:
            _, m = quad
            tiny = jnp.finfo(dtype).tiny
            if cfg.momentum is None:
                det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
                use_2d = (m[1, 1] > tiny) & (jnp.abs(det) > 1e-12 * (m[0, 0] * m[1, 1] + tiny))
                safe_det = jnp.where(use_2d, det, 1.0)
                alpha2 = -(m[1, 1] * b[0] - m[0, 1] * b[1]) / safe_det
                mu2 = -(-m[1, 0] * b[0] + m[0, 0] * b[1]) / safe_det
                alpha1 = -b[0] / jnp.maximum(m[0, 0], tiny)
                alpha = jnp.where(use_2d, alpha2, alpha1)
                mu = jnp.where(use_2d, mu2, 0.0)
            else:
                mu = _at_step(cfg.momentum, state.step, dtype)
                alpha = -(b[0] + mu * m[0, 1]) / jnp.maximum(m[0, 0], tiny)
        else:
            alpha = _at_step(cfg.learning_rate, state.step, dtype)
            mu = _at_step(cfg.momentum, state.step, dtype)
            if cfg.norm_constraint is not None:
                sq = -g_dot_delta * alpha**2  # α^2 Δ̂^T ∇h with Δ̂ = -Δ, >= 0 for PSD F̃
                scale = jnp.minimum(1.0, jnp.sqrt(cfg.norm_constraint / jnp.maximum(sq, 1e-30)))
                alpha = alpha * scale
        alpha = jnp.where(jnp.isfinite(alpha), alpha, 0.0)
        mu = jnp.where(jnp.isfinite(mu), mu, 0.0)
        step_vec = otu.add(otu.scale(alpha, delta), otu.scale(mu, v))

        # 5. Quadratic change and Levenberg-Marquardt.
        rho, q_change = state.rho, jnp.asarray(jnp.nan, dtype)
        if quad is not None:
            x = jnp.stack([alpha, mu])
            q_change = 0.5 * x @ quad[0] @ x + b @ x
        if cfg.adapt_damping:
            inputs, targets = batch
            adapt_now = (state.step + 1) % cfg.damping_adaptation_interval == 0
            loss_h = loss + 0.5 * eta * otu.vdot(diff, diff) if eta > 0 else loss

            def new_loss(_):
                new = otu.add(diff, step_vec)
                f = _batched_apply(plan.apply, plan.static, inputs)
                val = plan.output_loss.mean_loss(f(new), targets)
                if eta > 0:
                    val = val + 0.5 * eta * otu.vdot(new, new)
                return val.astype(dtype)

            loss_new = jax.lax.cond(
                adapt_now & ok, new_loss, lambda _: jnp.asarray(0.0, dtype), None
            )
            rho_now = (loss_new - loss_h) / jnp.where(q_change < 0, q_change, -jnp.inf)
            omega = jnp.asarray(cfg.damping_decay**cfg.damping_adaptation_interval, dtype)
            new_damping = jnp.where(
                rho_now < 0.25, damping / omega, jnp.where(rho_now > 0.75, damping * omega, damping)
            )
            new_damping = jnp.maximum(new_damping, cfg.min_damping)
            new_damping = jnp.where(jnp.isfinite(new_damping), new_damping, damping)
            damping = jnp.where(adapt_now, new_damping, damping).astype(dtype)
            rho = jnp.where(adapt_now, rho_now, state.rho).astype(dtype)

        new_state = KFACState(
            step=state.step + 1,
            factors=factors,
            ema_weight=ema_weight,
            inverses=state.inverses,  # placeholder: set below without a select
            damping=damping,
            velocity=step_vec,
            num_skipped=state.num_skipped,
            num_fallbacks=state.num_fallbacks + fb,
            num_clipped=state.num_clipped + cl,
            learning_rate=alpha.astype(dtype),
            momentum=mu.astype(dtype),
            rho=rho,
            quad_change=q_change.astype(dtype),
        )
        # Keep the old state on a non-finite step (the state keeps its own dtypes).
        new_state = jax.tree.map(lambda a, b: jnp.where(ok, a.astype(b.dtype), b), new_state, state)
        new_state = new_state._replace(
            inverses=inverses,  # already the old ones when not ok (the refresh predicate)
            num_skipped=state.num_skipped + (~ok).astype(state.num_skipped.dtype),
        )
        # Give the updates the caller's parameter dtypes.
        updates = jax.tree.map(
            lambda u, p: jnp.where(ok, u, jnp.zeros_like(u)).astype(p.dtype), step_vec, diff
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def kfac_factors_from_state(plan: CapturePlan, state: KFACState) -> KFACFactors:
    """The EMA-normalised factors held by a K-FAC state, as `KFACFactors` (e.g. for EK-FAC or
    influence functions after training)."""
    w = jnp.where(state.ema_weight > 0, state.ema_weight, 1.0)
    return KFACFactors(plan, jax.tree.map(lambda x: x / w, state.factors))


def kfac_report(plan: CapturePlan, state: KFACState | None = None) -> str:
    """The coverage table of `plan`, plus the counters of `state` (skipped steps, inverse
    fallbacks, clipped eigenvalues, damping, last α/μ/ρ)."""
    text = plan.report()
    if state is not None:
        text += (
            f"\n\nsteps: {int(state.step)}, skipped (non-finite): {int(state.num_skipped)}, "
            f"inverse fallbacks (Cholesky->eigh->diagonal): {int(state.num_fallbacks)}, "
            f"clipped eigenvalues: "
            f"{int(state.num_clipped)}\n"
            f"damping: {float(state.damping):.4g}, "
            f"learning rate: {float(state.learning_rate):.4g}, "
            f"momentum: {float(state.momentum):.4g}, rho: {float(state.rho):.4g}"
        )
    return text
