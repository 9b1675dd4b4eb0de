"""`implicit_root` / `implicit_fixed_point` / `implicit_argmin`: forward and reverse mode against
autodiff through a dense solve, closure conversion, aux outputs, checks and bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

from respax.core import CG, Neumann
from respax.implicit_diff import (
    implicit_argmin,
    implicit_fixed_point,
    implicit_root,
    solve_inner,
)

N, D = 30, 5


def _data(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(dtype)
    y = rng.normal(size=N).astype(dtype)
    xv = rng.normal(size=(N, D)).astype(dtype)
    yv = rng.normal(size=N).astype(dtype)
    lam = (-1.0 + 0.3 * rng.normal(size=D)).astype(dtype)
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(xv), jnp.asarray(yv), jnp.asarray(lam)


def _ridge_loss(w, lam, x, y):
    r = x @ w - y
    return 0.5 * jnp.mean(r**2) + 0.5 * jnp.sum(jnp.exp(lam) * w**2)


def _dense_argmin(lam, x, y):
    h = x.T @ x / x.shape[0] + jnp.diag(jnp.exp(lam))
    return jnp.linalg.solve(h, x.T @ y / x.shape[0])


def _make_implicit(x, y, solve, check_tol=None):
    """The argmin by L-BFGS (a while loop: not differentiable by itself), wrapped implicitly.
    Closes over the data arrays x, y."""

    # L-BFGS with a backtracking line search that stores its gradient (the cheaper program to
    # compile; `solve_inner` reuses the stored value and gradient). The slack rtol lets it accept
    # steps whose decrease float64 cannot resolve near the solution.
    search = optax.scale_by_backtracking_linesearch(15, store_grad=True, rtol=1e-6)

    @implicit_argmin(
        lambda w, lam: _ridge_loss(w, lam, x, y), linear_solver=solve, check_tol=check_tol
    )
    def argmin(w0, lam):
        w, _ = solve_inner(
            lambda lm, w: _ridge_loss(w, lm, x, y),
            lam,
            w0,
            optax.lbfgs(linesearch=search),
            max_steps=200,
            tol=1e-13,
        )
        return w

    return argmin


def _val_loss(w, xv, yv):
    return 0.5 * jnp.mean((xv @ w - yv) ** 2)


@pytest.mark.float64
@pytest.mark.parametrize(
    "solve",
    [
        CG(100, rtol=1e-13),
        lx.Cholesky(),
        pytest.param(lx.SVD(), marks=pytest.mark.slow),
    ],
    ids=["cg", "cholesky", "svd"],
)
def test_forward_and_reverse_modes_match_dense_autodiff(solve):
    x, y, xv, yv, lam = _data()
    argmin = _make_implicit(x, y, solve)
    w0 = jnp.zeros(D)
    implicit_val = lambda lm: _val_loss(argmin(w0, lm), xv, yv)
    dense_val = lambda lm: _val_loss(_dense_argmin(lm, x, y), xv, yv)
    direction = jnp.linspace(-1.0, 1.0, D)

    @jax.jit
    def derivatives(lm):
        out = {}
        for name, fn in (("implicit", implicit_val), ("dense", dense_val)):
            out[name] = dict(
                jvp=jax.jvp(fn, (lm,), (direction,))[1],
                grad=jax.grad(fn)(lm),
                jacfwd=jax.jacfwd(
                    lambda lm, fn=fn: (
                        argmin(w0, lm) if fn is implicit_val else _dense_argmin(lm, x, y)
                    )
                )(lm),
                hessian=jax.hessian(fn)(lm),
            )
        return out

    out = derivatives(lam)
    for key in ("jvp", "grad", "jacfwd", "hessian"):
        a, b = np.asarray(out["implicit"][key]), np.asarray(out["dense"][key])
        assert np.max(np.abs(a - b)) <= 1e-7 * max(1.0, np.max(np.abs(b))), key


@pytest.mark.float64
def test_closed_over_arrays_are_differentiated_not_rejected():
    """The data `x` is closed over by both the solver and the optimality function, and it is a
    tracer of the outer `grad`: no error, and the derivative w.r.t. `x` is right."""
    x, y, xv, yv, lam = _data(1)

    def implicit_val(x):
        return _val_loss(_make_implicit(x, y, lx.Cholesky())(jnp.zeros(D), lam), xv, yv)

    def dense_val(x):
        return _val_loss(_dense_argmin(lam, x, y), xv, yv)

    g_implicit = jax.jit(jax.grad(implicit_val))(x)
    g_dense = jax.grad(dense_val)(x)
    np.testing.assert_allclose(g_implicit, g_dense, rtol=1e-9, atol=1e-12)


@pytest.mark.float64
def test_separate_has_aux_flags():
    x, y, _, _, lam = _data(2)

    def loss_with_aux(w, lm):
        return _ridge_loss(w, lm, x, y), {"note": jnp.sum(w)}

    def solver(w0, lm):
        w = _dense_argmin(lm, x, y)
        return w, {"steps": jnp.asarray(7), "gap": jnp.asarray(0.0)}

    for has_aux, solver_has_aux in [(True, True), (True, False), (False, True)]:
        fn = solver if solver_has_aux else (lambda w0, lm: solver(w0, lm)[0])
        loss = loss_with_aux if has_aux else (lambda w, lm: loss_with_aux(w, lm)[0])
        wrapped = implicit_argmin(loss, has_aux=has_aux, solver_has_aux=solver_has_aux)(fn)
        out = wrapped(jnp.zeros(D), lam)
        if solver_has_aux:
            w, aux = out
            assert int(aux["steps"]) == 7
            jac = jax.jacfwd(lambda lm: wrapped(jnp.zeros(D), lm)[0])(lam)
            g_aux = jax.grad(lambda lm: wrapped(jnp.zeros(D), lm)[1]["gap"])(lam)
            np.testing.assert_array_equal(g_aux, 0.0)
        else:
            jac = jax.jacfwd(lambda lm: wrapped(jnp.zeros(D), lm))(lam)
        np.testing.assert_allclose(
            jac, jax.jacfwd(lambda lm: _dense_argmin(lm, x, y))(lam), rtol=1e-9, atol=1e-12
        )


@pytest.mark.float64
def test_fixed_point_and_nonsymmetric_root():
    rng = np.random.default_rng(3)
    a = jnp.asarray(0.4 * rng.normal(size=(D, D)) / np.sqrt(D))  # contraction, non-symmetric

    def t_map(x, theta):
        return jnp.tanh(a @ x + theta)

    def iterate(x0, theta):
        return jax.lax.fori_loop(0, 200, lambda _, x: t_map(x, theta), x0)

    theta = jnp.asarray(rng.normal(size=D))
    x0 = jnp.zeros(D)
    direction = jnp.asarray(rng.normal(size=D))
    # Oracle: autodiff through the (converged) iteration itself.
    _, expected = jax.jvp(lambda th: iterate(x0, th), (theta,), (direction,))
    expected_grad = jax.grad(lambda th: jnp.sum(iterate(x0, th) ** 3))(theta)
    for solve in (lx.LU(), lx.GMRES(rtol=1e-13, atol=1e-13)):
        fixed = implicit_fixed_point(t_map, linear_solver=solve)(iterate)
        _, got = jax.jvp(lambda th, f=fixed: f(x0, th), (theta,), (direction,))
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        got_grad = jax.grad(lambda th, f=fixed: jnp.sum(f(x0, th) ** 3))(theta)
        np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.float64
def test_vmap_over_hyperparameters_and_neumann_solve():
    x, y, xv, yv, lam = _data(4)
    h_max = float(np.linalg.eigvalsh(np.asarray(x.T @ x / N)).max() + np.exp(lam).max())
    argmin = _make_implicit(x, y, Neumann(400, 1.0 / h_max))
    lams = lam[None] + jnp.linspace(-0.5, 0.5, 3)[:, None]
    grads = jax.jit(jax.vmap(jax.grad(lambda lm: _val_loss(argmin(jnp.zeros(D), lm), xv, yv))))(
        lams
    )
    for i in range(3):
        expected = jax.grad(lambda lm: _val_loss(_dense_argmin(lm, x, y), xv, yv))(lams[i])
        np.testing.assert_allclose(grads[i], expected, rtol=1e-8, atol=1e-12)


def test_unconverged_root_is_flagged_with_maxiter_4():
    x, y, _, _, lam = _data(5, np.float32)

    @implicit_argmin(lambda w, lm: _ridge_loss(w, lm, x, y), check_tol=1e-4)
    def four_steps(w0, lm):
        w, _ = solve_inner(
            lambda lmm, w: _ridge_loss(w, lmm, x, y), lm, w0, optax.sgd(0.05), max_steps=4
        )
        return w

    with pytest.raises(Exception, match="not a solution"):
        jax.block_until_ready(jax.jit(four_steps)(jnp.zeros(D), lam))

    @implicit_argmin(lambda w, lm: _ridge_loss(w, lm, x, y), check_tol=1e-4)
    def converged(w0, lm):
        return _dense_argmin(lm, x, y)

    assert np.all(np.isfinite(jax.jit(converged)(jnp.zeros(D), lam)))


def test_bad_input_errors():
    x, y, _, _, lam = _data(6, np.float32)
    with pytest.raises(ValueError, match="structure"):
        implicit_root(lambda w, lm: jnp.sum(w))(lambda w0, lm: w0)(jnp.zeros(D), lam)
    with pytest.raises(ValueError, match="structure"):
        implicit_root(lambda w, lm: {"a": w})(lambda w0, lm: w0)(jnp.zeros(D), lam)
    with pytest.raises(ValueError, match="max_steps"):
        implicit_argmin(lambda w, lm: jnp.sum(w**2), linear_solver=CG(0))
    with pytest.raises(TypeError, match="linear_solver"):
        implicit_root(lambda w: w, linear_solver="lu")
    with pytest.raises(ValueError, match="psd"):
        implicit_root(lambda w: w, psd=True)
    with pytest.raises(TypeError, match="(?i)callable"):
        implicit_root(3.0)
    with pytest.raises(ValueError, match="check_tol"):
        implicit_root(lambda w: w, check_tol=-1.0)
    with pytest.raises(ValueError, match=r"\(sol, aux\)"):
        implicit_root(lambda w, lm: w, solver_has_aux=True)(lambda w0, lm: w0)(jnp.zeros(D), lam)


@pytest.mark.float64
def test_keyword_arguments_reach_the_solver_and_the_optimality_function():
    """`argmin(w0, lam=lam)` differentiates like `argmin(w0, lam)`."""
    x, y, xv, yv, lam = _data(7)

    @implicit_argmin(lambda w, lam: _ridge_loss(w, lam, x, y), linear_solver=lx.Cholesky())
    def argmin(w0, lam):
        return _dense_argmin(lam, x, y)

    value = lambda lm: _val_loss(argmin(jnp.zeros(D), lam=lm), xv, yv)
    positional = lambda lm: _val_loss(argmin(jnp.zeros(D), lm), xv, yv)
    np.testing.assert_allclose(jax.grad(value)(lam), jax.grad(positional)(lam), rtol=1e-12)
    expected = jax.grad(lambda lm: _val_loss(_dense_argmin(lm, x, y), xv, yv))(lam)
    np.testing.assert_allclose(jax.grad(value)(lam), expected, rtol=1e-9)
