"""The claims, figures, metrics and written report of the bilevel experiment
(experiments/bilevel_implicit_bias.py)."""

import numpy as np

from experiments._api import Claim
from experiments._data import dataset_name


def dataset_id(cfg) -> str:
    """ "digits", or the name of the data at `mnist_path` ("mnist", "fashion-mnist", a folder's)."""
    return dataset_name(cfg.mnist_path) if cfg.mnist_path else "digits"


def data_name(cfg) -> str:
    name = dataset_id(cfg)
    return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(name, name)


def mean_std(values, scale=100.0) -> str:
    values = scale * np.asarray(values, dtype=float)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def plot_all(ctx, cfg, quad, distill, oned):
    name = data_name(cfg)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(quad)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    ax.barh(names, [max(quad[n]["dist_to_min_norm"], 1e-16) for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("||u - u†|| / ||u†||  (u† = min-norm outer solution)")
    ax.set_title("Where each bilevel algorithm lands (quadratic, overparameterized outer)")
    ctx.save_figure(fig, "quadratic_landing.png")

    fig, ax = plt.subplots(figsize=(1.6 * len(distill) + 1.5, 4))
    labels, width = list(distill), 0.25
    xs = np.arange(len(labels))
    bars = (
        ("cold-start", lambda r: r["cold"]["test_accuracy"]),
        ("warm-start", lambda r: r["warm"]["test_accuracy"]),
        ("warm-start + re-train", lambda r: r["warm"]["retrain_test_accuracy"]),
    )
    for i, (label, get) in enumerate(bars):
        vals = [100 * np.asarray(get(distill[k])) for k in labels]
        ax.bar(
            xs + (i - 1) * width,
            [v.mean() for v in vals],
            width,
            yerr=[v.std() for v in vals],
            label=label,
        )
    ax.axhline(10, color="gray", ls=":", label="chance")
    ax.set_xticks(xs, [label.replace(", ", "\n") for label in labels])
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"Dataset distillation on {name} (Table 3 analogue)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    fig.tight_layout()
    ctx.save_figure(fig, "distill_accuracy.png")

    first = labels[0]
    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for row, key in enumerate(("cold", "warm")):
        for k in range(10):
            image = distill[first][key]["images"][k]
            side = int(round(np.sqrt(image.size)))
            axes[row, k].imshow(image.reshape(side, side), cmap="gray")
            axes[row, k].axis("off")
        axes[row, 0].set_title(f"{key}-start", fontsize=8, loc="left")
    ctx.save_figure(fig, "distill_images.png")

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax0.plot(oned["grid"], 100 * oned["grid_accuracy"], label="fresh model trained at u")
    ax0.axhline(100 * oned["warm"].mean(), color="C1", label="warm-start inner model")
    ax0.axhline(100 * oned["full_data"].mean(), color="C2", ls="--", label="trained on all data")
    m = len(oned["grid"]) / 2
    ax0.axvline(oned["u_trace"][-1] % m, color="gray", ls=":", label="final u (seed 0)")
    ax0.set_xlabel("u (1-D outer parameter, ring position)")
    ax0.set_ylabel("test accuracy (%)")
    ax0.legend(fontsize=7)
    ax1.plot(oned["u_trace"])
    ax1.set_xlabel("outer step")
    ax1.set_ylabel("u (seed 0)")
    ctx.save_figure(fig, "oned_leak.png")


def metrics_of(quad, distill, oned) -> dict:
    def listify(v):
        v = np.asarray(v)
        return v.tolist() if v.ndim else v.item()

    skip = ("outer_loss_trace", "images", "u_trace", "grid", "grid_accuracy")
    return {
        "quadratic": {
            n: {k: v for k, v in r.items() if k != "outer_loss_trace"} for n, r in quad.items()
        },
        "distill": {
            k: {
                m: (
                    {kk: listify(vv) for kk, vv in r.items() if kk not in skip}
                    if isinstance(r, dict)
                    else listify(r)
                )
                for m, r in res.items()
            }
            for k, res in distill.items()
        },
        "oned": {k: listify(v) for k, v in oned.items() if k not in skip},
    }


def report_text(cfg, quad, distill, oned, edge) -> str:
    dim = next(iter(distill.values()))["cold"]["images"].shape[-1]
    test_name = f"the {data_name(cfg)} test split" if cfg.mnist_path else "the other digits"
    lines = [
        "### 1. Quadratic (float64)",
        "",
        "Distance of each algorithm's outer solution from the min-norm solution u† and the "
        "relative outer residual |M u - t| / |t|:",
        "",
        "| run | ||u-u†||/||u†|| | residual | ||u||/||u†|| |",
        "|---|---|---|---|",
    ]
    for n, r in quad.items():
        lines.append(
            f"| {n} | {r['dist_to_min_norm']:.2e} | {r['outer_residual']:.2e} | "
            f"{r['norm_ratio']:.3f} |"
        )
    lines += [
        "",
        f"### 2. Dataset distillation ({data_name(cfg)})",
        "",
        f"Data: {data_name(cfg)}. Inner model: tanh MLP {dim}-{cfg.hidden}-10, SGD lr "
        f"{cfg.dd_inner_lr}. Synthetic images: "
        "Gaussian noise N(0, 1) on the standardized pixel scale, fixed one-hot labels. Outer: "
        f"Adam on the pixels for {cfg.dd_outer_steps} steps, outer objective = cross-entropy on "
        f"the {cfg.train_size} training images; test = {test_name}. Both starts use the "
        "same hypergradient: the IFT with a K-term Neumann series (step = the inner lr) at the "
        f"inner iterate, run for K in {list(cfg.dd_neumann_terms)} (K=1 is the one-step "
        "approximation: the hypergradient of one SGD step). Cold start: the inner model "
        "restarts from the same "
        f"fixed init at every outer step and takes {cfg.dd_cold_inner_steps} steps; evaluated as "
        "that init trained the same steps on the final images (fresh random inits trained so: "
        "column 'cold, fresh init'). Warm start: the inner model is carried, "
        f"{cfg.dd_warm_inner_steps} inner step(s) per outer step; evaluated as the carried "
        "model. Re-train: fresh random inits trained "
        f"{cfg.retrain_steps} steps on the final images. Outer lr chosen per method from "
        f"{list(cfg.dd_outer_lrs)} by the final outer loss (training loss, not test accuracy). "
        f"Test accuracy (%), mean ± std over {cfg.seeds} seeds:",
        "",
        "| images/class, hypergradient | cold | warm | warm + re-train | cold, fresh init "
        "| cold + re-train | outer lr cold / warm | final outer loss cold / warm "
        "| max relative solve residual cold / warm | max hypergradient norm cold / warm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, res in {**distill, **edge}.items():
        c, w = res["cold"], res["warm"]
        lines.append(
            f"| {k} | {mean_std(c['test_accuracy'])} | {mean_std(w['test_accuracy'])} | "
            f"{mean_std(w['retrain_test_accuracy'])} | {mean_std(c['fresh_test_accuracy'])} | "
            f"{mean_std(c['retrain_test_accuracy'])} | "
            f"{c['outer_lr']} / {w['outer_lr']} | {np.mean(c['outer_loss']):.3f} / "
            f"{np.mean(w['outer_loss']):.3f} | {np.max(c['max_solve_residual']):.3g} / "
            f"{np.max(w['max_solve_residual']):.3g} | {np.max(c['max_hypergrad_norm']):.2g} / "
            f"{np.max(w['max_hypergrad_norm']):.2g} |"
        )
    lines += ["", "Every outer lr of the grid (test accuracy %, mean over seeds):", ""]
    for k, res in {**distill, **edge}.items():
        for method in ("cold", "warm"):
            r = res[method]
            per_lr = ", ".join(
                f"lr {lr}: {100 * a:.1f} (outer loss {lo:.3f})"
                for lr, a, lo in zip(
                    res["outer_lrs"], r["test_accuracy_by_lr"], r["outer_loss_by_lr"]
                )
            )
            lines.append(f"- {k} {method}: {per_lr}")
    lines += [
        "",
        f"Reference: a model trained {cfg.retrain_steps} steps on all {cfg.train_size} "
        f"training images reaches {mean_std(oned['full_data'])}% (inner lr {cfg.inner_lr}).",
        "",
        "Reading: with the same hypergradient, only the start differs. Warm start's accuracy "
        "lives in its carried weights (the re-train column: a fresh model on the same images); "
        "cold start's lives in the images, for its own fixed init. The residual and "
        "hypergradient-norm columns show whether each run's Neumann series stayed bounded; the "
        "claims above judge Table 3's gaps on those runs. The last row (when present) runs the "
        "same task at a larger inner lr, where full-batch SGD sits at the edge of stability "
        "(sharpness near 2 / lr) and a Neumann "
        "series with step = lr stops converging (relative residual above 1); compare its largest "
        "residuals and hypergradient norms and its cold-start accuracy with the first row.",
        "",
        "### 3. 1-D outer parameter",
        "",
        f"u is a position on a ring of {cfg.oned_ring} real training images per class; the "
        "synthetic set at u is one image per class, the Gaussian-kernel blend (width "
        f"{cfg.oned_width} positions) of the ring images around u. Warm start, "
        f"{cfg.oned_warm_inner_steps} inner step(s) per outer step, {cfg.oned_outer_steps} outer "
        f"steps, outer lr {oned['outer_lr']} (chosen from {list(cfg.oned_outer_lrs)} by the "
        "final outer loss). Metric: test accuracy (%), mean ± std over seeds.",
        "",
        f"- warm-start inner model: {mean_std(oned['warm'])}",
        f"- fresh model trained {cfg.retrain_steps} steps on the 10 images at the final u: "
        f"{mean_std(oned['fresh'])}",
        f"- best fresh model over a grid of u (every half position): "
        f"{mean_std(oned['best_fresh_on_grid'])}",
        f"- reference, trained {cfg.retrain_steps} steps on all {cfg.train_size} training "
        f"images: {mean_std(oned['full_data'])}",
        f"- ring positions visited by u (of {cfg.oned_ring}), per seed: "
        f"{oned['positions_visited'].tolist()}; u stays within half a position of its final "
        f"value from outer step {oned['settled_step'].tolist()} on (of {cfg.oned_outer_steps})",
        "- warm - fresh gap by outer lr: "
        + ", ".join(
            f"lr {lr}: {100 * g:.1f}" for lr, g in zip(oned["outer_lrs"], oned["gap_by_lr"])
        ),
        "",
        "Reading: the warm-start model is trained on the 10 images of every position u passes "
        "through. Once it fits the current 10 images their loss gradient is small, so later "
        "steps change it little and what it learned at earlier positions is largely kept (the "
        "inner problem is overparameterized; u settles early in most seeds, above). A fresh "
        "model sees only the final position. Where u ends up is "
        "chosen by hypergradients of the carried model, not of a fresh one, so the final u need "
        "not be a good position for a fresh model (compare the grid).",
        "",
        "MNIST (or Fashion-MNIST) runs from a user path (`mnist_path=` a folder of the four IDX "
        "files, an IDX file or an npz); CIFAR-10 is not implemented.",
    ]
    return "\n".join(lines)


def _claim(judge: bool | str, claim: str, paper: str, ours, holds: bool) -> Claim:
    """A quick-scale claim; `judge` False (smoke scale) or a reason (str) leaves it untested."""
    if judge is True:
        return Claim(claim, scale="quick", paper=paper, ours=ours, holds=bool(holds))
    reason = judge or (
        "smoke scale runs a handful of steps to exercise the code; judged at quick scale"
    )
    return Claim(claim, scale="quick", paper=paper, ours=ours, holds=None, reason=reason)


def claims_of(cfg, judge, quad, distill, oned) -> list[Claim]:
    """The experiment's claims from its stage results (`judge`: see `_claim`)."""
    claims = []
    cold = quad["cold exact"]
    claims.append(
        _claim(
            judge,
            "quadratic: cold start with exact hypergradients from u0=0 reaches the min-norm outer "
            "solution, ||u-u†||/||u†|| <= 1e-6",
            "Sec. 3: cold-start BLO on quadratics yields minimum-norm outer parameters",
            cold["dist_to_min_norm"],
            cold["dist_to_min_norm"] <= 1e-6,
        )
    )
    warm_name = f"warm unroll T={cfg.quad_warm_unroll_steps}"
    warm = quad[warm_name]
    claims.append(
        _claim(
            judge,
            f"quadratic: warm start ({warm_name}) solves the outer problem (residual <= 1e-6) "
            "but lands elsewhere (||u-u†||/||u†|| >= 1e-3)",
            "Sec. 3-4: warm start converges to a different solution",
            f"residual {warm['outer_residual']:.2e}, distance {warm['dist_to_min_norm']:.2e}",
            warm["outer_residual"] <= 1e-6 and warm["dist_to_min_norm"] >= 1e-3,
        )
    )
    approx = {n: v for n, v in quad.items() if "Neumann" in n or "cold unroll" in n}
    dists = [v["dist_to_min_norm"] for v in approx.values()]
    sweep_claim = (
        "quadratic: the outer solution moves with the hypergradient approximation (Neumann "
        "K / unroll T sweeps land at distances from u† spanning >= 10x, and at least one >= 1e-3)"
    )
    sweep_paper = (
        "Sec. 4 (ii): the hypergradient approximation changes which outer solution is found"
    )
    if dists:
        claims.append(
            _claim(
                judge,
                sweep_claim,
                sweep_paper,
                ", ".join(f"{n}: {v['dist_to_min_norm']:.1e}" for n, v in approx.items()),
                max(dists) >= 1e-3 and max(dists) >= 10 * min(dists),
            )
        )
    else:
        claims.append(
            Claim(
                sweep_claim,
                scale="quick",
                paper=sweep_paper,
                ours=None,
                holds=None,
                reason="this scale runs no Neumann K / unroll T sweep",
            )
        )
    paper = {"1/class": "MNIST 30.7 / 90.8 / 12.9", "10/class": "MNIST 89.1 / 97.5 / 17.1"}
    dataset = dataset_id(cfg)
    # Table 3's numbers are for MNIST; the digits default is the quick-scale stand-in the claims
    # were set for. On any other data the comparison is not made.
    judge_table3 = judge
    if dataset not in ("digits", "mnist"):
        judge_table3 = f"Table 3's numbers are for MNIST; this run used {dataset}"
    for key, res in distill.items():
        c, w = 100 * res["cold"]["test_accuracy"], 100 * res["warm"]["test_accuracy"]
        r = 100 * res["warm"]["retrain_test_accuracy"]
        # Table 3's gap is +60.1 points with 1 image/class but +8.4 with 10 (89.1 -> 97.5), so
        # the 20-point margin is asked of the 1/class setting and the order of the other.
        margin = 20 if key.startswith("1/") else 0
        ipc_key = key.split(",")[0]
        claims.append(
            _claim(
                judge_table3,
                f"distillation {key}: warm-start test accuracy "
                + (f">= cold-start + {margin} points" if margin else "> cold-start")
                + f" (means over {cfg.seeds} seeds)",
                f"Table 3 cold / warm / warm+retrain: {paper.get(ipc_key, '')}",
                f"cold {mean_std(c / 100)}, warm {mean_std(w / 100)} (warm - cold "
                f"{w.mean() - c.mean():+.1f})",
                w.mean() >= c.mean() + margin if margin else w.mean() > c.mean(),
            )
        )
        claims.append(
            _claim(
                judge_table3,
                f"distillation {key}: a fresh model retrained on the final warm-start images "
                "gets <= 25% test accuracy (chance 10%; mean over seeds)",
                f"Table 3: {paper.get(ipc_key, '')}",
                mean_std(r / 100),
                r.mean() <= 25,
            )
        )
    gap = 100 * (oned["warm"] - oned["fresh"])
    claims.append(
        _claim(
            judge,
            "1-D outer parameter: the warm-started inner model beats a fresh model trained at "
            "the final outer value by >= 10 test-accuracy points (mean over seeds)",
            "Abstract: warm-start inner solutions encode outer information even with "
            "low-dimensional outer parameters",
            f"warm {mean_std(oned['warm'])} vs fresh {mean_std(oned['fresh'])} "
            f"(gap {gap.mean():.1f} ± "
            f"{gap.std():.1f}); best fresh over all u {mean_std(oned['best_fresh_on_grid'])}",
            gap.mean() >= 10,
        )
    )
    return claims
