"""Neuro# (Vaezipoor et al., AAAI 2021): a GNN branching policy for an exact #SAT counter,
trained by evolution strategies to minimise decisions, against VSADS and the TD score.

Two parts. (1) An ES run on one family (`family`: elementary cellular-automaton reversal
cell(R, n, r) at quick scale, or the grid world grid(size, T)): train on the smallest size,
evaluate on held-out instances of the same and a larger size. (2) The committed grid policy
(`grid_weights`, trained by this experiment at the paper's ES protocol on grid(10,5); the command
and its log are next to the weights) evaluated on held-out grid worlds of several horizons.
The policy runs in *root mode*: one GNN call per formula, its literal logits turned into a
dominating branching bias (`scores_to_branching`), so every decision takes the argmax literal of
the component without a per-decision round trip. Choice (not in the paper notes): the per-literal
time-step feature is on for cell too (Neuro# used it only for grid), because it is the cheap
lever the generator provides. bv_expr is not built.
"""

import dataclasses
import io
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments._api import Claim, Context, Experiment, Result
from experiments._io import atomic_write
from respax import sat

GRID_WEIGHTS = "experiments/data/neurosharp_grid/policy.npz"


@dataclasses.dataclass(frozen=True)
class Config:
    family: str = "cell"  # the ES run's family: "cell" or "grid"
    rule: int = 9
    train_size: tuple[int, int] = (10, 8)  # cell: (width, steps); grid: (size, horizon)
    large_size: tuple[int, int] = (12, 10)
    num_train: int = 4
    num_heldout: int = 6
    num_large: int = 4
    min_decisions: int = 100
    filter_cap: int = 20000
    iterations: int = 10
    pairs: int = 8
    sigma: float = 0.02
    learning_rate: float = 0.01
    decision_cap: int = 5000
    eval_cap: int = 20000
    time_feature: bool = True
    workers: int = 0  # 0: rollouts in this process; k: a pool of k spawned processes
    # Rollouts as Ray tasks instead (the `ray` extra of respax-sat; `workers` is then unused):
    # "" off, "local" starts a local Ray instance, else a cluster address ("auto", "ray://h:p").
    ray_address: str = ""
    filter: bool = True  # Neuro#'s filter (drop UNSAT / too easy / too hard); off for the probe
    policies: tuple[str, ...] = ("vsads", "td", "learned")
    grid_weights: str | None = GRID_WEIGHTS  # committed grid policy (None: skip part 2)
    grid_size: int = 10
    grid_horizons: tuple[int, ...] = (5, 8, 12)  # held-out horizons the committed policy sees
    grid_num_eval: tuple[int, ...] = (6, 6, 3)  # worlds per horizon
    grid_td_max_horizon: int = 8  # the TD baseline runs up to this horizon (it is slow there)
    grid_cap: int = 100_000  # decision cap of the grid evaluation (the authors' max_step)


SCALES = {
    "smoke": Config(
        train_size=(8, 4),
        large_size=(8, 5),
        num_train=2,
        num_heldout=2,
        num_large=2,
        min_decisions=5,
        iterations=2,
        pairs=2,
        decision_cap=2000,
        eval_cap=5000,
        grid_horizons=(5,),
        grid_num_eval=(2,),
    ),
    "quick": Config(
        large_size=(11, 9),
        num_heldout=5,
        num_large=3,
        grid_num_eval=(6, 4, 2),
        grid_td_max_horizon=5,
    ),
    "paper": Config(
        rule=49,
        train_size=(128, 110),
        large_size=(256, 200),
        num_train=5,
        num_heldout=100,
        num_large=100,
        iterations=1000,
        pairs=48,
        decision_cap=100_000,
        eval_cap=100_000,
        filter_cap=100_000,
        workers=8,
        grid_horizons=(5, 10, 12, 14),
        grid_num_eval=(100, 100, 100, 100),
        grid_td_max_horizon=14,
    ),
}


def _make(cfg, size):
    if cfg.family == "cell":
        return lambda s: sat.cellular_automaton(cfg.rule, *size, seed=s)
    if cfg.family == "grid":
        return lambda s: sat.grid_world(*size, seed=s)
    raise ValueError(f"family must be 'cell' or 'grid', got {cfg.family!r}")


