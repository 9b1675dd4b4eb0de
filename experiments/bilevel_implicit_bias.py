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
    Claim,
    Experiment,
    Result,
    grid,
    population_map,
    population_size,
    select_best,
    ungrid,
)
from experiments._data import dataset_name, load_digits, load_mnist_labeled
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
    # residuals ~1e13 in the quick run's diagnostic row); at 0.1 the worst step of a run stays
    # within a factor ~30 (at single steps; the tanh MLP's inner Hessian need not be positive
    # definite), with hypergradient norms below 1 (both reported).
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
    "quick": Config(seeds=5),
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


def _dataset_id(cfg: Config) -> str:
    """ "digits", or the name of the data at `mnist_path` ("mnist", "fashion-mnist", a folder's)."""
    return dataset_name(cfg.mnist_path) if cfg.mnist_path else "digits"


def _data_name(cfg: Config) -> str:
    name = _dataset_id(cfg)
    return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(name, name)


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


def _ms(values, scale=100.0) -> str:
    values = scale * np.asarray(values, dtype=float)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def _plots(ctx, cfg, quad, distill, oned):
    name = _data_name(cfg)
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


def _claim(judge: bool | str, claim: str, paper: str, ours, holds: bool) -> Claim:
    """A quick-scale claim; `judge` False (smoke scale) or a reason (str) leaves it untested."""
    if judge is True:
        return Claim(claim, scale="quick", paper=paper, ours=ours, holds=bool(holds))
    reason = judge or (
        "smoke scale runs a handful of steps to exercise the code; judged at quick scale"
    )
    return Claim(claim, scale="quick", paper=paper, ours=ours, holds=None, reason=reason)


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
    _plots(ctx, cfg, quad, {**distill, **edge}, oned)

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
    dataset = _dataset_id(cfg)
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
                f"cold {_ms(c / 100)}, warm {_ms(w / 100)} (warm - cold "
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
                _ms(r / 100),
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
            f"warm {_ms(oned['warm'])} vs fresh {_ms(oned['fresh'])} (gap {gap.mean():.1f} ± "
            f"{gap.std():.1f}); best fresh over all u {_ms(oned['best_fresh_on_grid'])}",
            gap.mean() >= 10,
        )
    )
    return Result(
        metrics={"dataset": dataset, **_metrics(quad, {**distill, **edge}, oned)},
        claims=claims,
        report=_report(cfg, quad, distill, oned, edge),
    )


def _metrics(quad, distill, oned) -> dict:
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


def _report(cfg: Config, quad, distill, oned, edge) -> str:
    dim = next(iter(distill.values()))["cold"]["images"].shape[-1]
    test_name = f"the {_data_name(cfg)} test split" if cfg.mnist_path else "the other digits"
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
        f"### 2. Dataset distillation ({_data_name(cfg)})",
        "",
        f"Data: {_data_name(cfg)}. Inner model: tanh MLP {dim}-{cfg.hidden}-10, SGD lr "
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
            f"| {k} | {_ms(c['test_accuracy'])} | {_ms(w['test_accuracy'])} | "
            f"{_ms(w['retrain_test_accuracy'])} | {_ms(c['fresh_test_accuracy'])} | "
            f"{_ms(c['retrain_test_accuracy'])} | "
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
        f"training images reaches {_ms(oned['full_data'])}% (inner lr {cfg.inner_lr}).",
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
        f"- warm-start inner model: {_ms(oned['warm'])}",
        f"- fresh model trained {cfg.retrain_steps} steps on the 10 images at the final u: "
        f"{_ms(oned['fresh'])}",
        f"- best fresh model over a grid of u (every half position): "
        f"{_ms(oned['best_fresh_on_grid'])}",
        f"- reference, trained {cfg.retrain_steps} steps on all {cfg.train_size} training "
        f"images: {_ms(oned['full_data'])}",
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
