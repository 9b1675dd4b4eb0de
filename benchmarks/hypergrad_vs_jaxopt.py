"""Hypergradients of a validation loss w.r.t. per-feature log-L2 penalties: respax vs jaxopt and
optimistix (see the implicit_diff paper notes, section 4).

Problem (float64, fixed seed 0): n = 1000 training and 1000 validation rows, X ~ N(0, 1) of shape
n x D, w_true with round(0.1 D) non-zeros drawn N(0, 1) at random positions, y = X w_true + 0.5 eps;
inner f(w, lam) = 1/2 mean((X w - y)^2) + 1/2 sum(exp(lam) w^2), outer F(w) = 1/2 mean((X_v w -
y_v)^2), lam = -2 + 0.5 N(0, 1) per feature. Reference: the numpy closed form
g = -(H^{-1} grad F) * exp(lam) * w*. D = 100 and D = 1000.

Timed (interleaved, min and median of N = 15 with --quick, 30 without): ours = optax L-BFGS
(memory 10) forward solve to ||grad|| <= 1e-10 (<= 500 iterations) with a backtracking line search
+ `hypergradient(Implicit(CG(rtol=1e-10)))`, one jitted program (also shown: the same with optax's
default zoom line search); jaxopt = `jaxopt.LBFGS(tol=1e-10, maxiter=500)` (history 10, zoom line
search) differentiated through `custom_root` with CG (tol 1e-10) and with its default normal-CG;
optimistix = BFGS(rtol=atol=1e-10) + ImplicitAdjoint(lineax CG 1e-10). First call = trace +
compile + run of ours, in a process where no other program of ours at D=1000 has been compiled.

Usage: python benchmarks/hypergrad_vs_jaxopt.py [--quick] [--json PATH] [--ours-only]
(the peers come from the `bench` dependency group; without them it exits 3 and prints the command)
"""

import argparse
import functools
import importlib.metadata
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from respax.core import CG, Neumann  # noqa: E402
from respax.implicit_diff import (  # noqa: E402
    FullUnroll,
    Implicit,
    TruncatedUnroll,
    hypergradient,
    implicit_argmin,
    solve_inner,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TOL = 1e-10
MAX_STEPS = 500


def make_problem(d: int, seed: int = 0, n: int = 1000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    xv = rng.normal(size=(n, d))
    w_true = np.zeros(d)
    nnz = max(1, round(0.1 * d))
    w_true[rng.choice(d, nnz, replace=False)] = rng.normal(size=nnz)
    y = x @ w_true + 0.5 * rng.normal(size=n)
    yv = xv @ w_true + 0.5 * rng.normal(size=n)
    lam = -2.0 + 0.5 * rng.normal(size=d)
    return x, y, xv, yv, lam


def closed_form(x, y, xv, yv, lam):
    n = x.shape[0]
    h = x.T @ x / n + np.diag(np.exp(lam))
    w = np.linalg.solve(h, x.T @ y / n)
    grad_f = xv.T @ (xv @ w - yv) / n
    return -np.linalg.solve(h, grad_f) * np.exp(lam) * w, w, h


def losses(data):
    """The inner and outer losses over `data = (x, y, xv, yv)`. The data are passed to every
    jitted function as an argument (closed-over constants would be folded into the program)."""
    x, y, xv, yv = data

    def inner(lam, w):
        return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * w**2)

    def outer(lam, w):
        return 0.5 * jnp.mean((xv @ w - yv) ** 2)

    return inner, outer


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def lbfgs(linesearch: str = "backtracking") -> optax.GradientTransformation:
    """optax's L-BFGS (memory 10, jaxopt's default history size) with a line search.

    "backtracking" (ours by default): Armijo backtracking that stores the gradient at the accepted
    point (one objective evaluation per accepted step, reused by `solve_inner`), with the relative
    slack eps |f|, eps = 1e-6, of Hager and Zhang's approximate Wolfe conditions (the value of
    `approx_dec_rtol` in optax's zoom line search). Near the solution the decrease ||g||^2 / L is
    below float64's resolution of f, and a strict Armijo test rejects good steps there: without
    slack this search stalls at ||g|| ~ 1e-8; with eps = 1e-12 it converges with 11 rejected steps,
    with 1e-6 with 2 (measured on the D=1000 problem). "zoom": optax's default line search.
    """
    if linesearch == "zoom":
        return optax.lbfgs(memory_size=10)
    search = optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=15, store_grad=True, rtol=1e-6
    )
    return optax.lbfgs(memory_size=10, linesearch=search)