def _sample(cfg, size, num, seed):
    make = _make(cfg, size)
    if not cfg.filter:
        return [make(seed + i) for i in range(num)]
    return sat.sample_filtered(
        make,
        sat.count,
        num,
        seed=seed,
        min_decisions=cfg.min_decisions,
        max_decisions=cfg.filter_cap,
        max_tries=300,
    )


def _evaluate(insts, how, cap, forward=None):
    rows = []
    for inst in insts:
        t0 = time.perf_counter()
        kw = {}
        if how == "learned":
            bias, pol = forward(inst)
            kw = {"variable_bias": bias, "polarity": pol}
        elif how == "td":
            kw = {"branching": "td"}
        info = sat.count(inst.cnf, max_decisions=cap, **kw)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "instance": inst.name,
                "policy": how,
                "decisions": info.decisions if info.status == "ok" else cap,
                "capped": info.status != "ok",
                "count": info.count,
                "cache_hits": info.cache_hits,
                "search_s": info.seconds,
                "wall_s": wall,
            }
        )
    return rows


def _mean(rows, key="decisions"):
    return float(np.mean([r[key] for r in rows]))


def _d4_reference(insts):
    try:
        import py_d4  # noqa: F401
    except ImportError:
        return None, "d4solver not installed (bench group)"
    return None, "d4 reference runs in benchmarks/counter_speed.py"


