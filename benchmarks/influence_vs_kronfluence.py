"""respax.interp EK-FAC influence vs kronfluence on the digits MLP (interp.md §4).

Model and data (fixed here): scikit-learn digits, standardized, 1,000 train / 100 queries;
64-64-64-10 ReLU MLP (8,970 parameters) trained with SGD + momentum 0.9 (lr 0.05, batch 50,
60 epochs, seed 0). Both libraries score the same trained weights.

Ours is respax EK-FAC refined by `REFINE` iterations of EK-FAC-preconditioned conjugate gradient on
the exact block-diagonal GGN (`EKFAC(refine_iterations=REFINE, refine_dtype="float32")`): float64
parameters, gradients, factors and CG vectors, with the structured linear-layer GGN products in
float32 (float32 throughout stalls at Pearson ~0.94 at damping 1e-3, float32 products do not);
plain float32 EK-FAC is reported next to it (`ekfac_*` keys).

Reported:
- fit + score wall time (EK-FAC factors, then 100 x 1,000 scores at damping 1e-3), ours after
  compilation, kronfluence inside its subprocess (import excluded); medians over interleaved reps;
- accuracy: the mean over the 100 queries of the per-query Pearson (over the 1,000 training points)
  against the exact block-diagonal damped-GGN influence (GGN = mean over examples, float64) at
  damping 1e-5 and 1e-3;
- refit agreement: Pearson of the flattened scores of two independent factor fits (damping 1e-3).

kronfluence runs in `.bench-envs/kronfluence` (`make bench-env`); without it the script exits 3
and prints that command, unless `--no-peer` / `--ours-only` ask for ours alone.
`--quick` (< 3 minutes) uses 3 reps, the default 5.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The oracle's LAPACK calls (Cholesky, triangular solves) go to the OpenBLAS bundled with
# jaxlib/scipy; on 2 cores shared with other jobs its worker threads contend with XLA's and a
# 4160x4160 Cholesky took 3-7 s instead of ~1 s single-threaded. Set before numpy/jax load
# OpenBLAS; the kronfluence subprocess gets the environment as it was.
_PEER_ENV = dict(os.environ)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_PY = ROOT / ".bench-envs" / "kronfluence" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "envs" / "kronfluence" / "peer.py"
DAMPINGS = (1e-3, 1e-5)
REFINE = 8  # EK-FAC-preconditioned CG iterations of "ours" (chosen by measurement)
REFINE_DTYPE = "float32"  # dtype of the structured GGN products inside the refinement


def _data_and_model():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int32)
    x = (x - x[:1000].mean(0)) / (x[:1000].std(0) + 1e-6)
    train = (jnp.asarray(x[:1000]), jnp.asarray(y[:1000]))
    query = (jnp.asarray(x[1000:1100]), jnp.asarray(y[1000:1100]))
    model = eqx.nn.MLP(64, 10, 64, 2, activation=jax.nn.relu, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.sgd(0.05, momentum=0.9)

    def loss_fn(p, xb, yb):
        logits = jax.vmap(eqx.combine(p, static))(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(carry, key):
        p, s = carry
        idx = jax.random.permutation(key, 1000).reshape(20, 50)

        def step(c, b):
            p, s = c
            g = jax.grad(loss_fn)(p, train[0][b], train[1][b])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, s), idx)[0]

    carry = (params, opt.init(params))
    for e in range(60):
        carry = epoch(carry, jax.random.fold_in(jax.random.key(1), e))
    model = eqx.combine(carry[0], static)
    acc = lambda d: float(jnp.mean(jnp.argmax(jax.vmap(model)(d[0]), -1) == d[1]))
    return model, train, query, acc(train), acc(query)


def _pearson_rows(a, b):
    """The mean over queries (rows) of respax.core's Pearson correlation, in float64."""
    import jax
    import jax.numpy as jnp

    from respax.core import pearson

    with jax.enable_x64(True):
        return float(jnp.mean(pearson(np.asarray(a, np.float64), np.asarray(b, np.float64))))


