"""Implicit bias in overparameterized bilevel optimization (Vicol et al., ICML 2022).

Three findings, each a stage:

1. `quadratic`: an underdetermined quadratic bilevel problem (inner f = 1/2 w^T A w - w^T B u,
   outer F = 1/2 |C w - t|^2, so F(u, w*(u)) = 1/2 |M u - t|^2 with M = C A^{-1} B of shape
   m x p, p > m). Cold start with exact hypergradients from u0 = 0 converges to the minimum-norm
   solution u† = M^+ t; other algorithmic choices (warm start with an unrolled hypergradient, the
   Neumann K / unroll T approximations) land on other points. Run in float64.
2. `distill`: dataset distillation on scikit-learn digits (1 and 10 synthetic images per class,
   fixed labels, images initialised to Gaussian noise on the standardized pixel scale, a tanh MLP
   as inner model). Cold start (Alg. 1) re-solves the inner problem from the same fixed
   initialization at every outer step (T SGD steps); warm start (Alg. 2) carries the inner model
   and takes one SGD step per outer step. Both use the same hypergradient, the IFT with a
   K-term Neumann series (Alg. 3) at the inner iterate, so only the start differs. Evaluated:
   cold start (its own solution: the fixed init trained T steps on the final images), warm start
   (the carried model), and re-train (fresh random inits trained on the final images). Means and
   standard deviations over seeds (vmapped).
3. `oned`: a 1-D outer parameter. u selects a point on a ring of real training images (one ring
   per class, m images each): the synthetic set at u is one image per class, a Gaussian-kernel
   blend of the ring images nearest to position u. Warm start moves u with hypergradients while
   the inner model trains on the current 10 images; compared with fresh models trained on the 10
   images at the final u (and at every u on a grid).

The outer learning rate of every run is chosen from a small grid by the final outer objective
(the training loss; never by test accuracy), for each method separately.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax

from experiments._api import (
    Experiment,
    Result,
    grid,
    population_map,
    population_size,
    select_best,
    ungrid,
)
from experiments._bilevel_report import claims_of, dataset_id, metrics_of, plot_all, report_text
from experiments._data import load_digits, load_mnist_labeled
from respax.core import Neumann
from respax.implicit_diff import (
    BilevelConfig,
    FullUnroll,
    Implicit,
    bilevel_init,
    bilevel_optimize,
    bilevel_run,
    run_inner_optimizer,
)
from respax.testing import quadratic_bilevel_problem


@dataclasses.dataclass(frozen=True)
class Config:
    # 1. quadratic (float64)
    quad_inner_dim: int = 12
    quad_outer_dim: int = 30
    quad_outputs: int = 5
    quad_outer_steps: int = 4000
    quad_inner_steps: int = 200
    quad_neumann_ks: tuple[int, ...] = (1, 3, 10, 30)
    quad_unroll_ts: tuple[int, ...] = (1, 3, 10, 30)
    quad_warm_unroll_steps: int = 2
    # 2-3. data (shared): scikit-learn digits, or labelled 28x28 data from a user path when
    # `mnist_path` is set: a folder of the four standard IDX files (MNIST, or Fashion-MNIST as
    # Debian's dataset-fashion-mnist installs it), an IDX file or an npz; see
    # `experiments._data.load_mnist_labeled`
    mnist_path: str = ""
    seeds: int = 3
    hidden: int = 64
    train_size: int = 1200
    inner_lr: float = 0.5  # the 1-D stage's inner SGD lr (unrolled hypergradient, no series)
    retrain_steps: int = 300
    eval_inits: int = 4
    # 2. dataset distillation
    dd_images_per_class: tuple[int, ...] = (1, 10)
    dd_outer_steps: int = 2000
    dd_cold_inner_steps: int = 50
    dd_warm_inner_steps: int = 1
    # The inner SGD lr of distillation, also the Neumann step: the series converges only while
    # lr * lambda_max(inner Hessian) < 2, and full-batch SGD drives lambda_max toward 2 / lr (the
    # edge of stability). At lr 0.5 the cold start's series diverges at times (relative solve
    # residuals ~1e13 in the diagnostic row of the earlier 5-seed quick run); at 0.1 the worst
    # step of a run stays within a factor ~30 (at single steps; the tanh MLP's inner Hessian
    # need not be positive definite), with hypergradient norms below 1 (both reported).
    dd_inner_lr: float = 0.1
    # Hypergradients run, each for both starts: K-term Neumann series (K=1 is the one-step
    # approximation alpha * grad); the claims are judged for each.
    dd_neumann_terms: tuple[int, ...] = (20, 1)
    # A diagnostic run (no claims) of the first images/class and K at this larger inner lr, to
    # show what a divergent series does to each start (None: skip).
    dd_edge_inner_lr: float | None = 0.5
    dd_outer_lrs: tuple[float, ...] = (0.02, 0.2)
    # 3. 1-D outer parameter
    oned_ring: int = 20
    oned_width: float = 0.5
    oned_outer_steps: int = 1000
    oned_warm_inner_steps: int = 1
    oned_outer_lrs: tuple[float, ...] = (0.03, 0.1, 0.3)


SCALES = {
    "smoke": Config(
        quad_outer_steps=20,
        quad_inner_steps=10,
        quad_neumann_ks=(),
        quad_unroll_ts=(),
        seeds=2,
        hidden=16,
        train_size=300,
        retrain_steps=5,
        eval_inits=2,
        dd_images_per_class=(1,),
        dd_outer_steps=4,
        dd_cold_inner_steps=2,
        dd_neumann_terms=(2,),
        dd_edge_inner_lr=None,
        dd_outer_lrs=(0.1,),
        oned_ring=4,
        oned_outer_steps=4,
        oned_outer_lrs=(0.1,),
    ),
    # Quick: 3 seeds, 1,500 distillation steps, no edge-of-stability diagnostic (it has no claims;
    # paper scale runs it). With 5 seeds, 2,000 steps and the diagnostic the run took 360 s on an
    # unloaded 2-core CPU (quadratic 6 s; distillation 1/class 44 + 33 s, 10/class 136 + 73 s,
    # diagnostic 40 s; 1-D 28 s), twice the ~3-minute quick budget; 3 seeds and 1,500 steps took
    # 202 s with the same claims holding.
    "quick": Config(dd_outer_steps=1500, dd_edge_inner_lr=None),
    # Paper scale runs the tasks longer and with more seeds; for MNIST add
    # mnist_path=/path/to/mnist (the IDX folder, or mnist.npz) and e.g. train_size=10000.
    "paper": Config(seeds=8, hidden=128, dd_outer_steps=10000, oned_outer_steps=5000),
}


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ----------------------------------------------------------------------------------------------
# 1. quadratic


def _quadratic_order(quad: dict) -> dict:
    """The runs in a readable order (stage results come back with sorted keys)."""

    def key(name):
        number = int(name.rsplit("=", 1)[1]) if "=" in name else 0
        kinds = ("cold exact", "cold Neumann", "cold unroll", "warm exact", "warm unroll")
        return next(i for i, k in enumerate(kinds + ("",)) if name.startswith(k)), number

    return {n: quad[n] for n in sorted(quad, key=key)}


def _run_quadratic(cfg: Config, seed: int) -> dict:
    problem = quadratic_bilevel_problem(
        cfg.quad_inner_dim, cfg.quad_outer_dim, cfg.quad_outputs, seed=seed
    )
    inner, outer = problem.functions(jnp.float64)
    jac, t_np = problem.jacobian(), problem.target
    u_dagger = problem.min_norm_solution()
    outer_lr = 1.0 / np.linalg.norm(jac, 2) ** 2
    # Heavy-ball momentum keeps u0 + span(hypergradients), so the min-norm argument still holds.
    outer_opt = lambda scale=1.0: optax.sgd(scale * outer_lr, momentum=0.9)
    alpha = 1.0 / 4.0  # 1 / lambda_max(A)
    inner_opt = optax.sgd(alpha)
    u0, w0 = jnp.zeros(cfg.quad_outer_dim), jnp.zeros(cfg.quad_inner_dim)

    def cold_implicit(solve):
        return BilevelConfig(
            Implicit(solve),
            outer_opt(),
            inner_optimizer=inner_opt,
            num_inner_steps=cfg.quad_inner_steps,
        )

    runs = {"cold exact": cold_implicit(lx.Cholesky())}
    for k in cfg.quad_neumann_ks:
        runs[f"cold Neumann K={k}"] = cold_implicit(Neumann(k, alpha))
    for steps in cfg.quad_unroll_ts:
        runs[f"cold unroll T={steps}"] = BilevelConfig(FullUnroll(inner_opt, steps), outer_opt())
    runs["warm exact (1 inner step)"] = BilevelConfig(
        Implicit(lx.Cholesky()),
        outer_opt(0.02),
        warm_start=True,
        inner_optimizer=inner_opt,
        num_inner_steps=1,
    )
    runs[f"warm unroll T={cfg.quad_warm_unroll_steps}"] = BilevelConfig(
        FullUnroll(inner_opt, cfg.quad_warm_unroll_steps),
        outer_opt(0.1),
        warm_start=True,
    )
    out = {}
    for name, config in runs.items():
        state, history = jax.jit(
            lambda u0, w0, config=config: bilevel_optimize(
                config, outer, inner, u0, w0, cfg.quad_outer_steps
            )
        )(u0, w0)
        u = np.asarray(state.outer_params)
        out[name] = {
            "dist_to_min_norm": _rel(u, u_dagger),
            "outer_residual": float(np.linalg.norm(jac @ u - t_np) / np.linalg.norm(t_np)),
            "norm_ratio": float(np.linalg.norm(u) / np.linalg.norm(u_dagger)),
            "outer_loss_trace": np.asarray(history.outer_loss)[
                :: max(1, cfg.quad_outer_steps // 200)
            ],
        }
    return out


# ----------------------------------------------------------------------------------------------
# 2-3. digits


def _dataset(cfg: Config, seed: int) -> dict:
    """`cfg.train_size` training images (shuffled with `seed`) and the test images: scikit-learn
    digits (test = the other digits) or, with `cfg.mnist_path`, MNIST (test = its test split).
    Standardized per pixel with the training statistics (the std floored at 1/16 for constant
    pixels)."""
    if cfg.mnist_path:
        d = load_mnist_labeled(cfg.mnist_path)
        perm = np.random.default_rng(seed).permutation(len(d["x_train"]))[: cfg.train_size]
        xtr, ytr, xte, yte = d["x_train"][perm], d["y_train"][perm], d["x_test"], d["y_test"]
    else:
        x, y = load_digits(seed=seed)
        xtr, ytr, xte, yte = (
            x[: cfg.train_size],
            y[: cfg.train_size],
            x[cfg.train_size :],
            y[cfg.train_size :],
        )
    if len(xtr) < cfg.train_size:
        raise ValueError(f"train_size={cfg.train_size} exceeds the {len(xtr)} training images")
    mean, std = xtr.mean(0), np.maximum(xtr.std(0), 1.0 / 16.0)
    norm = lambda v: ((v - mean) / std).astype(np.float32)
    return {"xtr": norm(xtr), "ytr": ytr.astype(np.int32), "xte": norm(xte), "yte": yte}


def _mlp(hidden: int, dim: int):
    """The inner model, a tanh MLP dim-hidden-10 (`eqx.nn.MLP`), as `(unflatten, loss, accuracy)`:
    `unflatten(flat)` fills its weights from one vector of U(-1, 1) draws (so that the host draws
    every seed's inits up front); `loss` and `accuracy` take those weights and a batch."""
    template = eqx.nn.MLP(dim, 10, hidden, depth=1, activation=jnp.tanh, key=jax.random.key(0))
    params0, static = eqx.partition(template, eqx.is_array)
    n1 = dim * hidden

    def unflatten(flat):
        # LeCun-uniform weights (variance 1 / fan-in) from U(-1, 1) draws, zero biases.
        flat = flat * np.sqrt(3.0)
        w1 = flat[:n1].reshape(dim, hidden).T / np.sqrt(dim)
        w2 = flat[n1:].reshape(hidden, 10).T / np.sqrt(hidden)
        return eqx.tree_at(
            lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight, m.layers[1].bias),
            params0,
            (w1, jnp.zeros(hidden, flat.dtype), w2, jnp.zeros(10, flat.dtype)),
        )

    def apply(w, x):
        return jax.vmap(eqx.combine(w, static))(x)

    def loss(w, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(w, x), y).mean()

    def accuracy(w, x, y):
        return jnp.mean(jnp.argmax(apply(w, x), -1) == y)

    return unflatten, loss, accuracy