def run(cfg: Config, ctx: Context) -> Result:
    seed = int(jax.random.randint(ctx.key, (), 0, 10_000))
    train = _sample(cfg, cfg.train_size, cfg.num_train, seed)
    heldout = _sample(cfg, cfg.train_size, cfg.num_heldout, seed + 10_000)
    large = _sample(cfg, cfg.large_size, cfg.num_large, seed + 20_000)
    nf = 1 if cfg.time_feature else 0
    model = sat.NeuroSharpGNN(key=jax.random.fold_in(ctx.key, 1), num_features=nf)
    es_cfg = sat.ESConfig(cfg.pairs, cfg.sigma, cfg.learning_rate, 0.005, cfg.decision_cap)
    state0, unflatten = sat.es_init(model, es_cfg)
    logits_fn = sat.make_logits_fn(unflatten)
    forms = [(i.cnf, i.time_step if nf else None) for i in train]
    if cfg.ray_address:
        executor = sat.ray_executor(None if cfg.ray_address == "local" else cfg.ray_address)
    elif cfg.workers:
        executor = sat.process_pool(cfg.workers)
    else:
        executor = sat.SerialExecutor()

    def step(carry, start):
        st, hist = carry
        st, stats = sat.es_step(
            st, forms, logits_fn, es_cfg, executor, key=jax.random.fold_in(ctx.key, 100 + start)
        )
        ctx.log(f"ES iteration {start}: {stats}")
        return st, hist.at[start].set(stats["decisions_center"])

    t0 = time.perf_counter()
    hist0 = jnp.zeros(cfg.iterations)
    state, hist = ctx.loop("es", (state0, hist0), step, cfg.iterations)
    train_s = time.perf_counter() - t0
    executor.shutdown()

    def forward_of(flat):
        def fwd(inst):
            g = sat.literal_clause_graph(inst.cnf, inst.time_step if nf else None)
            lg = np.asarray(logits_fn(flat[None], g))[0]
            return sat.scores_to_branching(lg, inst.cnf.num_vars)

        return fwd

    _save_policy(ctx.out_dir / "policy.npz", state.flat, nf, cfg)
    cap = cfg.decision_cap
    init_train = _evaluate(train, "learned", cap, forward_of(state0.flat))
    final_train = _evaluate(train, "learned", cap, forward_of(state.flat))
    rows = {}
    for set_name, insts in (("heldout", heldout), ("large", large)):
        for how in cfg.policies:
            fwd = forward_of(state.flat) if how == "learned" else None
            rows[(set_name, how)] = _evaluate(insts, how, cfg.eval_cap, fwd)
    grid_rows, grid_note = _grid_part(cfg, ctx)
    logs = init_train + final_train + [r for v in rows.values() for r in v]
    logs += [r for v in grid_rows.values() for r in v]
    atomic_write(ctx.out_dir / "instances.json", json.dumps(logs, indent=1))

    d_init, d_final = _mean(init_train), _mean(final_train)
    reduction = 1 - d_final / d_init
    ratio = {
        s: _mean(rows[(s, "vsads")]) / _mean(rows[(s, "learned")]) for s in ("heldout", "large")
    }
    ratio_td = {
        s: _mean(rows[(s, "vsads")]) / _mean(rows[(s, "td")]) if (s, "td") in rows else float("nan")
        for s in ("heldout", "large")
    }
    wall_ratio = {
        s: _mean(rows[(s, "vsads")], "wall_s") / _mean(rows[(s, "learned")], "wall_s")
        for s in ("heldout", "large")
    }
    all_rows = rows | grid_rows
    counts_agree = all(
        a["count"] == b["count"]
        for k, v in all_rows.items()
        for a, b in zip(all_rows[(k[0], "vsads")], v)
        if not (a["capped"] or b["capped"])
    )
    grid_ratio = {
        s: _mean(grid_rows[(s, "vsads")]) / _mean(grid_rows[(s, "learned")])
        for s, h in grid_rows
        if h == "learned"
    }
    grid_capped = {s: sum(r["capped"] for r in grid_rows[(s, "vsads")]) for s in grid_ratio}
    grid_wall = {
        s: _mean(grid_rows[(s, "vsads")], "wall_s") / _mean(grid_rows[(s, "learned")], "wall_s")
        for s in grid_ratio
    }
    wall_ratio_all = wall_ratio | grid_wall
    ratio_all = ratio | grid_ratio
    small = f"grid({cfg.grid_size},{cfg.grid_horizons[0]})" if cfg.grid_horizons else None
    big = [s for s in grid_ratio if s != small and int(s.split(",")[1][:-1]) >= 12]
    d4, d4_reason = _d4_reference(large)
    quick = ctx.scale != "smoke"
    claims = [
        Claim(
            "a short ES run lowers the learned policy's training-set decisions by >= 20% vs its "
            "initial (random) weights",
            scale="quick",
            paper="Neuro# trains by ES to minimise decisions (no per-iteration curve known)",
            ours=f"{d_init:.0f} -> {d_final:.0f} ({100 * reduction:.0f}% fewer)",
            holds=bool(reduction >= 0.2) if quick else None,
            reason="" if quick else "smoke scale runs 2 ES iterations",
        ),
        Claim(
            f"learned policy uses fewer decisions than VSADS on held-out and larger {cfg.family} "
            "instances",
            scale="quick",
            paper="10-13.5x on cell(49,192..348) (authors' logs); 1.3-2x on small cell sets",
            ours=f"held-out {ratio['heldout']:.1f}x, larger {ratio['large']:.1f}x "
            f"(TD score: {ratio_td['heldout']:.1f}x, {ratio_td['large']:.1f}x)",
            holds=bool(min(ratio.values()) > 1.0) if quick else None,
            reason=f"{_set_name(cfg, cfg.train_size)} / {_set_name(cfg, cfg.large_size)}, "
            "not the paper's sizes",
        ),
        Claim(
            ">= 10x fewer decisions than VSADS on cell(49,256,200)",
            scale="paper",
            paper="13.5x (30,818 -> 2,277 mean decisions)",
            ours=None,
            holds=None,
            reason="paper scale not run here (1000 ES iterations x 480 rollouts)",
        ),
        Claim(
            ">= 2x fewer decisions than VSADS on held-out grid instances (committed weights)",
            scale="quick",
            paper="2.9x on grid(10,5); 37x on grid(10,10) (authors' logs)",
            ours=f"{small}: {grid_ratio[small]:.1f}x" if small in grid_ratio else None,
            holds=bool(grid_ratio[small] >= 2) if quick and small in grid_ratio else None,
            reason=grid_note or ("" if quick else "smoke scale"),
        ),
        Claim(
            ">= 35x fewer decisions than VSADS on grid(10,12)-(12,14) (committed weights)",
            scale="paper",
            paper=">= 36-71x (VSADS capped at 100k decisions)",
            ours=(
                ", ".join(
                    f"{s}: {'>=' if grid_capped[s] else ''}{grid_ratio[s]:.1f}x "
                    f"(VSADS capped {grid_capped[s]}/{len(grid_rows[(s, 'vsads')])})"
                    for s in big
                )
                or None
            ),
            holds=bool(min(grid_ratio[s] for s in big) >= 35) if big else None,
            reason=grid_note
            or (
                ", ".join(f"{len(grid_rows[(s, 'vsads')])} worlds of {s}" for s in big)
                + " at this scale (the authors' sets: 99-198); the ratio is a lower bound where "
                "VSADS hits the cap"
                if big
                else "no horizon >= 12 evaluated at this scale"
            ),
        ),
        Claim(
            "wall-clock faster than VSADS where decisions drop >= 10x (policy cost included)",
            scale="quick",
            paper="faster only where decisions drop >= 10x (cell 192/256/348, grid >= (10,12))",
            ours="VSADS/learned wall-clock: "
            + ", ".join(f"{s} {wall_ratio_all[s]:.2f}x" for s in wall_ratio_all),
            holds=(
                bool(all(wall_ratio_all[s] > 1 for s in ratio_all if ratio_all[s] >= 10))
                if quick and any(r >= 10 for r in ratio_all.values())
                else None
            ),
            reason="" if any(r >= 10 for r in ratio_all.values()) else "no set with >= 10x savings",
        ),
    ]
    metrics = {
        "train_decisions_initial": d_init,
        "train_decisions_final": d_final,
        "train_reduction": reduction,
        "es_center_decisions": np.asarray(hist),
        "es_seconds": train_s,
        "parameters": sat.parameter_count(model),
        "decisions_mean": {f"{s}/{h}": _mean(v) for (s, h), v in rows.items()},
        "wall_s_mean": {f"{s}/{h}": _mean(v, "wall_s") for (s, h), v in rows.items()},
        "vsads_over_learned": ratio,
        "vsads_over_td": ratio_td,
        "counts_agree": counts_agree,
        "grid_vsads_over_learned": grid_ratio,
        "grid_vsads_capped": grid_capped,
        "grid_decisions_mean": {f"{s}/{h}": _mean(v) for (s, h), v in grid_rows.items()},
        "grid_wall_s_mean": {f"{s}/{h}": _mean(v, "wall_s") for (s, h), v in grid_rows.items()},
        "d4_reference": d4,
        "d4_reference_reason": d4_reason,
    }
    _plot(ctx, hist, all_rows)
    report = (
        f"Trained on {cfg.num_train} {_set_name(cfg, cfg.train_size)} instances for "
        f"{cfg.iterations} ES iterations ({2 * cfg.pairs} perturbations each, {train_s:.0f} s; "
        f"weights: policy.npz). Root-mode policy (one GNN call per formula). Committed grid "
        f"policy: {grid_note or cfg.grid_weights}. Counts of all policies agree: "
        f"{counts_agree}. Per-instance logs: instances.json."
    )
    return Result(metrics=metrics, claims=claims, report=report)


