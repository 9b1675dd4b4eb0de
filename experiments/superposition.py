"""Toy Models of Superposition (Elhage et al. 2022): sparsity sweep, phase diagrams, feature
geometry, correlated features and computation in superposition.

Every part trains many independent toy models ("instances") at once: the single-instance training
of `respax.interp.superposition` is `jax.vmap`-ed over (density, importance, seed) and the instance
axis is sharded over `ctx.mesh`; each part is one `ctx.loop`, so runs checkpoint and resume.

1. Superposition vs sparsity: n=20 features, m=5 dims, importance 0.7^i, densities 1-S in
   {1, .3, .1, .03, .01, .003, .001}, linear and ReLU-output models.
2. Phase diagrams: 2 features in 1 dim and 3 in 2; the last feature's relative importance over
   10^[-1, 1] and the density over 10^[0, -2]; the extra feature is classified (not represented /
   dedicated / superposition) and compared with the analytic comparison of hand-built solutions
   (`superposition.analytic_phase`).
3. Geometry: n=200, m=20, uniform importance, densities p = 20^(-k/19); dimensions per feature D*
   and per-feature dimensionalities D_i, density peaks at the uniform-polytope fractions.
4. Correlated / anti-correlated feature pairs (n=4, m=2).
5. Computation in superposition: y = |x|, y' = ReLU(W2 ReLU(W1 x) + b), against the best loss any
   solution without superposition can reach (`superposition.monosemantic_abs_loss_bound`).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments._api import Experiment, Result, population_loop
from experiments._superposition_claims import (
    SWEEP_DECAY,
    SWEEP_FEATURES,
    SWEEP_HIDDEN,
    abs_claims,
    correlated_claims,
    geometry_claims,
    phase_claims,
    sweep_claims,
)
from experiments._superposition_plots import (
    plot_abs,
    plot_correlated,
    plot_geometry,
    plot_phases,
    plot_sweep,
)
from respax.interp import superposition as sp

GEOMETRY_LEVELS = 20  # p = 20^(-k/19), k = 0..19, as in the paper
CORRELATED_DENSITY_EXPONENTS = (0.5, 0.625, 0.75, 0.875, 1.0)  # p = 400^-e: 5 % ... 0.25 %


@dataclasses.dataclass(frozen=True)
class Config:
    batch_size: int = 1024
    chunk: int = 250  # steps per jitted call (every *_steps must be a multiple)
    eval_batch: int = 65536  # examples for the held-out loss estimates
    # 1. superposition vs sparsity (n=20, m=5, I=0.7^i), linear and ReLU output
    sweep_densities: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    sweep_seeds: int = 2
    sweep_steps: int = 5000
    # 2. phase diagrams (2 in 1 and 3 in 2): grid x grid cells, seeds per cell
    phase_grid: int = 8
    phase_seeds: int = 2
    phase_steps_2in1: int = 5000  # near relative importance 1 the dense 2-in-1 models need ~5k
    phase_steps_3in2: int = 2500
    # 3. geometry (n=200, m=20, I=1): every `geometry_stride`-th of the 20 density levels
    geometry_features: int = 200
    geometry_hidden: int = 20
    geometry_stride: int = 2
    geometry_seeds: int = 1
    geometry_steps: int = 2000
    # 4. correlated / anti-correlated pairs (n=4, m=2, I=1)
    correlated_seeds: int = 8
    correlated_steps: int = 4000
    # 5. computation in superposition (target |x|)
    abs_features: int = 20
    abs_hidden: int = 10
    abs_importance_decay: float = 1.0  # I_i = decay^i (1.0: uniform)
    abs_densities: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    abs_seeds: int = 1
    abs_steps: int = 3000


SCALES = {
    "smoke": Config(
        batch_size=64,
        chunk=20,
        eval_batch=1024,
        sweep_densities=(1.0, 0.01),
        sweep_seeds=1,
        sweep_steps=40,
        phase_grid=2,
        phase_seeds=1,
        phase_steps_2in1=40,
        phase_steps_3in2=40,
        geometry_features=40,
        geometry_hidden=4,
        geometry_stride=10,
        geometry_steps=40,
        correlated_seeds=1,
        correlated_steps=40,
        abs_features=8,
        abs_hidden=4,
        abs_densities=(1.0, 0.01),
        abs_steps=40,
    ),
    "quick": Config(),
    "paper": Config(
        chunk=500,
        eval_batch=262144,
        sweep_seeds=4,
        sweep_steps=10_000,
        phase_grid=40,
        phase_seeds=4,
        phase_steps_2in1=10_000,
        phase_steps_3in2=10_000,
        geometry_stride=1,
        geometry_steps=10_000,
        correlated_seeds=16,
        correlated_steps=10_000,
        abs_features=100,
        abs_hidden=40,
        abs_steps=10_000,
    ),
}


# ----------------------------------------------------------------------------------------------
# Training many instances at once.


def train_instances(ctx, name, config, importance, probability, steps, chunk, key):
    """Train one `ToyConfig` per row of (importance [I, n], probability [I] or [I, n]).

    A population over the instances, sharded over `ctx.mesh`. Instance i's keys are
    `fold_in(key, i)`. Returns the host (numpy) parameters of the I instances and their
    last-chunk mean training loss.
    """
    count = len(importance)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(count))
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    states = jax.jit(jax.vmap(lambda k: sp.init_train_state(k, config)))(init_keys)
    members = {
        "data_key": data_keys,
        "importance": np.asarray(importance, np.float32),
        "probability": np.asarray(probability, np.float32),
    }

    def one(state, member, start):
        train_state, losses = sp.train_steps(
            state[0],
            member["data_key"],
            start,
            chunk,
            member["importance"],
            member["probability"],
            config,
        )
        return train_state, jnp.mean(losses)

    train_state, last_loss = population_loop(
        ctx,
        name,
        one,
        (states, jnp.zeros((count,), jnp.float32)),
        members,
        steps,
        chunk=chunk,
        desc=f"{name} ({count} models)",
    )
    return train_state.params, last_loss


def _chunk(cfg: Config, steps: int) -> int:
    chunk = min(cfg.chunk, steps) if steps else 1
    if steps % chunk:
        raise ValueError(f"steps={steps} must be a multiple of chunk={chunk}")
    return chunk


def eval_losses(params, config, importance, probability, eval_batch, key):
    """Held-out loss of every instance (one fresh batch of `eval_batch` examples each)."""

    def one(p, imp, prob, k):
        x = sp.sample_batch(
            k,
            eval_batch,
            config.n_features,
            prob,
            config.correlation,
            signed=config.model == "abs",
        )
        return sp.reconstruction_loss(p, x, imp, config.model)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(importance)))
    # at most ~2^24 sampled entries at once (the paper-scale phase grid has 6400 instances)
    per_call = max(1, 2**24 // (eval_batch * config.n_features))
    fn = jax.jit(lambda args: jax.lax.map(lambda a: one(*a), args, batch_size=per_call))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return np.asarray(fn((params, jnp.asarray(importance), jnp.asarray(probability), keys)))


_vmetric = {
    name: jax.jit(jax.vmap(fn))
    for name, fn in {
        "norms": sp.feature_norms,
        "interference": sp.superposition_interference,
        "dstar": sp.dimensions_per_feature,
        "dims": sp.feature_dimensionality,
        "classes": sp.classify_features,
        "pair_cos": sp.pair_cosines,
    }.items()
}


def metric(name, W):
    return np.asarray(_vmetric[name](jnp.asarray(W)))


# ----------------------------------------------------------------------------------------------
# 1. Superposition vs sparsity.


def part_sweep(cfg: Config, ctx):
    n, m = SWEEP_FEATURES, SWEEP_HIDDEN
    densities = np.asarray(cfg.sweep_densities, np.float32)
    d, s = len(densities), cfg.sweep_seeds
    importance = np.tile(SWEEP_DECAY ** np.arange(n, dtype=np.float32), (d * s, 1))
    probability = np.tile(densities, s)  # instance = seed * d + density index
    chunk = _chunk(cfg, cfg.sweep_steps)
    out = {}
    for index, model in enumerate(("linear", "relu")):
        config = sp.ToyConfig(n, m, model=model, batch_size=cfg.batch_size)
        params, _ = train_instances(
            ctx,
            f"sweep_{model}",
            config,
            importance,
            probability,
            cfg.sweep_steps,
            chunk,
            jax.random.fold_in(ctx.key, 100 + index),
        )
        W = params.W.reshape(s, d, n, m)
        norms = metric("norms", params.W).reshape(s, d, n)
        out[model] = {
            "W": W,
            "norms": norms,
            "interference": metric("interference", params.W).reshape(s, d, n),
            "dstar": metric("dstar", params.W).reshape(s, d),
            "represented": (norms > 0.5).sum(-1),  # [seeds, densities]
        }
    return out


# ----------------------------------------------------------------------------------------------
# 2. Phase diagrams.


def phase_axes(grid: int):
    return np.logspace(-1, 1, grid), np.logspace(0, -2, grid)  # importance (cols), density (rows)


def part_phase(cfg: Config, ctx, n: int):
    g, s = cfg.phase_grid, cfg.phase_seeds
    rel, dens = phase_axes(g)
    R, P = np.meshgrid(rel, dens)  # [density row, importance col]
    r_flat, p_flat = np.tile(R.ravel(), s), np.tile(P.ravel(), s)
    importance = np.ones((len(r_flat), n), np.float32)
    importance[:, -1] = r_flat
    config = sp.ToyConfig(n, n - 1, batch_size=cfg.batch_size)
    steps = cfg.phase_steps_2in1 if n == 2 else cfg.phase_steps_3in2
    params, _ = train_instances(
        ctx,
        f"phase_{n}in{n - 1}",
        config,
        importance,
        p_flat,
        steps,
        _chunk(cfg, steps),
        jax.random.fold_in(ctx.key, 200 + n),
    )
    losses = eval_losses(
        params, config, importance, p_flat, cfg.eval_batch, jax.random.fold_in(ctx.key, 300 + n)
    ).reshape(s, g, g)
    classes = metric("classes", params.W)[:, -1].reshape(s, g, g)
    best = np.take_along_axis(classes, losses.argmin(0)[None], 0)[0]
    theory = np.asarray(sp.analytic_phase(R, P, n))
    return {
        "classes": classes,
        "best": best,
        "theory": theory,
        "agreement": float((best == theory).mean()),
        "agreement_per_seed": [float((c == theory).mean()) for c in classes],
        "dense_row_superposition": int((best[0] == sp.SUPERPOSITION).sum()),
    }


# ----------------------------------------------------------------------------------------------
# 3. Geometry.


def geometry_densities(cfg: Config):
    k = np.arange(0, GEOMETRY_LEVELS, cfg.geometry_stride)
    return 20.0 ** (-k / (GEOMETRY_LEVELS - 1))


def part_geometry(cfg: Config, ctx):
    n, m = cfg.geometry_features, cfg.geometry_hidden
    p = geometry_densities(cfg)
    probability = np.tile(p, cfg.geometry_seeds)
    importance = np.ones((len(probability), n), np.float32)
    config = sp.ToyConfig(n, m, batch_size=cfg.batch_size)
    params, _ = train_instances(
        ctx,
        "geometry",
        config,
        importance,
        probability,
        cfg.geometry_steps,
        _chunk(cfg, cfg.geometry_steps),
        jax.random.fold_in(ctx.key, 400),
    )
    s, levels = cfg.geometry_seeds, len(p)
    norms = metric("norms", params.W).reshape(s, levels, n)
    dims = metric("dims", params.W).reshape(s, levels, n)
    dstar = metric("dstar", params.W).reshape(s, levels)
    learned = dims[norms > 0.5]
    min_count = sp.scaled_min_count(learned.size)
    is_peak, narrow, flank = (np.asarray(a) for a in sp.density_peaks(learned, min_count=min_count))
    return {
        "density": p,
        "dstar": dstar,
        "dims": dims,
        "norms": norms,
        "learned": learned,
        "min_count": min_count,
        "is_peak": is_peak,
        "narrow": narrow,
        "flank": flank,
    }


# ----------------------------------------------------------------------------------------------
# 4. Correlated and anti-correlated pairs.


def part_correlated(cfg: Config, ctx):
    p = 400.0 ** -np.asarray(CORRELATED_DENSITY_EXPONENTS)
    probability = np.tile(p, cfg.correlated_seeds)
    importance = np.ones((len(probability), 4), np.float32)
    out = {"density": p}
    for index, kind in enumerate(("correlated", "anticorrelated")):
        config = sp.ToyConfig(4, 2, correlation=kind, batch_size=cfg.batch_size)
        params, _ = train_instances(
            ctx,
            f"pairs_{kind}",
            config,
            importance,
            probability,
            cfg.correlated_steps,
            _chunk(cfg, cfg.correlated_steps),
            jax.random.fold_in(ctx.key, 500 + index),
        )
        out[kind] = {
            "W": params.W.reshape(cfg.correlated_seeds, len(p), 4, 2),
            "cos": metric("pair_cos", params.W).reshape(cfg.correlated_seeds, len(p), 2),
            "norms": metric("norms", params.W).reshape(cfg.correlated_seeds, len(p), 4),
        }
    return out


# ----------------------------------------------------------------------------------------------
# 5. Computation in superposition.


def part_abs(cfg: Config, ctx):
    n, m = cfg.abs_features, cfg.abs_hidden
    densities = np.asarray(cfg.abs_densities, np.float32)
    probability = np.tile(densities, cfg.abs_seeds)
    imp = (cfg.abs_importance_decay ** np.arange(n)).astype(np.float32)
    importance = np.tile(imp, (len(probability), 1))
    config = sp.ToyConfig(n, m, model="abs", batch_size=cfg.batch_size)
    params, _ = train_instances(
        ctx,
        "abs",
        config,
        importance,
        probability,
        cfg.abs_steps,
        _chunk(cfg, cfg.abs_steps),
        jax.random.fold_in(ctx.key, 600),
    )
    losses = eval_losses(
        params, config, importance, probability, cfg.eval_batch, jax.random.fold_in(ctx.key, 601)
    ).reshape(cfg.abs_seeds, len(densities))
    bound_fn = jax.vmap(sp.monosemantic_abs_loss_bound, in_axes=(None, 0, None))
    bound = np.asarray(jax.jit(bound_fn, static_argnums=2)(imp, jnp.asarray(densities), m))
    W1 = np.abs(params.W1).reshape(cfg.abs_seeds, len(densities), n, m)
    strongest = W1.max(2, keepdims=True)
    features_per_neuron = ((W1 > 0.5 * strongest) & (strongest > 0.1)).sum(2)
    alive = strongest[:, :, 0, :] > 0.1
    polysemantic = ((features_per_neuron >= 2) & alive).sum(-1) / np.maximum(alive.sum(-1), 1)
    return {
        "density": densities,
        "loss": losses,
        "bound": bound,
        "ratio": losses / bound,
        "polysemantic": polysemantic,
        "W1": params.W1.reshape(cfg.abs_seeds, len(densities), n, m),
    }


# ----------------------------------------------------------------------------------------------


def run(cfg: Config, ctx) -> Result:
    for field in dataclasses.fields(cfg):
        if field.name.endswith("_steps") or "_steps_" in field.name:
            _chunk(cfg, getattr(cfg, field.name))
    seconds = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        seconds[name] = time.perf_counter() - start
        ctx.log(f"{name}: {seconds[name]:.1f} s")
        return out

    sweep = timed("sweep", part_sweep, cfg, ctx)
    phases = {n: timed(f"phase {n}-in-{n - 1}", part_phase, cfg, ctx, n) for n in (2, 3)}
    geo = timed("geometry", part_geometry, cfg, ctx)
    pairs = timed("correlated pairs", part_correlated, cfg, ctx)
    ab = timed("computation", part_abs, cfg, ctx)

    claims, metrics = [], {}
    for key, (c, mtr) in {
        "sweep": sweep_claims(cfg, sweep),
        "phase": phase_claims(cfg, phases),
        "geometry": geometry_claims(cfg, geo),
        "correlated": correlated_claims(cfg, pairs),
        "computation": abs_claims(cfg, ab),
    }.items():
        claims += c
        metrics[key] = mtr

    start = time.perf_counter()
    plot_sweep(cfg, sweep, ctx)
    plot_phases(cfg, phases, ctx)
    plot_geometry(cfg, geo, ctx)
    plot_correlated(cfg, pairs, ctx)
    plot_abs(cfg, ab, ctx)
    seconds["plots"] = time.perf_counter() - start
    # wall times go into the report only: metrics must not depend on the machine
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    return Result(
        metrics=metrics,
        claims=claims,
        report=report_text(cfg) + f"\nWall time of this run by part: {timing}.\n",
    )


def report_text(cfg: Config) -> str:
    return f"""\
