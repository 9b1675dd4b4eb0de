"""Toy experiments for the runner's tests: linear regression by minibatch-masked gradient descent.

Registered through `RESPAX_EXTRA_EXPERIMENTS="runner_toy:EXPERIMENT,runner_toy:BROKEN"` with this
directory on PYTHONPATH (or sys.path).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import Claim, Experiment, Result


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    n: int = 64  # examples; a multiple of the device count
    dim: int = 4
    steps: int = 40
    chunk: int = 2
    lr: float = 0.2
    noise: float = 0.05
    delay: float = 0.0  # seconds slept after each chunk, so tests can interrupt a run
    hidden: tuple[int, ...] = (3,)  # unused; exercises tuple overrides
    scales: tuple[float, ...] = (1.0, 2.0)  # unused; exercises tuple overrides
    plot: bool = True
    label: str = "toy"
    fail: bool = False


def _make_data(seed, cfg):
    # numpy keeps the fixture cheap (no extra XLA compilations); same data on every process.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg.n, cfg.dim), dtype=np.float32)
    w_true = rng.standard_normal(cfg.dim, dtype=np.float32)
    y = x @ w_true + np.float32(cfg.noise) * rng.standard_normal(cfg.n, dtype=np.float32)
    return {"x": x, "y": y, "w_true": w_true}


def _run(cfg: ToyConfig, ctx) -> Result:
    if cfg.fail:
        raise RuntimeError("toy failure requested")
    data = ctx.stage("data", lambda: _make_data(ctx.seed, cfg))
    x, y = ctx.shard((data["x"], data["y"]))
    train_key = ctx.key

    def loss(w, x, y, mask):
        return jnp.sum(mask * (x @ w - y) ** 2) / jnp.maximum(jnp.sum(mask), 1.0)

    # Global arrays are passed as arguments: under several processes jit cannot close over them.
    @jax.jit
    def chunk_fn(state, start, x, y):
        def body(state, step):
            w, losses = state
            mask = jax.random.bernoulli(jax.random.fold_in(train_key, step), 0.5, (cfg.n,))
            value, grad = jax.value_and_grad(loss)(w, x, y, mask.astype(x.dtype))
            return (w - cfg.lr * grad, losses.at[step].set(value)), None

        state, _ = jax.lax.scan(body, state, start + jnp.arange(cfg.chunk))
        return state

    def step_fn(state, start):
        state = chunk_fn(state, start, x, y)
        if cfg.delay:
            time.sleep(cfg.delay)
        return state

    init = ctx.replicate((jnp.zeros(cfg.dim), jnp.zeros(cfg.steps)))
    w, losses = ctx.loop("train", init, step_fn, cfg.steps, chunk=cfg.chunk)
    w, losses = ctx.gather((w, losses))
    final_loss = float(np.mean((data["x"] @ w - data["y"]) ** 2))
    w_err = float(np.linalg.norm(w - data["w_true"]))

    if cfg.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 3))
        ax.semilogy(losses)
        ax.set_xlabel("step")
        ax.set_ylabel("minibatch loss")
        ctx.save_figure(fig, "loss.png")
    ctx.log(f"final loss {final_loss:.4g}")
    return Result(
        metrics={
            "final_loss": final_loss,
            "w": w,
            "w_err": w_err,
            "losses": losses,
            "label": cfg.label,
            "num_devices": ctx.mesh.size,
        },
        claims=[
            Claim("recovers w to 0.1", "smoke", "|w - w*| < 0.1", w_err, w_err < 0.1),
            Claim("a paper-only claim", "paper", "n/a", None, None, reason="needs paper scale"),
        ],
        report="A linear regression toy used to test the runner.",
    )


EXPERIMENT = Experiment(
    name="toy",
    title="Toy linear regression (runner test fixture)",
    config=ToyConfig,
    scales={"smoke": ToyConfig(steps=20), "quick": ToyConfig(), "paper": ToyConfig(steps=400)},
    run=_run,
)

BROKEN = Experiment(
    name="toy_broken",
    title="A toy that always fails (runner test fixture)",
    config=ToyConfig,
    scales={s: ToyConfig(fail=True) for s in ("smoke", "quick", "paper")},
    run=_run,
)