def ours_lbfgs_cg(d, max_steps=MAX_STEPS, linesearch="backtracking"):
    """The whole hypergradient (L-BFGS forward solve + implicit CG backward) as one program."""

    @jax.jit
    def fn(lam, data):
        inner, outer = losses(data)
        w, _ = solve_inner(
            inner, lam, jnp.zeros(d), lbfgs(linesearch), max_steps=max_steps, tol=TOL
        )
        return hypergradient(outer, inner, lam, w, Implicit(CG(max_steps, rtol=TOL)))[0]

    return fn


def forward_iterations(d, lam, data) -> dict:
    """Iterations of each forward solve (for the report; one extra compile each)."""
    out = {}
    for name in ("backtracking", "zoom"):

        @jax.jit
        def steps(lam, data, name=name):
            inner = losses(data)[0]
            w, info = solve_inner(
                inner, lam, jnp.zeros(d), lbfgs(name), max_steps=MAX_STEPS, tol=TOL
            )
            return info.steps

        out[f"optax L-BFGS ({name})"] = int(steps(lam, data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jaxopt
    except ImportError:
        return out

    @jax.jit
    def jaxopt_steps(lam, data):
        fun = lambda w, lam, data: losses(data)[0](lam, w)
        state = jaxopt.LBFGS(fun=fun, tol=TOL, maxiter=MAX_STEPS).run(jnp.zeros(d), lam, data)
        return state.state.iter_num, state.state.num_fun_eval

    iters, evals = jaxopt_steps(lam, data)
    out["jaxopt LBFGS (zoom)"] = f"{int(iters)} ({int(evals)} function evaluations)"
    return out


def jaxopt_fns(d):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jaxopt
    except ImportError:
        return {}
    out = {}
    for name, solve in (
        ("jaxopt LBFGS + CG", functools.partial(jaxopt.linear_solve.solve_cg, tol=TOL)),
        ("jaxopt LBFGS + default normal-CG", None),
    ):

        def val(lam, data, solve=solve):
            inner, outer = losses(data)
            fun = lambda w, lam, data: losses(data)[0](lam, w)
            solver = jaxopt.LBFGS(fun=fun, tol=TOL, maxiter=MAX_STEPS, implicit_diff_solve=solve)
            return outer(lam, solver.run(jnp.zeros(d), lam, data).params)

        out[name] = jax.jit(jax.grad(val))
    return out


def optimistix_fn(d):
    try:
        import optimistix as optx
    except ImportError:
        return {}
    solver = optx.BFGS(rtol=TOL, atol=TOL)
    adjoint = optx.ImplicitAdjoint(linear_solver=lx.CG(rtol=TOL, atol=TOL))
    tags = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})

    def val(lam, data):
        outer = losses(data)[1]
        sol = optx.minimise(
            lambda w, args: losses(args[1])[0](args[0], w),
            solver,
            jnp.zeros(d),
            (lam, data),
            adjoint=adjoint,
            max_steps=MAX_STEPS,
            tags=tags,
            throw=False,
        )
        return outer(lam, sol.value)

    return {"optimistix BFGS + ImplicitAdjoint(CG)": jax.jit(jax.grad(val))}


