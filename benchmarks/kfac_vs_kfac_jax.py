"""K-FAC step cost: respax.curvature.kfac vs kfac-jax, each against optax.adam in its own
environment.

Model: MLP 64-256-256-10 (tanh), softmax cross-entropy, batch 512, random data, float32, CPU.
Each timed iteration runs one step of every optimizer back to back (interleaved), each step
blocked until ready; the figure is the median over iterations of (optimizer step / adam step).
A step is the whole training step: statistics pass (one forward, one backward and one sampled
backward, Monte-Carlo Fisher with one label per example), update and parameter update.

Ours runs on the locked JAX in this process. kfac-jax 0.0.8 needs jax==0.9.1, so it runs as a
subprocess in the pinned environment `.bench-envs/kfac_jax` (`make bench-env`, or
`bash benchmarks/envs/kfac_jax/setup.sh`); without it the script exits 3 and prints that
command, unless `--ours-only` asks for ours alone (its keys are then null).

The median ratio is taken over every timed iteration; the inverse refresh (every 5th step) falls
outside it, so the mean ratio (refresh steps included) is reported beside it.

Targets: lead kfac-jax on the same estimator by 10% (`kfac_over_adam <= 0.9 *
kfac_jax_over_adam`, `kfac_adaptive_over_adam <= 0.9 * kfac_jax_adaptive_over_adam`), printed as
pass/fail, with `first_step_s <= 3.0` and `diagonal_fallbacks_eqx_mlp == 0`.

`curvature_update_period` (statistics every k steps, as kfac-jax's option of that name): ours is
also trained with the fixed-lr config for k in {1, 2, 5, 10}, one step of each k per round
(interleaved), reporting the median and mean step time and the time-to-loss curve (cumulative
seconds at which each k first reaches a set of loss levels).

Usage: python benchmarks/kfac_vs_kfac_jax.py [--quick] [--ours-only] [--json PATH]
"""

import os

# Single-threaded XLA on CPU, as in the reference measurements (set before JAX starts).
_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jaxlib's CPU LAPACK kernels (Cholesky, eigh: the inverse refresh, both sides) run on scipy's
# OpenBLAS, which starts its own thread pool; on a busy 2-core machine that pool stalls a refresh
# step for ~0.9 s at random. One thread, like XLA above (inherited by the kfac-jax subprocess).
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from respax.core import SoftmaxCrossEntropy  # noqa: E402
from respax.curvature import KFACConfig, capture_layers, kfac, kfac_stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".bench-envs" / "kfac_jax" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "envs" / "kfac_jax" / "peer.py"
BATCH, SIZES = 512, (64, 256, 256, 10)


def _block(tree):
    return jax.block_until_ready(tree)


