"""Helpers of `experiments/tcvae_disentanglement.py`: the evaluation lattice, the rate-matched
TC comparison, the report table and the plots (MIG / TC against β, latent traversals)."""

import numpy as np

_BASES = np.asarray([245_760, 40_960, 1024, 32, 1])  # dSprites index bases, colour dropped


def eval_lattice(stride: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Indices of the sub-lattice (all shapes and scales, every `stride`-th orientation and
    position) in row-major order, and its factor sizes (colour dropped)."""
    axes = [np.arange(3), np.arange(6), np.arange(0, 40, stride), np.arange(0, 32, stride),
            np.arange(0, 32, stride)]  # fmt: skip
    classes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 5)
    return classes @ _BASES, tuple(len(a) for a in axes)


def traversal_index() -> int:
    """The image the traversals start from: a square (shape 0) of the largest scale, at
    orientation 0 and near the centre (posX = posY = 16)."""
    return int(np.asarray([0, 5, 0, 16, 16]) @ _BASES)


def rate_matched(rows, method: str, beta: float, tolerance: float, min_active: int):
    """Pair the `method` model(s) at `beta` with the β-VAE of the nearest rate (any β).

    Averages over seeds first. Returns a dict with both arms' TC, rate and active units and
    `matched`: whether the rate ratio is within `tolerance` and both arms have at least
    `min_active` active units (a collapsed posterior has TC ~ 0 trivially).
    """

    def mean(m, b, key):
        return float(np.mean([r[key] for r in rows if r["method"] == m and r["beta"] == b]))

    tc_rate = mean(method, beta, "rate")
    vae_betas = sorted({r["beta"] for r in rows if r["method"] == "beta-VAE"})
    vae_rates = [mean("beta-VAE", b, "rate") for b in vae_betas]
    j = int(np.argmin([abs(np.log(max(r, 1e-9) / max(tc_rate, 1e-9))) for r in vae_rates]))
    b = vae_betas[j]
    out = {
        "tc": mean(method, beta, "tc_full"), "rate": tc_rate,
        "active_units": mean(method, beta, "active_units"),
        "vae_beta": b, "vae_tc": mean("beta-VAE", b, "tc_full"), "vae_rate": vae_rates[j],
        "vae_active_units": mean("beta-VAE", b, "active_units"),
    }  # fmt: skip
    ratio = max(out["rate"], out["vae_rate"]) / max(min(out["rate"], out["vae_rate"]), 1e-9)
    out["rate_ratio"] = ratio
    out["matched"] = bool(
        ratio <= tolerance and min(out["active_units"], out["vae_active_units"]) >= min_active
    )
    return out


def table(rows) -> str:
    head = (
        "| method | beta | rate | active units | TC | MI | dwKL | ELBO | MIG sampled | "
        "MIG discrete |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['method']} | {r['beta']:g} | {r['rate']:.2f} | {r['active_units']:.0f} | "
        f"{r['tc_full']:.3f} | {r['mi_full']:.3f} | {r['dwkl_full']:.3f} | {r['elbo']:.1f} | "
        f"{r['mig_sampled']:.3f} | {r['mig_discrete']:.3f} |"
        for r in rows
    )


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    return plt


def plot_curves(ctx, betas, tc, mig, mig_d) -> None:
    plt = _pyplot()
    if plt is None:  # pragma: no cover
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for m in tc:
        axes[0].plot(betas, mig[m], "o-", label=f"{m} sampled")
        axes[0].plot(betas, mig_d[m], "x--", label=f"{m} discrete")
        axes[1].plot(betas, np.maximum(tc[m], 1e-4), "o-", label=m)
        axes[2].scatter(tc[m], mig[m], label=m)
    axes[0].set(xlabel="beta", ylabel="MIG")
    axes[1].set(xlabel="beta", ylabel="TC (nats, full-dataset)", yscale="log")
    axes[2].set(xlabel="TC (nats)", ylabel="MIG (sampled)")
    for ax in axes:
        ax.legend(fontsize=7)
    ctx.save_figure(fig, "mig_tc.png")


def plot_traversals(ctx, panels, values, image_size: int) -> None:
    """`panels`: `[(title, images (dims, steps, pixels), dims, per-dim KL)]`, one mosaic each."""
    plt = _pyplot()
    if plt is None:  # pragma: no cover
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, imgs, dims, kl) in zip(axes[0], panels, strict=True):
        n, s = imgs.shape[:2]
        tiles = imgs.reshape(n, s, image_size, image_size)
        mosaic = np.ones((n * (image_size + 1), s * (image_size + 1)))
        for i in range(n):
            for j in range(s):
                y, x = i * (image_size + 1), j * (image_size + 1)
                mosaic[y : y + image_size, x : x + image_size] = tiles[i, j]
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
        ax.set_yticks([i * (image_size + 1) + image_size / 2 for i in range(n)])
        ax.set_yticklabels([f"z{d} ({k:.1f})" for d, k in zip(dims, kl, strict=True)], fontsize=7)
        ax.set_xticks([j * (image_size + 1) + image_size / 2 for j in range(s)])
        ax.set_xticklabels([f"{v:.1f}" for v in values], fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("latent traversals (rows: latents by KL in nats; columns: the swept value)")
    ctx.save_figure(fig, "traversals.png")
