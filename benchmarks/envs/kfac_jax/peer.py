"""kfac-jax side of benchmarks/kfac_vs_kfac_jax.py; runs in the pinned env .bench-envs/kfac_jax.

Same problem as ours (MLP 64-256-256-10 tanh, softmax CE, batch 512, random data, float32, CPU),
written as `x @ W + b` on a dict of parameters so that kfac-jax registers Kronecker blocks. Each
timed iteration runs an optax.adam step and the kfac-jax steps back to back; prints one JSON line.
"""

import os

_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import kfac_jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

BATCH, SIZES = 512, (64, 256, 256, 10)


def init_params(key):
    params = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        key, k = jax.random.split(key)
        lim = 1.0 / np.sqrt(a)
        params[f"w{i}"] = jax.random.uniform(k, (a, b), minval=-lim, maxval=lim)
        params[f"b{i}"] = jnp.zeros((b,))
    return params


def forward(params, x):
    n = len(SIZES) - 1
    for i in range(n):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            x = jnp.tanh(x)
    return x


def loss_fn(params, batch):
    x, y = batch
    logits = forward(params, x)
    kfac_jax.register_softmax_cross_entropy_loss(logits, y)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (BATCH, SIZES[0]))
    y = jax.random.randint(ky, (BATCH,), 0, SIZES[-1])
    batch = (x, y)
    params0 = init_params(kp)
    vg = jax.value_and_grad(loss_fn)

    adam = optax.adam(1e-3)

    @jax.jit
    def adam_step(p, s):
        loss, g = vg(p, batch)
        u, s = adam.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    common = dict(
        value_and_grad_func=vg,
        l2_reg=0.0,
        num_burnin_steps=0,
        inverse_update_period=5,
        multi_device=False,
    )
    fixed = kfac_jax.Optimizer(
        use_adaptive_learning_rate=False,
        learning_rate_schedule=lambda s: 1e-2,
        use_adaptive_momentum=False,
        momentum_schedule=lambda s: 0.9,
        use_adaptive_damping=False,
        damping_schedule=lambda s: 1e-3,
        **common,
    )
    adaptive = kfac_jax.Optimizer(
        use_adaptive_learning_rate=True,
        use_adaptive_momentum=True,
        use_adaptive_damping=True,
        initial_damping=1.0,
        **common,
    )

    copy = lambda t: jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), t)
    states = {}
    first = {}
    rng = jax.random.PRNGKey(1)
    p = copy(params0)
    t0 = time.perf_counter()
    states["adam"] = [p, adam.init(p)]
    for name, opt in (("kfac", fixed), ("kfac_adaptive", adaptive)):
        p = copy(params0)
        states[name] = [p, opt.init(p, rng, batch)]
    opts = {"kfac": fixed, "kfac_adaptive": adaptive}

    def call(name, i):
        p, s = states[name]
        t0 = time.perf_counter()
        if name == "adam":
            p, s, loss = jax.block_until_ready(adam_step(p, s))
        else:
            p, s, stats = opts[name].step(
                p, s, jax.random.fold_in(rng, i), batch=batch, global_step_int=i
            )
            jax.block_until_ready((p, s))
            loss = stats["loss"]
        dt = time.perf_counter() - t0
        states[name] = [p, s]
        return dt, float(loss)

    for name in ("adam", "kfac", "kfac_adaptive"):
        first[name], _ = call(name, 0)
    del t0
    for i in range(1, args.warmup):
        for name in states:
            call(name, i)
    times = {n: [] for n in states}
    losses = {}
    for i in range(args.steps):
        for name in states:
            dt, loss = call(name, args.warmup + i)
            times[name].append(dt)
            losses[name] = loss
    t = {n: np.asarray(v) for n, v in times.items()}
    out = {
        "median_ms": {n: 1e3 * float(np.median(v)) for n, v in t.items()},
        "min_ms": {n: 1e3 * float(np.min(v)) for n, v in t.items()},
        "kfac_over_adam": float(np.median(t["kfac"] / t["adam"])),
        "kfac_adaptive_over_adam": float(np.median(t["kfac_adaptive"] / t["adam"])),
        "first_step_s": first["kfac"],
        "first_step_adaptive_s": first["kfac_adaptive"],
        "first_step_adam_s": first["adam"],
        "final_loss": losses,
        "versions": {
            "jax": jax.__version__,
            "kfac_jax": kfac_jax.__version__,
            "optax": optax.__version__,
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