def _set_name(cfg, size):
    return f"cell({cfg.rule},{size[0]},{size[1]})" if cfg.family == "cell" else f"grid{size}"


def _save_policy(path: pathlib.Path, flat, num_features: int, cfg: Config) -> None:
    """The ES run's final weights with what produced them (written atomically)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        flat=np.asarray(flat, np.float32),
        num_features=num_features,
        family=cfg.family,
        train_size=np.asarray(cfg.train_size),
        iterations=cfg.iterations,
    )
    atomic_write(path, buf.getvalue())


def _load_policy(path: str):
    """Committed weights -> (logits_fn over flats, flat, num_features); checks the shape."""
    with np.load(path) as z:
        flat, nf = jnp.asarray(z["flat"]), int(z["num_features"])
    model = sat.NeuroSharpGNN(key=jax.random.PRNGKey(0), num_features=nf)
    state, unflatten = sat.es_init(model, sat.ESConfig())
    if state.flat.shape != flat.shape:
        raise ValueError(
            f"grid_weights {path!r}: {flat.size} parameters, the GNN with {nf} feature(s) has "
            f"{state.flat.size}"
        )
    return sat.make_logits_fn(unflatten), flat, nf


def _grid_eval_set(cfg, horizon, num):
    """Held-out grid worlds (seeds from 100,000, disjoint from any training run's): keep the
    satisfiable ones (by the dynamic programme) on which VSADS takes >= min_decisions (a run
    capped there: it finishes below the cap only if it needs fewer); VSADS runs capped at
    `grid_cap` later stay in the set scored at the cap, as in the authors' logs."""
    out = []
    for s in range(100_000, 100_000 + 50 * num):
        if sat.grid_world_trajectories(cfg.grid_size, horizon, seed=s) == 0:
            continue
        inst = sat.grid_world(cfg.grid_size, horizon, seed=s)
        if sat.count(inst.cnf, max_decisions=cfg.min_decisions).status == "ok":
            continue  # too easy
        out.append(inst)
        if len(out) == num:
            return out
    raise ValueError(f"only {len(out)} grid({cfg.grid_size},{horizon}) worlds passed the filter")


def _grid_part(cfg, ctx):
    """Part 2: the committed grid policy against VSADS and TD on held-out horizons."""
    if cfg.grid_weights is None or not cfg.grid_horizons:
        return {}, "not run (grid_weights=None)"
    path = pathlib.Path(cfg.grid_weights)
    if not path.is_absolute() and not path.exists():  # relative to the repository root
        path = pathlib.Path(__file__).resolve().parent.parent / path
    if not path.exists():
        return {}, f"no committed weights at {cfg.grid_weights}"
    logits_fn, flat, nf = _load_policy(str(path))

    def fwd(inst):
        g = sat.literal_clause_graph(inst.cnf, inst.time_step if nf else None)
        return sat.scores_to_branching(np.asarray(logits_fn(flat[None], g))[0], inst.cnf.num_vars)

    if len(cfg.grid_num_eval) != len(cfg.grid_horizons):
        raise ValueError(
            f"grid_num_eval {cfg.grid_num_eval} must give one count per horizon of "
            f"grid_horizons {cfg.grid_horizons}"
        )
    rows = {}
    for h, num in zip(cfg.grid_horizons, cfg.grid_num_eval):
        name = f"grid({cfg.grid_size},{h})"
        insts = _grid_eval_set(cfg, h, num)
        fwd(insts[0])  # compile this shape bucket once, outside the timed runs
        for how in cfg.policies:
            if how == "td" and h > cfg.grid_td_max_horizon:
                continue
            rows[(name, how)] = _evaluate(insts, how, cfg.grid_cap, fwd)
            ctx.log(f"{name} {how}: mean decisions {_mean(rows[(name, how)]):.0f}")
    return rows, ""


def _plot(ctx, hist, rows):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(np.asarray(hist), marker="o")
    axes[0].set(xlabel="ES iteration", ylabel="mean decisions (train)", title="training")
    for ax, key in ((axes[1], "decisions"), (axes[2], "wall_s")):
        labels, vals = [], []
        for (s, h), v in rows.items():
            labels.append(f"{s}\n{h}")
            vals.append(_mean(v, key))
        ax.bar(range(len(vals)), vals)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(key)
    ctx.save_figure(fig, "decisions_time.png")


def paper_probe(cfg: Config) -> Config:
    """Paper shapes (cell(49,128,110) / (49,256,200)), one instance each, 200-decision caps,
    no filter and no TD baseline (networkx's min-fill-in on 51k variables takes minutes); the
    committed grid policy on one grid(10,14) world with the same cap."""
    return dataclasses.replace(
        cfg,
        iterations=1,
        pairs=1,
        num_train=1,
        num_heldout=1,
        num_large=1,
        workers=0,
        decision_cap=200,
        eval_cap=200,
        filter=False,
        policies=("vsads", "learned"),
        grid_horizons=(14,),
        grid_num_eval=(1,),
        grid_cap=200,
    )


EXPERIMENT = Experiment(
    name="neurosharp",
    title="Neuro#: learned #SAT branching trained by evolution strategies (Vaezipoor et al. 2021)",
    config=Config,
    scales=SCALES,
    run=run,
    paper_probe=paper_probe,
)