def _flat_corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _run_peer(npz: str, out: str) -> dict | None:
    cmd = [
        str(PEER_PY),
        str(PEER_SCRIPT),
        "--data",
        npz,
        "--out",
        out,
        "--dampings",
        ",".join(str(d) for d in DAMPINGS),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_PEER_ENV)
    if res.returncode != 0:
        print("kronfluence peer failed:\n" + res.stderr[-2000:], file=sys.stderr)
        return None
    import json

    meta = json.loads(Path(out + ".json").read_text())
    scores = np.load(out)
    meta["scores"] = [scores[f"scores_{i}"] for i in range(len(DAMPINGS))]
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true", help="skip kronfluence")
    ap.add_argument(
        "--refine", type=int, default=REFINE, help="PCG iterations of ours (default %(default)s)"
    )
    ap.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    ap.add_argument(
        "--ours-only",
        action="store_true",
        help="skip kronfluence and the RESULTS.md update (the oracle still runs)",
    )
    args = ap.parse_args()
    if not (args.no_peer or args.ours_only):
        _common.require_python("kronfluence", PEER_PY)
    reps = args.reps or (3 if args.quick else 5)
    load_at_start = os.getloadavg()[0]

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from respax.core import SoftmaxCrossEntropy
    from respax.interp import EKFAC, Exact, fit_factors, pairwise_scores

    model, train, query, train_acc, query_acc = _data_and_model()
    loss = SoftmaxCrossEntropy()
    apply = lambda m, x: m(x)
    print(f"digits MLP: train acc {train_acc:.3f}, query acc {query_acc:.3f}")

    # The exact oracle: float64 block-diagonal damped GGN (one Cholesky per block and damping).
    jax.config.update("jax_enable_x64", True)
    m64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    tr64 = (train[0].astype(jnp.float64), train[1])
    q64 = (query[0].astype(jnp.float64), query[1])
    t0, c0 = time.perf_counter(), time.process_time()
    exact = fit_factors(apply, loss, m64, tr64, strategy=Exact(block_diagonal=True, chunk_size=50))
    oracle = [
        np.asarray(pairwise_scores(exact, apply, loss, m64, q64, tr64, damping=d)) for d in DAMPINGS
    ]
    exact_s, exact_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    del exact
    print(
        f"exact block-diagonal oracle (fit + 2 dampings, incl. compile): {exact_s:.1f} s wall, "
        f"{exact_cpu_s:.1f} s CPU"
    )

    # name -> (strategy, float64?); x64 is switched per call (jit caches are per setting).
    refine = args.refine
    ours = EKFAC(refine_iterations=refine, refine_dtype=REFINE_DTYPE)
    strategies = {"ours": (ours, True), "ekfac": (EKFAC(), False)}

    def fit_score(name):
        strategy, x64 = strategies[name]
        jax.config.update("jax_enable_x64", x64)
        m, tr, q = (m64, tr64, q64) if x64 else (model, train, query)
        f = fit_factors(apply, loss, m, tr, strategy=strategy)
        s = pairwise_scores(f, apply, loss, m, q, tr, damping=DAMPINGS[0])
        return f, jax.block_until_ready(s)

    def all_scores(name, f):
        x64 = strategies[name][1]
        jax.config.update("jax_enable_x64", x64)
        m, tr, q = (m64, tr64, q64) if x64 else (model, train, query)
        return [np.asarray(pairwise_scores(f, apply, loss, m, q, tr, damping=d)) for d in DAMPINGS]

    compile_s, scores, refit = {}, {}, {}
    for name in strategies:
        t0 = time.perf_counter()
        f, s_first = fit_score(name)
        compile_s[name] = time.perf_counter() - t0
        scores[name] = all_scores(name, f)
        refit[name] = _flat_corr(np.asarray(s_first), np.asarray(fit_score(name)[1]))
    jax.config.update("jax_enable_x64", False)

    have_peer = PEER_PY.exists() and not args.no_peer and not args.ours_only
    tmp = tempfile.mkdtemp(prefix="kronfluence-bench-")
    npz = os.path.join(tmp, "data.npz")
    layers = [layer for layer in model.layers]
    np.savez(
        npz,
        x_train=np.asarray(train[0]),
        y_train=np.asarray(train[1]),
        x_query=np.asarray(query[0]),
        y_query=np.asarray(query[1]),
        **{f"w{i}": np.asarray(layer.weight) for i, layer in enumerate(layers)},
        **{f"b{i}": np.asarray(layer.bias) for i, layer in enumerate(layers)},
    )

    times = {name: [] for name in strategies}
    peer_t, peer_runs = [], []
    for r in range(reps):
        for name in strategies:
            times[name] += _common.time_calls(lambda name=name: fit_score(name), 1)
        jax.config.update("jax_enable_x64", False)
        if have_peer:
            res = _run_peer(npz, os.path.join(tmp, f"peer{r}.npz"))
            if res is not None:
                peer_runs.append(res)
                peer_t.append(res["times"]["fit_s"] + res["times"]["score_s"])

    out = {"ours_strategy": f'EKFAC(refine_iterations={refine}, refine_dtype="{REFINE_DTYPE}")'}
    for name in strategies:
        out.update(
            {
                f"{name}_fit_score_s": _common.median(times[name]),
                f"{name}_fit_score_min_s": min(times[name]),
                f"{name}_first_call_s": compile_s[name],
                f"{name}_pearson_exact_d1e3": _pearson_rows(scores[name][0], oracle[0]),
                f"{name}_pearson_exact_d1e5": _pearson_rows(scores[name][1], oracle[1]),
                f"{name}_refit_corr": refit[name],
            }
        )
    out.update(
        {
            "exact_oracle_s": exact_s,
            "exact_oracle_cpu_s": exact_cpu_s,
            "train_accuracy": train_acc,
            "query_accuracy": query_acc,
            "reps": reps,
        }
    )
    if peer_runs:
        out.update(
            {
                "kronfluence_fit_score_s": _common.median(peer_t),
                "kronfluence_fit_score_min_s": min(peer_t),
                "ours_over_kronfluence_time": out["ours_fit_score_s"] / _common.median(peer_t),
                "ours_over_kronfluence_time_min": out["ours_fit_score_min_s"] / min(peer_t),
                "ekfac_over_kronfluence_time": out["ekfac_fit_score_s"] / _common.median(peer_t),
                "kronfluence_pearson_exact_d1e3": float(
                    np.mean([_pearson_rows(p["scores"][0], oracle[0]) for p in peer_runs])
                ),
                "kronfluence_pearson_exact_d1e5": float(
                    np.mean([_pearson_rows(p["scores"][1], oracle[1]) for p in peer_runs])
                ),
                "kronfluence_refit_corr": (
                    _flat_corr(peer_runs[0]["scores"][0], peer_runs[1]["scores"][0])
                    if len(peer_runs) > 1
                    else None
                ),
                "kronfluence_import_s": _common.median([p["times"]["import_s"] for p in peer_runs]),
            }
        )
    else:
        for k in (
            "kronfluence_fit_score_s",
            "ours_over_kronfluence_time",
            "ekfac_over_kronfluence_time",
            "kronfluence_pearson_exact_d1e3",
            "kronfluence_pearson_exact_d1e5",
            "kronfluence_refit_corr",
        ):
            out[k] = None
    out["versions"] = _common.versions("jax", "equinox", "respax-interp", "respax-curvature")
    if peer_runs:
        out["versions"]["torch (peer)"] = peer_runs[0].get("torch")
        out["versions"]["kronfluence (peer)"] = "1.0.1"
    out["machine"] = _common.machine()

    fmt = lambda v, f="{:.3f}": "n/a" if v is None else f.format(v)

    def row(label, key, f="{:.3f}", target=""):
        return (
            f"| {label} | {fmt(out[f'ours_{key}'], f)} | {fmt(out[f'ekfac_{key}'], f)} | "
            f"{fmt(out.get(f'kronfluence_{key}'), f)} | {target} |\n"
        )

    load_at_end = os.getloadavg()[0]
    checks = {
        "time <= 0.5x kronfluence (needs the peer)": (
            out["ours_over_kronfluence_time"] is not None
            and out["ours_over_kronfluence_time"] <= 0.5
        ),
        "Pearson >= 0.95 at 1e-3": out["ours_pearson_exact_d1e3"] >= 0.95,
        "Pearson >= 0.7 at 1e-5": out["ours_pearson_exact_d1e5"] >= 0.7,
        "refit agreement 1.000": round(out["ours_refit_corr"], 3) >= 1.0,
        "oracle < 60 s": out["exact_oracle_s"] < 60,
    }
    missed = [k for k, ok in checks.items() if not ok]
    verdict = (
        "all targets met on this run" if not missed else "missed on this run: " + ", ".join(missed)
    )
    table = (
        f"| | ours: EK-FAC + {refine} PCG iterations (float64, {REFINE_DTYPE} GGN products) | "
        "respax EK-FAC (float32) | kronfluence 1.0.1 EK-FAC | target (ours) |\n"
        "|---|---|---|---|---|\n"
        + row("fit + 100x1000 scores, median s", "fit_score_s", "{:.2f}")
        + row("fit + 100x1000 scores, min s", "fit_score_min_s", "{:.2f}")
        + f"| time / kronfluence (medians) | {fmt(out['ours_over_kronfluence_time'], '{:.2f}x')} "
        f"| {fmt(out['ekfac_over_kronfluence_time'], '{:.2f}x')} | 1x | <= 0.5x |\n"
        f"| time / kronfluence (mins) | "
        f"{fmt(out.get('ours_over_kronfluence_time_min'), '{:.2f}x')} | | 1x | |\n"
        + row(
            "Pearson vs exact block-diag GGN, damping 1e-3", "pearson_exact_d1e3", target=">= 0.95"
        )
        + row(
            "Pearson vs exact block-diag GGN, damping 1e-5", "pearson_exact_d1e5", target=">= 0.7"
        )
        + row("refit-to-refit score correlation", "refit_corr", "{:.4f}", target="1.000")
        + f"| exact float64 block-diagonal oracle (fit + scores at both dampings, incl. "
        f"compile), wall s | {out['exact_oracle_s']:.1f} ({out['exact_oracle_cpu_s']:.1f} s "
        "CPU) | | | < 60 |\n"
        "\n"
        f"**Verdict ({out['ours_strategy']}): {verdict}.** "
        f"First call (compile + run): ours {out['ours_first_call_s']:.1f} s, EK-FAC "
        f"{out['ekfac_first_call_s']:.1f} s. Model: train acc {train_acc:.3f}, query acc "
        f"{query_acc:.3f}; {reps} interleaved reps; 1-minute load average {load_at_start:.1f} at "
        f"the start and {load_at_end:.1f} at the end (other jobs share the 2 cores: wall times "
        "are inflated and noisy; the ratio compares runs interleaved under the same load); "
        "OpenBLAS threads for LAPACK calls (ours and the oracle): "
        f"{os.environ.get('OPENBLAS_NUM_THREADS')}.\n\n"
        "EK-FAC's corrected eigenvalues equal the exact diagonal of each layer's GGN block in "
        "the Kronecker eigenbasis; what remains is the blocks' off-diagonal part in that basis, "
        "so plain K-FAC and EK-FAC score alike. The refinement (EK-FAC-preconditioned CG on the "
        "exact block-diagonal GGN) closes it. Each linear layer's GGN block product is four "
        "matmuls on the per-example layer inputs and output-Hessian pseudo-gradients, batched "
        "over the 100 queries (instead of a Jacobian and a transposed Jacobian product through "
        "the network per block and query), and the EK-FAC eigenvalue correction uses the same "
        "rank-one structure; the exact oracle builds its dense linear-layer blocks from them "
        "too. Choice of the setting, by measurement on this model (Pearson at 1e-3 / 1e-5 "
        "after k iterations, float64): k=2 0.959 / 0.723, k=4 0.990 / 0.713, k=6 0.998 / 0.726, "
        "k=8 1.000 / 0.750, k=10 1.000 / 0.803 (k=0, plain float64 EK-FAC: 0.904 / 0.678); "
        "each iteration costs about 0.05-0.07 s here, so k=8 keeps both accuracy targets with "
        "a margin of ~0.05 and the time well under half of kronfluence's. Precision: float32 "
        "throughout reaches only 0.911 / 0.938 / 0.950 at 1e-3 after 2 / 4 / 6 iterations; "
        "float32 GGN products inside an otherwise float64 refinement give the float64 "
        "correlations to 4 digits at half the product cost."
    )
    print(table)
    if args.json:
        _common.write_json(args.json, out)
    if peer_runs and not args.no_results:
        _common.update_results_section("influence_vs_kronfluence", table)


if __name__ == "__main__":
    main()
