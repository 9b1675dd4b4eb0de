"""The figures of the superposition experiment (experiments/superposition.py)."""

import numpy as np

from respax.interp import superposition as sp


def plot_sweep(cfg, sweep, ctx):
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    densities = cfg.sweep_densities
    for model, r in sweep.items():
        d = len(densities)
        # constrained layout makes room for the colour bars and keeps labels off the ticks.
        fig, axes = plt.subplots(
            2, d, figsize=(2.2 * d + 1.6, 4.8), squeeze=False, layout="constrained"
        )
        for j in range(d):
            W = r["W"][0, j]
            image = axes[0, j].imshow(W @ W.T, cmap="RdBu_r", vmin=-1, vmax=1)
            axes[0, j].set_title(f"1-S={densities[j]:g}", fontsize=9)
            axes[0, j].set_xticks([])
            axes[0, j].set_yticks([])
            norms, inter = r["norms"][0, j], r["interference"][0, j]
            colors = plt.cm.viridis(np.clip(inter, 0, 1))
            axes[1, j].barh(np.arange(len(norms)), norms, color=colors)
            axes[1, j].invert_yaxis()
            axes[1, j].set_xlim(0, 1.2)
            axes[1, j].set_xticks([0, 0.5, 1])
            axes[1, j].set_yticks([])
            axes[1, j].tick_params(labelsize=8)
            axes[1, j].set_xlabel("||W_i||", fontsize=8)
        axes[0, 0].set_ylabel("WᵀW", fontsize=9)
        axes[1, 0].set_ylabel("feature i\n(importance 0.7^i)", fontsize=8)
        fig.colorbar(image, ax=axes[0, :], shrink=0.9, label="WᵀW entry")
        fig.colorbar(
            ScalarMappable(Normalize(0, 1), cmap="viridis"),
            ax=axes[1, :],
            shrink=0.9,
            label="Σ_j (Ŵ_i·W_j)², j≠i",
        )
        fig.suptitle(f"{model} output, n=20, m=5 (seed 0); bars ||W_i||", fontsize=10)
        ctx.save_figure(fig, f"sweep_{model}.png")