Toy models trained with AdamW (lr 1e-3 constant; weight decay 0.01, PyTorch's default that the
paper's notebook used, not optax's 1e-4; batch {cfg.batch_size}), x_i ~ U[0,1) with probability
1-S. All instances of a part train at once (vmap over density/importance/seed, the instance axis
sharded over the devices). Held-out losses use {cfg.eval_batch} fresh examples per instance.

- **Sparsity sweep** (n=20, m=5, I=0.7^i, {cfg.sweep_seeds} seed(s), {cfg.sweep_steps} steps; the
  paper used 10k): a feature counts as represented when ||W_i|| > 0.5. Plots: W^T W and
  per-feature norms coloured by superposition, seed 0.
- **Phase diagrams** ({cfg.phase_grid}x{cfg.phase_grid} grid, {cfg.phase_seeds} seed(s),
  {cfg.phase_steps_2in1} steps for 2-in-1, {cfg.phase_steps_3in2} for 3-in-2): the extra feature
  is *not represented* if ||W_n|| < 0.5, *dedicated* if its superposition sum_j!=n (W_n^ . W_j)^2
  < 0.25, else *superposition*; per cell we use the seed with the lowest held-out loss. Dense 2-in-1
  models with relative importance near 1 pass through a transient where both features share one
  direction (classified as superposition); at 2.5k steps some are still there, by 5k few are.
  The analytic diagram compares the closed-form expected losses of hand-built solutions (drop the
  first feature, extra one dedicated; drop the extra feature; antipodal pair of two importance-1
  features, extra one dedicated; antipodal pair of a feature with the extra one; zero bias on the
  pairs) and takes the cheapest (`superposition.analytic_phase`). It has no triangle candidate for
  3-in-2 and ignores the learnable biases, so it says *dedicated* for every sparse 3-in-2 cell with
  relative importance > 1 where trained models often form a triangle (superposition); agreement is
  therefore lower for 3-in-2.