def _seed_inputs(cfg: Config, seed: int, num_images: int, dim: int) -> dict:
    """Per-seed random inputs, drawn on the host (outside the compiled programs): the initial
    synthetic images (N(0, 1) noise on the standardized pixel scale), the initial inner weights,
    the fresh inits used for evaluation. Leading axis: seed."""
    rng = np.random.default_rng(seed)
    n_w = dim * cfg.hidden + 10 * cfg.hidden
    uniform = lambda *shape: rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    return {
        "u0": rng.normal(size=(cfg.seeds, num_images, dim)).astype(np.float32),
        "w0": uniform(cfg.seeds, n_w),
        "eval_w": uniform(cfg.seeds, cfg.eval_inits, n_w),
    }


def _trained_accuracies(
    cfg: Config, dim: int, inner, us, eval_w, steps: tuple[int, int], test, lr: float
):
    """Test accuracy of the fresh inits `eval_w` trained on each synthetic set in `us` (stacked on
    a leading axis) for `steps[0]` and for `steps[1] >= steps[0]` SGD steps of size `lr`,
    averaged over the inits: shape (len(us), 2). One vmapped program serves every evaluation."""
    unflatten, _, accuracy = _mlp(cfg.hidden, dim)
    inner_opt = optax.sgd(lr)
    short, long = steps

    def one(u, flat_w):
        w = run_inner_optimizer(inner, u, unflatten(flat_w), inner_opt, short)
        acc_short = accuracy(w, *test)
        # SGD is stateless, so continuing from w is the same as training `long` steps at once.
        w = run_inner_optimizer(inner, u, w, inner_opt, long - short)
        return jnp.stack([acc_short, accuracy(w, *test)])

    return jax.vmap(lambda u: jax.vmap(lambda w: one(u, w))(eval_w).mean(0))(us)