def run_ours(warmup: int, steps: int) -> dict:
    key = jax.random.key(0)
    kx, ky, km = jax.random.split(key, 3)
    x = jax.random.normal(kx, (BATCH, SIZES[0]))
    y = jax.random.randint(ky, (BATCH,), 0, SIZES[-1])
    model = eqx.nn.MLP(SIZES[0], SIZES[-1], SIZES[1], 2, activation=jnp.tanh, key=km)
    loss_obj = SoftmaxCrossEntropy()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    plan = capture_layers(model, loss_obj, jnp.zeros(SIZES[0]))

    adam = optax.adam(1e-3)

    def adam_loss(p):
        return loss_obj.mean_loss(jax.vmap(eqx.combine(p, static))(x), y)

    @jax.jit
    def adam_step(p, s):
        loss, g = jax.value_and_grad(adam_loss)(p)
        u, s = adam.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def make_kfac_step(cfg):
        opt = kfac(plan, cfg)

        @jax.jit
        def step(p, s, k):
            loss, g, stats = kfac_stats(plan, p, x, y, mode="mc", key=k)
            extra = {"loss": loss, "batch": (x, y)} if cfg.needs_batch else {}
            u, s = opt.update(g, s, p, stats=stats, **extra)
            return optax.apply_updates(p, u), s, loss

        return opt, step

    fixed_cfg = KFACConfig(learning_rate=1e-2, momentum=0.9, damping=1e-3, inverse_update_period=5)
    adaptive_cfg = KFACConfig(
        learning_rate=None, momentum=None, damping=1.0, adapt_damping=True, inverse_update_period=5
    )
    runs = {"adam": (adam_step, adam.init(params))}
    first = {}
    for name, cfg in (("kfac", fixed_cfg), ("kfac_adaptive", adaptive_cfg)):
        opt, step = make_kfac_step(cfg)
        runs[name] = (step, opt.init(params))

    states = {n: [params, s] for n, (_, s) in runs.items()}

    def call(name, i):
        fn = runs[name][0]
        p, s = states[name]
        t0 = time.perf_counter()
        if name == "adam":
            out = _block(fn(p, s))
        else:
            out = _block(fn(p, s, jax.random.fold_in(key, i)))
        dt = time.perf_counter() - t0
        states[name] = [out[0], out[1]]
        return dt, float(out[2])

    for name in runs:
        first[name], _ = call(name, 0)
    for i in range(1, warmup):
        for name in runs:
            call(name, i)
    times = {n: [] for n in runs}
    losses = {}
    for i in range(steps):
        for name in runs:
            dt, loss = call(name, warmup + i)
            times[name].append(dt)
            losses[name] = loss
    t = {n: np.asarray(v) for n, v in times.items()}
    period = run_update_period_sweep(plan, x, y, params, fixed_cfg, key, steps)
    return {
        "curvature_update_period": period,
        "median_ms": {n: 1e3 * float(np.median(v)) for n, v in t.items()},
        "min_ms": {n: 1e3 * float(np.min(v)) for n, v in t.items()},
        "kfac_over_adam": float(np.median(t["kfac"] / t["adam"])),
        "kfac_adaptive_over_adam": float(np.median(t["kfac_adaptive"] / t["adam"])),
        "kfac_mean_over_adam_mean": float(np.mean(t["kfac"]) / np.mean(t["adam"])),
        "kfac_adaptive_mean_over_adam_mean": float(
            np.mean(t["kfac_adaptive"]) / np.mean(t["adam"])
        ),
        "first_step_s": first["kfac"],
        "first_step_adaptive_s": first["kfac_adaptive"],
        "first_step_adam_s": first["adam"],
        "final_loss": losses,
        "diagonal_fallbacks_eqx_mlp": plan.num_uncovered,
    }


PERIODS = (1, 2, 5, 10)


def run_update_period_sweep(plan, x, y, params, base_cfg, key, steps: int) -> dict:
    """Per-step time and time-to-loss against `curvature_update_period` k (fixed-lr config).

    Every k trains from the same parameters on the same batch; one step of each k per round, so
    load changes hit them alike. The statistics pass runs only on the steps where
    `config.curvature_due(state)` is true; the others compute the loss and gradient alone."""
    runs = {}
    for k in PERIODS:
        cfg = dataclasses.replace(base_cfg, curvature_update_period=k)
        opt = kfac(plan, cfg)

        def step(p, s, kk, opt=opt, cfg=cfg):
            due = cfg.curvature_due(s)
            loss, g, stats = kfac_stats(plan, p, x, y, mode="mc", key=kk, update_curvature=due)
            u, s = opt.update(g, s, p, stats=stats)
            return optax.apply_updates(p, u), s, loss

        runs[k] = [jax.jit(step), params, opt.init(params)]
    first = {}
    for k, run in runs.items():  # compile (and the first step)
        t0 = time.perf_counter()
        run[1], run[2], _ = _block(run[0](run[1], run[2], jax.random.fold_in(key, 0)))
        first[k] = time.perf_counter() - t0
    n = max(2 * steps, 20)
    times = {k: [] for k in runs}
    losses = {k: [] for k in runs}
    for i in range(1, n + 1):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run[1], run[2], loss = _block(run[0](run[1], run[2], jax.random.fold_in(key, i)))
            times[k].append(time.perf_counter() - t0)
            losses[k].append(float(loss))
    # Loss levels: decades below the first loss of k=1 (the random labels are memorised, so the
    # loss falls by orders of magnitude; a linear scale would only see the first few steps).
    start = losses[1][0]
    levels = [start * f for f in (0.3, 0.1, 0.01, 0.001)]
    out = {}
    for k in runs:
        cum = np.cumsum(times[k])
        reach = {}
        for level in levels:
            hit = [j for j, v in enumerate(losses[k]) if v <= level]
            reach[f"{level:.3g}"] = None if not hit else float(cum[hit[0]])
        out[str(k)] = {
            "median_step_ms": 1e3 * float(np.median(times[k])),
            "mean_step_ms": 1e3 * float(np.mean(times[k])),
            "first_step_s": first[k],
            "final_loss": losses[k][-1],
            "steps": n,
            "seconds_to_loss": reach,
            # The curve itself, every 5th step: (cumulative seconds, loss).
            "curve": [[float(cum[j]), losses[k][j]] for j in range(0, n, 5)],
        }
    return out


