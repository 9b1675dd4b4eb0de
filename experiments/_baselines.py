"""First-order and preconditioned baselines for `kfac_autoencoder`: each optimizer's learning-rate
grid trained as one vmapped population (`population_loop`), widened until its best value is
strictly inside, diverged runs reported and never chosen; steady-state seconds per update; the
steps and seconds at which a loss curve first reaches a target.

Optimizers: SGD with momentum, Adam (optax), Muon (`optax.contrib.muon`), SOAP
(`respax.curvature.soap`), Shampoo (`optax-shampoo`) and PSGD Kron (`psgd-jax`). The last two are
optional packages: when one is missing or does not run beside this project's JAX/optax, the
optimizer is `None` with the reason (the install command and the error).
"""

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._api import Context, population_loop

__all__ = ["SMOOTH", "make_optimizer", "seconds_per_step", "smooth", "steps_to", "tune"]

SMOOTH = 10  # moving-average window of the reported training loss

# Both install beside the locked JAX 0.10 / optax 0.2.8 but do not run there (checked by hand):
# optax-shampoo 0.0.6 (2022, needs chex and flax) calls `jax.tree_map`, removed from JAX; psgd-jax
# 0.2.9 imports `optax._src.clipping`, gone from optax. Hence not in the bench group.
INSTALL = {
    "shampoo": "pip install optax-shampoo==0.0.6 chex flax; 0.0.6 calls jax.tree_map, removed "
    "in JAX 0.10",
    "psgd_kron": "pip install psgd-jax==0.2.9; 0.2.9 imports optax._src.clipping, gone in optax "
    "0.2.8",
}


def smooth(h: np.ndarray, w: int = SMOOTH) -> np.ndarray:
    """Moving average over `w` updates (a non-finite entry makes its windows non-finite)."""
    w = min(w, len(h))
    return np.convolve(h, np.ones(w) / w, mode="valid")


def steps_to(curve: np.ndarray, target: float) -> int | None:
    """Updates until the smoothed curve first reaches `target` (the window's last update)."""
    hit = np.nonzero(smooth(curve) <= target)[0]
    return int(hit[0]) + min(SMOOTH, len(curve)) if hit.size else None


def _probe(opt: optax.GradientTransformation) -> None:
    """One init and update on a tiny matrix-and-vector pytree (raises if the package is broken)."""
    p = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
    s = opt.init(p)
    jax.block_until_ready(opt.update(p, s, p))


def make_optimizer(name: str, *, momentum: float, soap_frequency: int):
    """`(optimizer, None)` with the learning rate injected as a hyperparameter (one compiled
    program serves a whole grid), or `(None, reason)` for an optional package that is missing or
    broken."""
    inject = optax.inject_hyperparams
    if name == "sgd":
        return inject(optax.sgd)(learning_rate=0.0, momentum=momentum), None
    if name == "adam":
        return inject(optax.adam)(learning_rate=0.0), None
    if name == "muon":
        return inject(optax.contrib.muon)(learning_rate=0.0), None
    if name == "soap":
        from respax.curvature import soap

        static = ("precondition_frequency", "max_precond_dim")
        return inject(soap, static_args=static)(
            learning_rate=0.0, precondition_frequency=soap_frequency
        ), None
    if name in INSTALL:
        try:
            if name == "shampoo":
                from optax_shampoo import distributed_shampoo as ds

                opt = inject(ds.distributed_shampoo, static_args=("block_size",))(
                    learning_rate=0.0, block_size=256
                )
            else:
                from psgd_jax.kron import kron

                opt = inject(kron)(learning_rate=0.0)
            _probe(opt)
        except Exception as err:  # noqa: BLE001 - any failure of an optional package is reported
            msg = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            return None, f"not available ({INSTALL[name]}): {msg}"
        return opt, None
    raise ValueError(f"unknown baseline {name!r}")


def _set_lr(state: Any, lr: jax.Array) -> Any:
    return state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})