def _tail_mean(trace):
    return jnp.mean(trace[-max(1, trace.shape[-1] // 10) :])


def _distill_member(cfg: Config, ipc: int, dim: int, terms: int):
    """`one(rand, outer_lr, data)`: cold and warm start for one (outer lr, seed) member."""
    unflatten, loss, accuracy = _mlp(cfg.hidden, dim)
    y_syn = jnp.repeat(jnp.arange(10), ipc)
    inner_opt = optax.sgd(cfg.dd_inner_lr)
    steps, t_cold = cfg.dd_outer_steps, cfg.dd_cold_inner_steps
    # Both starts use the same hypergradient (Alg. 3, Neumann with step = the inner lr), so the
    # only difference between them is where each outer step's inner run starts.
    # throw=False: the residual of every solve is reported (a divergent series is a finding of
    # the diagnostic row, not an error).
    method = Implicit(Neumann(terms, step_size=cfg.dd_inner_lr), throw=False)

    def one(rand, outer_lr, data):
        xtr, ytr, xte, yte = data
        inner = lambda u, w: loss(w, u, y_syn)
        outer = lambda u, w: loss(w, xtr, ytr)
        u0, w0 = rand["u0"], unflatten(rand["w0"])
        cold = BilevelConfig(
            method, optax.adam(outer_lr), inner_optimizer=inner_opt, num_inner_steps=t_cold
        )
        warm = BilevelConfig(
            method,
            optax.adam(outer_lr),
            warm_start=True,
            inner_optimizer=inner_opt,
            num_inner_steps=cfg.dd_warm_inner_steps,
        )
        s_cold, h_cold = bilevel_optimize(cold, outer, inner, u0, w0, steps)
        s_warm, h_warm = bilevel_optimize(warm, outer, inner, u0, w0, steps)
        u_cold, u_warm = s_cold.outer_params, s_warm.outer_params
        acc = _trained_accuracies(
            cfg,
            dim,
            inner,
            jnp.stack([u_cold, u_warm]),
            rand["eval_w"],
            (t_cold, cfg.retrain_steps),
            (xte, yte),
            cfg.dd_inner_lr,
        )
        # Cold start's own solution: the fixed init trained T steps on the final images.
        w_cold = run_inner_optimizer(inner, u_cold, w0, inner_opt, t_cold)
        return {
            "cold": accuracy(w_cold, xte, yte),
            "cold_fresh": acc[0, 0],
            "cold_retrain": acc[0, 1],
            "warm": accuracy(s_warm.inner_params, xte, yte),
            "warm_retrain": acc[1, 1],
            "cold_outer_loss": _tail_mean(h_cold.outer_loss),
            "warm_outer_loss": _tail_mean(h_warm.outer_loss),
            # The solve's health: the largest relative IFT residual (above 1: the series made
            # things worse than v = 0) and hypergradient norm of the run.
            "cold_residual": jnp.max(h_cold.linear_relative_residual),
            "warm_residual": jnp.max(h_warm.linear_relative_residual),
            "cold_hypergrad_max": jnp.max(h_cold.hypergrad_norm),
            "warm_hypergrad_max": jnp.max(h_warm.hypergrad_norm),
            "cold_trace": h_cold.outer_loss,
            "warm_trace": h_warm.outer_loss,
            "cold_images": u_cold,
            "warm_images": u_warm,
            "cold_image_change": jnp.linalg.norm(u_cold - u0) / jnp.linalg.norm(u0),
            "warm_image_change": jnp.linalg.norm(u_warm - u0) / jnp.linalg.norm(u0),
        }

    return one


def _grid_run(ctx, one, outer_lrs, rand: dict, data) -> dict:
    """`one(rand, outer_lr, data)` for every (outer lr, seed) pair: one vmapped population (one
    vmap compiles faster than two nested ones), sharded over the devices; results get axes
    (lr, seed)."""
    lrs, seeds = grid(np.asarray(outer_lrs, np.float32), rand)
    flat = population_map(
        ctx,
        lambda m, data: one(m["rand"], m["outer_lr"], data),
        {"rand": seeds, "outer_lr": lrs},
        data,
    )
    return ungrid(flat, (len(outer_lrs), population_size(rand)))


def _run_distill(ctx, cfg: Config, seed: int, ipc: int, terms: int) -> dict:
    data = _dataset(cfg, seed)
    dim = data["xtr"].shape[1]
    data = tuple(jnp.asarray(data[k]) for k in ("xtr", "ytr", "xte", "yte"))
    # The same images and inits for every hypergradient: only the approximation differs.
    rand = _seed_inputs(cfg, 1000 * seed + ipc, 10 * ipc, dim)
    one = _distill_member(cfg, ipc, dim, terms)
    raw = _grid_run(ctx, one, cfg.dd_outer_lrs, rand, data)
    out = {"outer_lrs": np.asarray(cfg.dd_outer_lrs)}
    for method in ("cold", "warm"):
        # The outer lr with the lowest mean final outer loss (the training loss), per method.
        selection = select_best(raw, f"{method}_outer_loss")
        idx, sel = selection.index, selection.best
        out[method] = {
            "outer_lr": cfg.dd_outer_lrs[idx],
            "outer_loss_by_lr": raw[f"{method}_outer_loss"].mean(axis=1),
            "test_accuracy_by_lr": raw[method].mean(axis=1),
            "test_accuracy": sel[method],  # per seed
            "retrain_test_accuracy": sel[f"{method}_retrain"],
            "outer_loss": sel[f"{method}_outer_loss"],
            "image_change": sel[f"{method}_image_change"],
            "max_solve_residual": sel[f"{method}_residual"],  # relative
            "max_hypergrad_norm": sel[f"{method}_hypergrad_max"],
            "outer_loss_trace": sel[f"{method}_trace"].mean(axis=0),
            "images": sel[f"{method}_images"][0][::ipc][:10],  # seed 0, one image per class
        }
        if method == "cold":  # fresh random inits trained the cold start's T steps
            out[method]["fresh_test_accuracy"] = sel["cold_fresh"]
    return out


def _oned_member(cfg: Config, dim: int):
    """`one(rand, outer_lr, data)`: warm start with a 1-D outer parameter for one (outer lr,
    seed) member, and the grid of u the fresh models are evaluated on."""
    unflatten, loss, accuracy = _mlp(cfg.hidden, dim)
    m, width = cfg.oned_ring, cfg.oned_width
    y_syn = jnp.arange(10)
    inner_opt = optax.sgd(cfg.inner_lr)
    u_grid = jnp.arange(0.0, m, 0.5)

    def one(rand, outer_lr, data):
        xtr, ytr, xte, yte, ring = data  # ring: (10, m, dim), m real training images per class

        def images(u):  # one image per class: a Gaussian blend along the ring around u[0]
            d = jnp.arange(m) - u[0]
            d = d - m * jnp.round(d / m)  # signed distance on the ring
            weights = jax.nn.softmax(-0.5 * (d / width) ** 2)
            return jnp.einsum("i,cid->cd", weights, ring)

        inner = lambda u, w: loss(w, images(u), y_syn)
        outer = lambda u, w: loss(w, xtr, ytr)
        config = BilevelConfig(
            FullUnroll(inner_opt, cfg.oned_warm_inner_steps),
            optax.adam(outer_lr),
            warm_start=True,
        )
        state = bilevel_init(config, jnp.zeros(1), unflatten(rand["w0"]))

        state, history = bilevel_run(config, outer, inner, state, cfg.oned_outer_steps)
        # u after each outer step: u_1..u_T (the history holds u_0..u_{T-1}, then the final u).
        u_trace = jnp.concatenate([history.outer_params[1:, 0], state.outer_params])
        loss_trace = history.outer_loss
        us = jnp.concatenate([state.outer_params, u_grid])[:, None]  # final u, then the grid
        acc = _trained_accuracies(
            cfg,
            dim,
            inner,
            us,
            rand["eval_w"],
            (cfg.retrain_steps, cfg.retrain_steps),
            (xte, yte),
            cfg.inner_lr,
        )[:, 0]
        full = run_inner_optimizer(
            lambda _, w: loss(w, xtr, ytr),
            None,
            unflatten(rand["eval_w"][0]),
            inner_opt,
            cfg.retrain_steps,
        )
        return {
            "warm": accuracy(state.inner_params, xte, yte),
            "fresh": acc[0],
            "grid_accuracy": acc[1:],
            "full_data": accuracy(full, xte, yte),
            "outer_loss": _tail_mean(loss_trace),
            "u_trace": u_trace,
            "outer_loss_trace": loss_trace,
        }

    return one, u_grid


def _run_oned(ctx, cfg: Config, seed: int) -> dict:
    data = _dataset(cfg, seed)
    dim = data["xtr"].shape[1]
    ytr = data["ytr"]
    counts = np.bincount(ytr, minlength=10)
    if counts.min() < cfg.oned_ring:
        raise ValueError(
            f"oned_ring={cfg.oned_ring} needs that many training images of every class; the "
            f"training split has {counts.min()} of the rarest (raise train_size)."
        )
    ring = np.stack([data["xtr"][np.nonzero(ytr == c)[0][: cfg.oned_ring]] for c in range(10)])
    args = tuple(jnp.asarray(data[k]) for k in ("xtr", "ytr", "xte", "yte")) + (jnp.asarray(ring),)
    one, u_grid = _oned_member(cfg, dim)
    rand = _seed_inputs(cfg, 1000 * seed + 7, 0, dim)
    raw = _grid_run(ctx, one, cfg.oned_outer_lrs, rand, args)
    selection = select_best(raw, "outer_loss")
    idx, sel = selection.index, selection.best
    m = cfg.oned_ring
    visited = [len(np.unique(np.round(u).astype(int) % m)) for u in sel["u_trace"]]
    # The first outer step after which u stays within half a ring position of its final value.
    far = np.abs(sel["u_trace"] - sel["u_trace"][:, -1:]) > 0.5
    settled = [int(np.nonzero(row)[0].max()) + 1 if row.any() else 0 for row in far]
    return {
        "outer_lr": cfg.oned_outer_lrs[idx],
        "outer_lrs": np.asarray(cfg.oned_outer_lrs),
        "outer_loss_by_lr": raw["outer_loss"].mean(axis=1),
        "gap_by_lr": (raw["warm"] - raw["fresh"]).mean(axis=1),
        "warm": sel["warm"],
        "fresh": sel["fresh"],
        "best_fresh_on_grid": sel["grid_accuracy"].max(axis=1),
        "full_data": sel["full_data"],
        "u_final": sel["u_trace"][:, -1],
        "positions_visited": np.asarray(visited),
        "settled_step": np.asarray(settled),
        "grid": np.asarray(u_grid),
        "grid_accuracy": sel["grid_accuracy"].mean(axis=0),
        "u_trace": sel["u_trace"][0],
        "outer_loss_trace": sel["outer_loss_trace"].mean(axis=0),
    }


# ----------------------------------------------------------------------------------------------


def run(cfg: Config, ctx) -> Result:
    seed = ctx.seed
    judge = ctx.scale != "smoke"

    def quad_stage():
        previous = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
        try:
            return _run_quadratic(cfg, seed)
        finally:
            jax.config.update("jax_enable_x64", previous)

    ctx.log("stage 1/3: quadratic bilevel problem (float64)")
    quad = _quadratic_order(ctx.stage("quadratic", quad_stage))
    distill = {}
    for ipc in cfg.dd_images_per_class:
        for k in cfg.dd_neumann_terms:
            ctx.log(
                f"stage 2/3: dataset distillation, {ipc} image(s) per class, Neumann K={k}, "
                f"{cfg.seeds} seeds"
            )
            distill[f"{ipc}/class, K={k}"] = ctx.stage(
                f"distill_{ipc}_K{k}", lambda ipc=ipc, k=k: _run_distill(ctx, cfg, seed, ipc, k)
            )
    edge = {}
    if cfg.dd_edge_inner_lr is not None:
        ipc, k, lr = cfg.dd_images_per_class[0], cfg.dd_neumann_terms[0], cfg.dd_edge_inner_lr
        ctx.log(f"stage 2/3: dataset distillation diagnostic, inner lr {lr}")
        edge_cfg = dataclasses.replace(cfg, dd_inner_lr=lr)
        edge[f"{ipc}/class, K={k}, inner lr {lr}"] = ctx.stage(
            f"distill_{ipc}_K{k}_lr{lr}", lambda: _run_distill(ctx, edge_cfg, seed, ipc, k)
        )
    ctx.log(f"stage 3/3: 1-D outer parameter, {cfg.seeds} seeds")
    oned = ctx.stage("oned", lambda: _run_oned(ctx, cfg, seed))
    plot_all(ctx, cfg, quad, {**distill, **edge}, oned)

    claims = claims_of(cfg, judge, quad, distill, oned)
    dataset = dataset_id(cfg)
    return Result(
        metrics={"dataset": dataset, **metrics_of(quad, {**distill, **edge}, oned)},
        claims=claims,
        report=report_text(cfg, quad, distill, oned, edge),
    )


def paper_probe(cfg: Config) -> Config:
    """The paper config at its sizes (data, models, images per class, seeds) with 1-2 steps."""
    return dataclasses.replace(
        cfg,
        quad_outer_steps=2,
        quad_inner_steps=2,
        retrain_steps=2,
        dd_outer_steps=2,
        dd_cold_inner_steps=2,
        oned_outer_steps=2,
    )


EXPERIMENT = Experiment(
    name="bilevel_implicit_bias",
    title="On Implicit Bias in Overparameterized Bilevel Optimization (Vicol et al., ICML 2022)",
    config=Config,
    scales=SCALES,
    run=run,
    paper_probe=paper_probe,
)