def run_peer(warmup: int, steps: int, timeout: int) -> tuple[dict | None, str]:
    if not PEER_PYTHON.exists():
        return None, (
            f"kfac-jax environment not found at {PEER_PYTHON}; run `make bench-env` "
            "(or bash benchmarks/envs/kfac_jax/setup.sh)"
        )
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "--warmup", str(warmup), "--steps", str(steps)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"kfac-jax subprocess timed out after {timeout} s"
    if proc.returncode != 0:
        return None, "kfac-jax subprocess failed: " + proc.stderr.strip()[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), ""


def _targets(ours: dict, peer: dict | None) -> dict:
    """Each target: the figure, the bound and whether it holds (None without the peer)."""

    def lead(ours_ratio, peer_ratio):
        bound = None if peer_ratio is None else 0.9 * peer_ratio
        return {
            "ours": ours_ratio,
            "bound": bound,
            "pass": None if bound is None else bool(ours_ratio <= bound),
        }

    return {
        "kfac_over_adam <= 0.9 * kfac_jax_over_adam": lead(
            ours["kfac_over_adam"], None if peer is None else peer["kfac_over_adam"]
        ),
        "kfac_adaptive_over_adam <= 0.9 * kfac_jax_adaptive_over_adam": lead(
            ours["kfac_adaptive_over_adam"],
            None if peer is None else peer["kfac_adaptive_over_adam"],
        ),
        "first_step_s <= 3.0": {
            "ours": ours["first_step_s"],
            "bound": 3.0,
            "pass": bool(ours["first_step_s"] <= 3.0),
        },
        "diagonal_fallbacks_eqx_mlp == 0": {
            "ours": ours["diagonal_fallbacks_eqx_mlp"],
            "bound": 0,
            "pass": ours["diagonal_fallbacks_eqx_mlp"] == 0,
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 warm-up + 50 timed steps")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--ours-only", action="store_true", help="skip the kfac-jax subprocess")
    args = parser.parse_args(argv)
    if not args.ours_only:
        _common.require_python("kfac-jax", PEER_PYTHON)
    warmup, steps = (10, 50) if args.quick else (10, 200)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ours = run_ours(warmup, steps)
    if args.ours_only:
        peer, message = None, "kfac-jax skipped (--ours-only)"
    else:
        peer, message = run_peer(warmup, steps, timeout=150 if args.quick else 900)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    result = {
        "kfac_over_adam": ours["kfac_over_adam"],
        "kfac_adaptive_over_adam": ours["kfac_adaptive_over_adam"],
        "kfac_jax_over_adam": None if peer is None else peer["kfac_over_adam"],
        "kfac_jax_adaptive_over_adam": None if peer is None else peer["kfac_adaptive_over_adam"],
        "first_step_s": ours["first_step_s"],
        "kfac_jax_first_step_s": None if peer is None else peer["first_step_s"],
        "diagonal_fallbacks_eqx_mlp": ours["diagonal_fallbacks_eqx_mlp"],
        "targets": _targets(ours, peer),
        "curvature_update_period": ours["curvature_update_period"],
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "equinox": eqx.__version__,
            "optax": optax.__version__,
            "kfac_jax_env": None if peer is None else peer["versions"],
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "xla_flags": _FLAGS,
            "openblas_num_threads": os.environ["OPENBLAS_NUM_THREADS"],
            "load_average_1min": {"before": load_before, "after": load_after},
        },
        "steps": {"warmup": warmup, "timed": steps},
        "details": {"ours": ours, "kfac_jax": peer},
    }
    if message:
        result["message"] = message

    def fmt(v, unit=""):
        return "n/a" if v is None else f"{v:.2f}{unit}"

    print(f"MLP {'-'.join(map(str, SIZES))} tanh, batch {BATCH}, {steps} timed steps (interleaved)")
    print(f"{'':32s} {'ours (jax ' + jax.__version__ + ')':>22s} {'kfac-jax 0.0.8':>16s}")
    rows = [
        ("adam median step", ours["median_ms"]["adam"], peer and peer["median_ms"]["adam"], " ms"),
        ("kfac median step", ours["median_ms"]["kfac"], peer and peer["median_ms"]["kfac"], " ms"),
        (
            "kfac adaptive median step",
            ours["median_ms"]["kfac_adaptive"],
            peer and peer["median_ms"]["kfac_adaptive"],
            " ms",
        ),
        ("kfac / adam (median ratio)", result["kfac_over_adam"], result["kfac_jax_over_adam"], "x"),
        (
            "kfac adaptive / adam",
            result["kfac_adaptive_over_adam"],
            result["kfac_jax_adaptive_over_adam"],
            "x",
        ),
        (
            "first kfac step (compile)",
            result["first_step_s"],
            result["kfac_jax_first_step_s"],
            " s",
        ),
    ]
    for label, a, b, unit in rows:
        print(f"{label:32s} {fmt(a, unit):>22s} {fmt(b, unit):>16s}")
    print(
        f"ours, mean step / mean adam step (refresh steps included): kfac "
        f"{ours['kfac_mean_over_adam_mean']:.2f}x, adaptive "
        f"{ours['kfac_adaptive_mean_over_adam_mean']:.2f}x; first adaptive step "
        f"{ours['first_step_adaptive_s']:.2f} s; load average {load_before} -> {load_after}"
    )
    print(f"diagonal fallbacks on eqx.nn.MLP: ours {ours['diagonal_fallbacks_eqx_mlp']}")
    period = ours["curvature_update_period"]
    levels = list(period["1"]["seconds_to_loss"])
    print(
        f"\ncurvature_update_period k (fixed lr, {period['1']['steps']} interleaved steps each): "
        "step time and seconds to reach each loss level"
    )
    print(
        f"{'k':>3s} {'median ms':>10s} {'mean ms':>8s} {'final loss':>10s} "
        + " ".join(f"{'<=' + lv:>9s}" for lv in levels)
    )
    for k, row in period.items():
        reach = " ".join(f"{fmt(row['seconds_to_loss'][lv], ' s'):>9s}" for lv in levels)
        print(
            f"{k:>3s} {row['median_step_ms']:10.2f} {row['mean_step_ms']:8.2f} "
            f"{row['final_loss']:10.4f} {reach}"
        )
    print("\ntargets:")
    for name, t in result["targets"].items():
        verdict = "n/a (no peer)" if t["pass"] is None else ("pass" if t["pass"] else "FAIL")
        bound = "n/a" if t["bound"] is None else f"{t['bound']:.3g}"
        print(f"  {name}: {t['ours']:.3g} vs bound {bound}: {verdict}")
    if message:
        print("note:", message)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