- **Geometry** (n=200, m=20, I=1, levels p=20^(-k/19), every {cfg.geometry_stride}-th k,
  {cfg.geometry_steps} steps; the paper: all 20 levels, 10k steps): D* = m/||W||_F^2 and
  D_i = ||W_i||^2 / sum_j (W_i^ . W_j)^2 over features with ||W_i|| > 0.5. With uniform importance
  dense models spread a 20-dim projection over all 200 features (norms ~0.3), so the densest levels
  contribute no learned features and no peak at 1. Peak rule: >= N features within +-0.005 of a
  fraction and a density there >= 2x the density in the flanks 0.005 < |D-f| <= 0.0125; N = 10 was
  stated for 200 features x 20 levels and is scaled by the number of learned features (10 per
  4000, at least 3).
- **Correlated pairs** (n=4, m=2, I=1, p=400^-[0.5..1], {cfg.correlated_seeds} seeds per density,
  {cfg.correlated_steps} steps): every feature has marginal probability p (anti-correlated pairs are
  on w.p. 2p, then exactly one feature of the pair). A pair is antipodal when the cosine of its two
  features is < -0.9, orthogonal when |cos| < 0.2.
- **Computation in superposition** (target |x|, x_i ~ U[-1,1) w.p. p; n={cfg.abs_features},
  m={cfg.abs_hidden} neurons, I={cfg.abs_importance_decay}^i, {cfg.abs_steps} steps): the held-out
  loss against the least loss any solution without superposition reaches (each neuron reads one
  feature, at most 2 neurons per feature, closed-form per-feature errors, budget split by dynamic
  programming: `superposition.monosemantic_abs_loss_bound`). A neuron is polysemantic when >= 2
  features have |W1| above half of its largest one. Uniform importance, not ARENA's 0.8^i: with
  0.8^i (n=100, m=40) the models stayed 7-65x above that bound after 4k steps, i.e. they had not
  learned the low-importance features, and the comparison says nothing.
"""


def paper_probe(cfg: Config) -> Config:
    """The paper config with one step per stage (paper shapes: grids, levels, batch sizes)."""
    names = ("sweep_steps", "phase_steps_2in1", "phase_steps_3in2", "geometry_steps")
    steps = {f: 1 for f in names + ("correlated_steps", "abs_steps")}
    return dataclasses.replace(cfg, chunk=1, eval_batch=256, **steps)


EXPERIMENT = Experiment(
    name="superposition",
    title="Toy Models of Superposition (Elhage et al. 2022): sparsity, phase diagrams, geometry",
    config=Config,
    scales=SCALES,
    run=run,
    paper_probe=paper_probe,
)
