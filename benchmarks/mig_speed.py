"""MIG speed: `mig_sampled` on N = 10,000 codes (10 latents, a 10x10x10x10 grid of 4 factors;
10,000 samples per entropy as Chen et al.) and `mig_discrete` against the reference computation
disentanglement_lib uses (numpy `histogram`/`digitize` binning, a `sklearn.metrics.
mutual_info_score` loop over latents x factors; disentanglement_lib itself needs TensorFlow 1),
on N = 10,000 encoder means of 10 latents and dSprites' 4 scored factors (6, 40, 32, 32).

Timed: steady-state calls of the jitted functions (compile time reported apart), interleaved
with the reference, medians. `--full` also times `mig_sampled` over the whole 737,280-image
dSprites grid (a GPU target: < 2 min).

Usage: python benchmarks/mig_speed.py [--quick] [--json PATH] [--full]
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from respax.generative import mig_discrete, mig_sampled
from respax.testing._mig_reference import reference_mig_discrete

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--full", action="store_true", help="also the 737,280-image grid (GPU)")
    args = ap.parse_args()
    repeats = 5 if args.quick else 11
    rng = np.random.default_rng(0)

    sizes = (10, 10, 10, 10)
    mu = jnp.asarray(rng.normal(size=(10_000, 10)), jnp.float32)
    logvar = jnp.asarray(rng.uniform(-3, 0, size=(10_000, 10)), jnp.float32)
    sampled = jax.jit(lambda m, lv, k: mig_sampled(m, lv, sizes, key=k).mig)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(sampled(mu, logvar, key))
    sampled_first = time.perf_counter() - t0

    codes = rng.normal(size=(10_000, 10)).astype(np.float32)
    factors = rng.integers(0, [6, 40, 32, 32], size=(10_000, 4))
    disc = jax.jit(lambda c, f: mig_discrete(c, f, (6, 40, 32, 32)).mig)
    codes_j, factors_j = jnp.asarray(codes), jnp.asarray(factors)
    t0 = time.perf_counter()
    ours_value = float(disc(codes_j, factors_j))
    disc_first = time.perf_counter() - t0
    ref_value = reference_mig_discrete(codes, factors)[0]

    t_sampled, t_ours, t_ref = [], [], []
    for _ in range(repeats):  # interleaved
        t_ours += _common.time_calls(lambda: disc(codes_j, factors_j).block_until_ready(), 1)
        t_ref += _common.time_calls(lambda: reference_mig_discrete(codes, factors), 1)
        t_sampled += _common.time_calls(lambda: jax.block_until_ready(sampled(mu, logvar, key)), 1)
    out = {
        "mig_quick_s": _common.median(t_sampled),
        "mig_quick_compile_s": sampled_first - _common.median(t_sampled),
        "mig_discrete_ours_s": _common.median(t_ours),
        "mig_discrete_reference_s": _common.median(t_ref),
        "ours_over_reference_mig_time": _common.median(t_ours) / _common.median(t_ref),
        "mig_discrete_compile_s": disc_first - _common.median(t_ours),
        "mig_discrete_value_ours": ours_value,
        "mig_discrete_value_reference": ref_value,
        "repeats": repeats,
        "versions": _common.versions("jax", "jaxlib", "numpy", "scikit-learn"),
        "machine": _common.machine(),
    }
    if args.full:
        full_sizes = (3, 6, 40, 32, 32)
        n = 737_280
        mu_f = jnp.asarray(rng.normal(size=(n, 10)), jnp.float32)
        lv_f = jnp.full((n, 10), -2.0, jnp.float32)
        fn = jax.jit(lambda m, lv, k: mig_sampled(m, lv, full_sizes, factors=(1, 2, 3, 4),
                                                  key=k, chunk_size=1024).mig)  # fmt: skip
        t0 = time.perf_counter()
        jax.block_until_ready(fn(mu_f, lv_f, key))
        out["mig_full_grid_first_s"] = time.perf_counter() - t0
        out["mig_full_grid_s"] = _common.median(
            _common.time_calls(lambda: jax.block_until_ready(fn(mu_f, lv_f, key)), 2)
        )
    for k, v in out.items():
        print(f"{k}: {v}")
    body = (
        "Shared, loaded 2-core machine (other engineers' jobs ran at the same time); medians of "
        f"{repeats} interleaved calls.\n\n"
        "| what | ours (s) | reference (s) | ratio |\n|---|---|---|---|\n"
        f"| mig_sampled, N=10,000 x 10 latents x 4 factors, 10k samples | {out['mig_quick_s']:.3f}"
        f" (compile {out['mig_quick_compile_s']:.1f}) | - | target < 60 s |\n"
        f"| mig_discrete, N=10,000 means, 10 latents x 4 factors | {out['mig_discrete_ours_s']:.4f}"
        f" | {out['mig_discrete_reference_s']:.4f} (numpy+sklearn) | "
        f"{out['ours_over_reference_mig_time']:.3f} (target <= 0.2) |\n\n"
        f"Values agree: ours {ours_value:.6f}, reference {ref_value:.6f}. Versions: "
        f"{out['versions']}."
    )
    if "mig_full_grid_s" in out:
        body += f"\n\nFull 737,280 grid: {out['mig_full_grid_s']:.1f} s (target < 120 s on GPU)."
    _common.update_results_section("mig_speed", body)
    if args.json:
        _common.write_json(args.json, out)


if __name__ == "__main__":
    main()