def time_interleaved(fns: dict, args, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def accuracy(d: int) -> tuple[dict, dict]:
    x, y, xv, yv, lam_np = make_problem(d)
    g_ref, w_star, h = closed_form(x, y, xv, yv, lam_np)
    data = tuple(map(jnp.asarray, (x, y, xv, yv)))
    lam, w_star_j = jnp.asarray(lam_np), jnp.asarray(w_star)
    lr = 1.0 / float(np.linalg.eigvalsh(h).max())
    w0 = jnp.zeros(d)
    ours = ours_lbfgs_cg(d)
    methods = {
        "exact (dense fwd, Cholesky IFT)": lambda inner, outer: hypergradient(
            outer, inner, lam, w_star_j, Implicit(lx.Cholesky())
        )[0],
        "unroll 100 GD steps": lambda inner, outer: hypergradient(
            outer, inner, lam, w0, FullUnroll(optax.sgd(lr), 100)
        )[0],
        "truncated: 100 steps, last 10": lambda inner, outer: hypergradient(
            outer, inner, lam, w0, TruncatedUnroll(optax.sgd(lr), 100, 10)
        )[0],
        "Neumann K=10 (exact fwd)": lambda inner, outer: hypergradient(
            outer, inner, lam, w_star_j, Implicit(Neumann(10, lr), throw=False)
        )[0],
        "Neumann K=100 (exact fwd)": lambda inner, outer: hypergradient(
            outer, inner, lam, w_star_j, Implicit(Neumann(100, lr), throw=False)
        )[0],
    }
    errs, cosines = {}, {}
    for name, fn in methods.items():
        g = np.asarray(jax.jit(lambda data, fn=fn: fn(*losses(data)))(data))
        errs[name] = rel(g, g_ref)
        cosines[name] = float(g @ g_ref / np.linalg.norm(g) / np.linalg.norm(g_ref))
    g = np.asarray(ours(lam, data))
    errs["L-BFGS fwd + CG(tol 1e-10)"] = rel(g, g_ref)
    cosines["L-BFGS fwd + CG(tol 1e-10)"] = float(
        g @ g_ref / np.linalg.norm(g) / np.linalg.norm(g_ref)
    )
    return errs, cosines


def forward_mode_error(d: int = 100) -> float:
    x, y, xv, yv, lam_np = make_problem(d, seed=1)
    inner, outer = losses(tuple(map(jnp.asarray, (x, y, xv, yv))))
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    @implicit_argmin(lambda w, lam: inner(lam, w), linear_solver=CG(MAX_STEPS, rtol=TOL))
    def argmin(w0, lam):
        return solve_inner(inner, lam, w0, optax.lbfgs(), max_steps=MAX_STEPS, tol=TOL)[0]

    def dense(lam):
        h = xj.T @ xj / xj.shape[0] + jnp.diag(jnp.exp(lam))
        return jnp.linalg.solve(h, xj.T @ yj / xj.shape[0])

    lam = jnp.asarray(lam_np)
    direction = jnp.asarray(np.random.default_rng(2).normal(size=d))
    f_impl = lambda lm: outer(lm, argmin(jnp.zeros(d), lm))
    f_dense = lambda lm: outer(lm, dense(lm))
    t_impl = jax.jit(lambda lm: jax.jvp(f_impl, (lm,), (direction,))[1])(lam)
    t_dense = jax.jit(lambda lm: jax.jvp(f_dense, (lm,), (direction,))[1])(lam)
    j_impl = jax.jit(jax.jacfwd(lambda lm: argmin(jnp.zeros(d), lm)))(lam)
    j_dense = jax.jit(jax.jacfwd(dense))(lam)
    return max(
        abs(float(t_impl - t_dense)) / abs(float(t_dense)),
        rel(j_impl, j_dense),
    )


def measure_first_call(d: int = 1000) -> tuple[float, tuple[float, float, float]]:
    """Trace + compile + run of ours at D=1000, first thing in the process (after a trivial
    program has initialized the backend): `(total, (trace, compile, run))` in seconds."""
    jax.block_until_ready(jax.jit(lambda v: v + 1.0)(jnp.zeros(1)))
    x, y, xv, yv, lam_np = make_problem(d)
    data = tuple(map(jnp.asarray, (x, y, xv, yv)))
    lam = jnp.asarray(lam_np)
    jax.block_until_ready((lam, data))
    start = time.perf_counter()
    lowered = ours_lbfgs_cg(d).lower(lam, data)
    traced = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(lam, data))
    total = time.perf_counter() - start
    return total, (traced - start, compiled_at - traced, total - (compiled_at - start))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--ours-only", action="store_true", help="time ours alone (the peer figures are null)"
    )
    args = parser.parse_args(argv)
    if not args.ours_only:
        _common.require_modules(
            "jaxopt / optimistix", ("jaxopt", "optimistix"), _common.bench_group_command(__file__)
        )
    repeats = 15 if args.quick else 30
    first_call, first_call_parts = measure_first_call()

    print("accuracy vs closed form (float64)")
    errs100, cos100 = accuracy(100)
    errs1000, cos1000 = accuracy(1000)
    print(f"{'method':40s} {'D=100 rel.err':>14s} {'D=1000 rel.err':>15s} {'(cos)':>9s}")
    for name in errs100:
        print(f"{name:40s} {errs100[name]:14.2e} {errs1000[name]:15.2e} {cos1000[name]:9.5f}")
    fwd_err = forward_mode_error()
    print(f"forward mode (jvp, jacfwd) through implicit_argmin vs dense autodiff: {fwd_err:.2e}")

    d = 1000
    x, y, xv, yv, lam_np = make_problem(d)
    g_ref = closed_form(x, y, xv, yv, lam_np)[0]
    data = tuple(map(jnp.asarray, (x, y, xv, yv)))
    lam = jnp.asarray(lam_np)

    ours = ours_lbfgs_cg(d)
    mem = {
        steps: ours_lbfgs_cg(d, steps).lower(lam, data).compile().memory_analysis()
        for steps in (100, MAX_STEPS)
    }
    temp_mib = {k: v.temp_size_in_bytes / 2**20 for k, v in mem.items()}

    fns = {
        "ours: optax L-BFGS (backtracking) + CG": ours,
        "ours: optax L-BFGS (zoom) + CG": ours_lbfgs_cg(d, linesearch="zoom"),
    }
    fns.update(jaxopt_fns(d))
    fns.update(optimistix_fn(d))
    peer_errs = {}
    for name, fn in fns.items():
        peer_errs[name] = rel(fn(lam, data), g_ref)  # also warms up (compiles) every function
    timings = time_interleaved(fns, (lam, data), repeats)
    print(f"\nD=1000 hypergradient, interleaved, N={repeats} (ms)")
    print(f"{'method':45s} {'min':>8s} {'median':>8s} {'rel.err':>9s}")
    for name, (tmin, tmed) in timings.items():
        print(f"{name:45s} {1e3 * tmin:8.1f} {1e3 * tmed:8.1f} {peer_errs[name]:9.1e}")
    jaxopt_key = "jaxopt LBFGS + CG"
    ratio = (
        timings["ours: optax L-BFGS (backtracking) + CG"][0] / timings[jaxopt_key][0]
        if jaxopt_key in timings
        else None
    )
    if ratio is not None:
        print(f"ours / jaxopt LBFGS+CG (min of N): {ratio:.3f}")
    print(
        f"first call (trace + compile + run): {first_call:.2f} s = "
        + " + ".join(f"{t:.2f}" for t in first_call_parts)
    )
    for name, iters in forward_iterations(d, lam, data).items():
        print(f"forward iterations to ||grad|| <= {TOL:g}: {name}: {iters}")
    print(
        "compiled temp memory: "
        + ", ".join(f"max_steps={k}: {v:.3f} MiB" for k, v in temp_mib.items())
    )

    versions = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
    }
    for dist in ("jaxopt", "optimistix", "lineax", "equinox"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    result = {
        "rel_err_exact_d100": errs100["exact (dense fwd, Cholesky IFT)"],
        "rel_err_exact_d1000": errs1000["exact (dense fwd, Cholesky IFT)"],
        "rel_err_cg_tol_d1000": errs1000["L-BFGS fwd + CG(tol 1e-10)"],
        "rel_err_unroll100_d1000": errs1000["unroll 100 GD steps"],
        "rel_err_neumann100_d1000": errs1000["Neumann K=100 (exact fwd)"],
        "rel_err_neumann10_d1000": errs1000["Neumann K=10 (exact fwd)"],
        "rel_err_truncated10_d1000": errs1000["truncated: 100 steps, last 10"],
        "fwd_mode_err": fwd_err,
        "ours_over_jaxopt_lbfgs_cg_d1000": ratio,
        "temp_memory_mib_d1000": temp_mib[MAX_STEPS],
        "first_call_s": first_call,
        "versions": versions,
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{jax.devices()[0].platform} x{jax.device_count()}".strip(),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