def make_step(opt, loss_fn: Callable, batch_fn: Callable, chunk: int, soap_frequency: int | None):
    """`(state, member, data, start) -> state` advancing one member `chunk` updates; the state is
    `(params, opt_state, loss_history)`. SOAP gets `refresh=` from the (unbatched) step index, so
    that its eigenbasis refresh stays a real branch under `vmap`."""

    def step_fn(state, member, data, start):
        del member  # the learning rate lives in the optimizer state

        def body(carry, i):
            p, s, hist = carry
            x = batch_fn(data, i)
            loss, g = jax.value_and_grad(loss_fn)(p, x)
            kw = {} if soap_frequency is None else {"refresh": i % soap_frequency == 0}
            u, s = opt.update(g, s, p, **kw)
            return (optax.apply_updates(p, u), s, hist.at[i].set(loss)), None

        out, _ = jax.lax.scan(body, state, start + jnp.arange(chunk))
        return out

    return step_fn


def seconds_per_step(
    runs: dict[str, tuple[Callable, Any]], chunk: int, repeats: int = 3
) -> dict[str, float]:
    """Steady-state seconds per update of one run of each optimizer: every `fn(state)` (which
    advances `chunk` updates) is compiled first, then timed `repeats` times, the optimizers
    interleaved (each round times every one once), the median kept: on a shared machine a load
    spike then hits every optimizer alike."""
    for fn, state in runs.values():
        jax.block_until_ready(fn(state))
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, (fn, state) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state))
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v) / chunk) for k, v in times.items()}


def tune(
    ctx: Context,
    name: str,
    opt,
    step_fn: Callable,
    params0: Any,
    data: Any,
    lrs: tuple[float, ...],
    steps: int,
    chunk: int,
    max_widen: int,
) -> dict[str, Any]:
    """Train the grid `lrs` (log-spaced) as one vmapped population, then widen it by one value
    past an edge (same ratio) while the best finite value sits on that edge, at most `max_widen`
    times. A run whose loss history is not finite is *diverged*: reported, never the best.

    Returns:
        `{"lrs", "final", "diverged", "histories", "best_lr", "best_index", "inside", "widened"}`
        (lists ordered by learning rate; `final` is the smoothed final loss, None if diverged).
    """
    lrs = sorted(float(x) for x in lrs)
    ratio = lrs[1] / lrs[0] if len(lrs) > 1 else 10.0
    hist: dict[float, np.ndarray] = {}

    def train(new, tag):
        states = jax.vmap(lambda lr: (params0, _set_lr(opt.init(params0), lr), jnp.zeros(steps)))(
            jnp.asarray(new, jnp.float32)
        )
        members = {"lr": np.asarray(new, np.float32)}
        final = population_loop(
            ctx, f"{name}_{tag}", step_fn, states, members, steps, data, chunk=chunk
        )
        for lr, h in zip(new, np.asarray(final[2]), strict=True):
            hist[lr] = h

    train(lrs, "grid")
    widened = 0
    while True:
        grid = sorted(hist)
        finals = [float(smooth(hist[lr])[-1]) for lr in grid]
        ok = [bool(np.all(np.isfinite(hist[lr]))) and np.isfinite(f) for lr, f in zip(grid, finals)]
        scores = [f if o else np.inf for f, o in zip(finals, ok, strict=True)]
        best = int(np.argmin(scores)) if any(ok) else None
        if best is None or widened >= max_widen or 0 < best < len(grid) - 1:
            break
        new = grid[0] / ratio if best == 0 else grid[-1] * ratio
        widened += 1
        ctx.log(f"{name}: best learning rate {grid[best]:g} on the grid's edge; adding {new:g}")
        train([new], f"widen{widened}")
    return {
        "lrs": grid,
        "final": [f if o else None for f, o in zip(finals, ok, strict=True)],
        "diverged": [lr for lr, o in zip(grid, ok, strict=True) if not o],
        "histories": [hist[lr] for lr in grid],
        "best_lr": None if best is None else grid[best],
        "best_index": best,
        "inside": best is not None and 0 < best < len(grid) - 1,
        "widened": widened,
    }
