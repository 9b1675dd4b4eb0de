"""Rerun the toy 2-D regression of `exploding_inverses` alone at the authors' scale (10,000
points, 40,000 full-batch Adam steps at 1e-4, logged every 200 steps) and write `toy.json`.
About 51 minutes on one core of the 2-core CPU (13 steps/s, both nf values as one vmapped
population, checkpointed every 60 s: rerun with the same OUT_DIR to resume).

Usage: `PYTHONPATH=. python experiments/data/exploding_toy_paper/run_toy.py [OUT_DIR]`
"""

import dataclasses
import json
import pathlib
import sys
import time

from experiments import exploding_inverses as ei
from experiments._context import Context

FIELDS = ("mean_error", "cond", "sigma_max", "sigma_min")


def main(out: pathlib.Path) -> None:
    cfg = dataclasses.replace(
        ei.SCALES["quick"], toy_n=10000, toy_steps=40000, toy_lr=1e-4, chunk=200
    )
    ctx = Context(cfg=cfg, scale="quick", seed=0, out_dir=out, checkpoint_every_s=60.0)
    start = time.time()
    toy = ei.toy_regression(cfg, ctx)
    result = {
        "config": {
            "toy_n": cfg.toy_n,
            "toy_steps": cfg.toy_steps,
            "toy_lr": cfg.toy_lr,
            "toy_depth": cfg.toy_depth,
            "chunk": cfg.chunk,
            "seed": 0,
            "toy_nf": list(cfg.toy_nf),
        },
        "wall_seconds": round(time.time() - start, 1),
        "logged_every_steps": cfg.chunk,
        "curves": {
            f"nf={k:g}": {f: v[:, i].tolist() for i, f in enumerate(FIELDS)} for k, v in toy.items()
        },
    }
    (out / "toy.json").write_text(json.dumps(result, separators=(",", ":")))
    plot(out / "toy.json", out / "toy.png")


def plot(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Both curves of `src` against the step, with the nf = 1e-6 floor sqrt(2 / nf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(src.read_text())
    every = d["logged_every_steps"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, v in d["curves"].items():
        steps = [i * every for i in range(len(v["cond"]))]
        axes[0].plot(steps, v["cond"], label=k)
        axes[1].plot(steps, v["mean_error"], label=k)
    axes[0].axhline(2**0.5 / 1e-3, color="gray", ls=":", label="sqrt(2/nf), nf=1e-6")
    axes[0].set_ylabel("cond(J) at the worst-reconstructed point")
    axes[1].set_ylabel("mean ||F^-1(F(x)) - x||")
    for a in axes:
        a.set_yscale("log")
        a.set_xlabel("Adam step")
        a.legend(fontsize=7)
    fig.suptitle(
        "toy 2-D regression, 24-step affine Glow, 10k points, lr 1e-4 (float32)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    here = pathlib.Path(__file__).parent
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else here)