def plot_phases(cfg, phases, ctx):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#d9d9d9", "#3182bd", "#e6550d"])
    g = cfg.phase_grid
    fig, axes = plt.subplots(len(phases), 2, figsize=(8, 4 * len(phases)), squeeze=False)
    for row, (n, ph) in enumerate(phases.items()):
        for col, (grid, title) in enumerate(
            [(ph["best"], "empirical (lowest-loss seed)"), (ph["theory"], "analytic candidates")]
        ):
            ax = axes[row, col]
            ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, origin="upper")
            ax.set_xticks([0, (g - 1) / 2, g - 1], ["0.1x", "1x", "10x"])
            ax.set_yticks([0, (g - 1) / 2, g - 1], ["1", "0.1", "0.01"])
            ax.set_xlabel("relative importance of the extra feature")
            ax.set_ylabel("feature density 1-S")
            ax.set_title(f"{n} in {n - 1}: {title}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(3)]
    fig.legend(handles, sp.PHASE_NAMES, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    ctx.save_figure(fig, "phase_diagrams.png")


def _plain_log_ticks(axis) -> None:
    """Label a log axis at 1, 2, 5, 10, 20, ... only, as plain numbers (no crowded minor labels)."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _spread(values, gap: float) -> list[float]:
    """Label heights near `values` (any order) that keep at least `gap` between neighbours."""
    order = np.argsort(values)
    out = np.asarray(values, dtype=float).copy()
    for previous, current in zip(order[:-1], order[1:], strict=True):
        out[current] = max(out[current], out[previous] + gap)
    return out.tolist()


def plot_geometry(cfg, geo, ctx):
    import matplotlib.pyplot as plt

    inv = 1 / geo["density"]
    fig, axes = plt.subplots(1, 3, figsize=(15.5, 4), layout="constrained")
    ax = axes[0]
    for seed in range(geo["dstar"].shape[0]):
        ax.plot(inv, geo["dstar"][seed], "o-", color="k", alpha=0.7)
    ax.axhline(0.5, color="r", ls="--", lw=1, label="1/2")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("1/(1-S)")
    ax.set_ylabel("D* = m / ||W||_F^2")
    ax.set_title("dimensions per feature")
    ax.legend()
    ax = axes[1]
    for seed in range(geo["dims"].shape[0]):
        for j, x in enumerate(inv):
            keep = geo["norms"][seed, j] > 0.5
            jitter = x * np.exp(np.random.default_rng(j).normal(0, 0.03, keep.sum()))
            ax.scatter(jitter, geo["dims"][seed, j][keep], s=3, alpha=0.4, color="C0")
    names, fractions = zip(*sp.POLYTOPE_FRACTIONS.items(), strict=True)
    # Labels outside the axes on the right, spread apart where fractions are close (2/5 and
    # 3/8), each joined to its line.
    for name, f, y in zip(names, fractions, _spread(fractions, 0.08), strict=True):
        ax.axhline(f, color="gray", lw=0.6, ls=":")
        ax.annotate(
            name,
            xy=(1.0, f),
            xycoords=("axes fraction", "data"),
            xytext=(1.04, y),
            textcoords=("axes fraction", "data"),
            fontsize=7,
            va="center",
            annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5},
        )
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("1/(1-S)")
    ax.set_ylabel("D_i (features with ||W_i||>0.5)")
    ax.set_title("feature dimensionality")
    ax = axes[2]
    ax.hist(geo["learned"], bins=np.arange(0, 1.0125, 0.0125), color="C0")
    for name, f in sp.POLYTOPE_FRACTIONS.items():
        ax.axvline(
            f,
            color="r" if geo["is_peak"][list(sp.POLYTOPE_FRACTIONS).index(name)] else "gray",
            lw=0.8,
            ls="--",
        )
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("D_i (red: detected peak)")
    ax.set_ylabel("features")
    ax.set_title("histogram of D_i")
    ctx.save_figure(fig, "geometry.png")


def plot_correlated(cfg, pairs, ctx):
    import matplotlib.pyplot as plt

    p = pairs["density"]
    fig, axes = plt.subplots(2, len(p) + 1, figsize=(2.6 * (len(p) + 1), 5.4), squeeze=False)
    for row, kind in enumerate(("correlated", "anticorrelated")):
        for j in range(len(p)):
            ax = axes[row, j]
            W = pairs[kind]["W"][0, j]
            for i, color in enumerate(["C0", "C0", "C1", "C1"]):
                ax.plot([0, W[i, 0]], [0, W[i, 1]], color=color, lw=2, ls="-" if i % 2 else "--")
            ax.set_xlim(-1.3, 1.3)
            ax.set_ylim(-1.3, 1.3)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{kind[:5]}. p={p[j]:.3g}", fontsize=8)
        ax = axes[row, -1]
        ax.hist(pairs[kind]["cos"].ravel(), bins=np.linspace(-1, 1, 21))
        ax.set_title(f"{kind}: in-pair cosine", fontsize=8)
    fig.suptitle("W_i in 2-D (seed 0); pair (0,1) blue, pair (2,3) orange", fontsize=10)
    fig.tight_layout()
    ctx.save_figure(fig, "correlated_pairs.png")


def plot_abs(cfg, ab, ctx):
    import matplotlib.pyplot as plt

    d = ab["density"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axes[0].plot(d, ab["ratio"].T, "o-")
    axes[0].axhline(1, color="r", ls="--", lw=1)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("1-S")
    axes[0].set_ylabel("loss / best monosemantic loss")
    axes[0].set_title("below 1: computation in superposition", fontsize=9)
    axes[1].plot(d, ab["polysemantic"].T, "o-")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("1-S")
    axes[1].set_ylabel("fraction of polysemantic neurons")
    for ax, j, title in [(axes[2], 0, "densest"), (axes[3], len(d) - 1, "sparsest")]:
        ax.imshow(ab["W1"][0, j].T, cmap="RdBu_r", vmin=-1.5, vmax=1.5, aspect="auto")
        ax.set_xlabel("feature")
        ax.set_ylabel("neuron")
        ax.set_title(f"W1 at 1-S={d[j]:g} ({title})", fontsize=9)
    fig.tight_layout()
    ctx.save_figure(fig, "computation.png")
