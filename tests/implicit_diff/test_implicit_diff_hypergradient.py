"""Oracles for `hypergradient`: closed forms on quadratic problems, the exact truncated series and
linear recursions of the approximations, matvec counts, min-norm solves and bad input."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

from respax.core import CG, RESULTS, Neumann
from respax.implicit_diff import (
    FullUnroll,
    Implicit,
    TruncatedUnroll,
    hypergradient,
    run_inner_optimizer,
    solve_inner,
)
from tests.helpers import exact_linear_solvers, solver_id

D, P, M = 6, 4, 5  # inner dim, outer dim, outer residual dim


def _problem(seed, dtype=np.float64, cond=5.0):
    """Quadratic bilevel problem with pytree parameters.

    inner f(u, w) = 1/2 w^T A w - w^T B u,  w = {"a": w[:2], "b": w[2:]}, u = (u[:1], u[1:])
    outer F(u, w) = 1/2 |C w - t|^2 + gamma/2 |u|^2
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    eig = np.linspace(1.0, cond, D)
    a = (q * eig) @ q.T
    b = rng.normal(size=(D, P))
    c = rng.normal(size=(M, D))
    t = rng.normal(size=M)
    u = rng.normal(size=P)
    gamma = 0.3
    arrays = {k: v.astype(dtype) for k, v in dict(a=a, b=b, c=c, t=t, u=u).items()}
    return arrays, gamma


def _to_w(x):
    return {"a": x[:2], "b": x[2:]}


def _from_w(w):
    return jnp.concatenate([w["a"], w["b"]])


def _to_u(x):
    return (x[:1], x[1:])


def _from_u(u):
    return jnp.concatenate(u)


def _losses(arrays, gamma):
    a, b, c, t = (jnp.asarray(arrays[k]) for k in "abct")

    def inner(u, w):
        wv, uv = _from_w(w), _from_u(u)
        return 0.5 * wv @ a @ wv - wv @ b @ uv

    def outer(u, w):
        wv, uv = _from_w(w), _from_u(u)
        r = c @ wv - t
        return 0.5 * r @ r + 0.5 * gamma * uv @ uv

    return inner, outer


def _closed_form(arrays, gamma):
    a, b, c, t, u = (arrays[k] for k in "abctu")
    w = np.linalg.solve(a, b @ u)
    g_w = c.T @ (c @ w - t)
    return b.T @ np.linalg.solve(a, g_w) + gamma * u, w, g_w


def _relerr(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


EXACT_SOLVES = [*exact_linear_solvers(jnp.float64), lx.CG(rtol=1e-14, atol=1e-14)]


@pytest.mark.float64
@pytest.mark.parametrize(
    "solve",
    EXACT_SOLVES,
    ids=solver_id,
)
def test_implicit_exact_matches_closed_form_float64(solve):
    arrays, gamma = _problem(0)
    inner, outer = _losses(arrays, gamma)
    expected, w_star, _ = _closed_form(arrays, gamma)
    u = _to_u(jnp.asarray(arrays["u"]))
    fn = jax.jit(lambda u, w: hypergradient(outer, inner, u, w, Implicit(solve)))
    g, info = fn(u, _to_w(jnp.asarray(w_star)))
    assert _relerr(_from_u(g), expected) <= 1e-10
    assert float(info.inner_grad_norm) <= 1e-12
    assert float(info.linear_residual_norm) <= 1e-10
    assert jax.tree.structure(g) == jax.tree.structure(u)


def test_implicit_float32_matches_closed_form():
    arrays, gamma = _problem(1)
    expected, w_star, _ = _closed_form(arrays, gamma)
    arrays32, _ = _problem(1, dtype=np.float32)
    inner, outer = _losses(arrays32, gamma)
    u = _to_u(jnp.asarray(arrays32["u"]))
    w = _to_w(jnp.asarray(w_star, jnp.float32))
    for solve in (lx.Cholesky(), CG(max_steps=50)):
        g, _ = jax.jit(lambda u, w, s=solve: hypergradient(outer, inner, u, w, Implicit(s)))(u, w)
        assert g[0].dtype == jnp.float32
        assert _relerr(_from_u(g), expected) <= 1e-5


@pytest.mark.float64
@pytest.mark.parametrize("k", [1, 3, 17])
def test_neumann_equals_truncated_series(k):
    arrays, gamma = _problem(2)
    inner, outer = _losses(arrays, gamma)
    a, b, u = arrays["a"], arrays["b"], arrays["u"]
    _, w_star, g_w = _closed_form(arrays, gamma)
    alpha = 1.0 / np.linalg.eigvalsh(a).max()
    # v_K = alpha * sum_{j<K} (I - alpha A)^j g_w
    v, term = np.zeros(D), g_w.copy()
    for _ in range(k):
        v += alpha * term
        term = term - alpha * a @ term
    expected = b.T @ v + gamma * u
    g, info = jax.jit(
        lambda u, w: hypergradient(
            outer, inner, u, w, Implicit(Neumann(max_steps=k, step_size=alpha))
        )
    )(_to_u(jnp.asarray(u)), _to_w(jnp.asarray(w_star)))
    assert _relerr(_from_u(g), expected) <= 1e-10
    assert int(info.matvecs) == k
    np.testing.assert_allclose(float(info.linear_residual_norm), np.linalg.norm(term), rtol=1e-9)


@pytest.mark.float64
def test_cg_k_iterations_equals_krylov_projection():
    arrays, gamma = _problem(3, cond=30.0)
    inner, outer = _losses(arrays, gamma)
    a, b, u = arrays["a"], arrays["b"], arrays["u"]
    _, w_star, g_w = _closed_form(arrays, gamma)
    k = 3
    # CG's K-th iterate is the A-orthogonal projection of A^{-1} g onto the Krylov space.
    krylov = np.stack([np.linalg.matrix_power(a, j) @ g_w for j in range(k)], axis=1)
    basis, _ = np.linalg.qr(krylov)
    v = basis @ np.linalg.solve(basis.T @ a @ basis, basis.T @ g_w)
    expected = b.T @ v + gamma * u
    g, info = hypergradient(
        outer,
        inner,
        _to_u(jnp.asarray(u)),
        _to_w(jnp.asarray(w_star)),
        Implicit(CG(max_steps=k, rtol=0.0)),
    )
    assert _relerr(_from_u(g), expected) <= 1e-10
    assert int(info.matvecs) == k


@pytest.mark.float64
def test_one_step_neumann_is_the_identity_approximation():
    arrays, gamma = _problem(4)
    inner, outer = _losses(arrays, gamma)
    b, u = arrays["b"], arrays["u"]
    _, w_star, g_w = _closed_form(arrays, gamma)
    g, info = hypergradient(
        outer,
        inner,
        _to_u(jnp.asarray(u)),
        _to_w(jnp.asarray(w_star)),
        Implicit(Neumann(max_steps=1, step_size=0.25)),
    )
    assert _relerr(_from_u(g), b.T @ (0.25 * g_w) + gamma * u) <= 1e-12
    assert int(info.matvecs) == 1  # the one product is the residual's


def _unroll_oracle(arrays, gamma, lr, num_steps, backprop_steps, w0):
    """GD on f: w_{t+1} = w_t - lr (A w_t - B u); Jacobian J_{t+1} = (I - lr A) J_t + lr B,
    with J reset to 0 before the last `backprop_steps` steps for truncation."""
    a, b, c, t, u = (arrays[k] for k in "abctu")
    w, jac = w0.copy(), np.zeros((D, P))
    for step in range(num_steps):
        if step == num_steps - backprop_steps:
            jac = np.zeros((D, P))
        w = w - lr * (a @ w - b @ u)
        jac = (np.eye(D) - lr * a) @ jac + lr * b
    return jac.T @ (c.T @ (c @ w - t)) + gamma * u, w


@pytest.mark.float64
@pytest.mark.parametrize("num_steps,backprop_steps", [(1, 1), (25, 25), (25, 7)])
def test_unroll_equals_linear_recursion(num_steps, backprop_steps):
    arrays, gamma = _problem(5, cond=20.0)
    inner, outer = _losses(arrays, gamma)
    lr = 0.04
    w0 = np.random.default_rng(9).normal(size=D)
    expected, w_t = _unroll_oracle(arrays, gamma, lr, num_steps, backprop_steps, w0)
    if backprop_steps == num_steps:
        method = FullUnroll(optax.sgd(lr), num_steps)
    else:
        method = TruncatedUnroll(optax.sgd(lr), num_steps, backprop_steps)
    g, info = jax.jit(lambda u, w: hypergradient(outer, inner, u, w, method))(
        _to_u(jnp.asarray(arrays["u"])), _to_w(jnp.asarray(w0))
    )
    assert _relerr(_from_u(g), expected) <= 1e-10
    np.testing.assert_allclose(_from_w(info.inner_params), w_t, rtol=1e-12, atol=1e-12)
    assert int(info.matvecs) == 0


@pytest.mark.float64
def test_checkpointed_unroll_equals_plain_and_memory_is_logarithmic():
    """A non-quadratic inner loss (so the backward pass needs every w_t): plain unrolling's
    compiled scratch memory grows linearly in T, the checkpointed unroll's only slowly."""
    d = 64
    rng = np.random.default_rng(6)
    target = jnp.asarray(rng.normal(size=d))

    def inner(u, w):
        return 0.5 * jnp.sum((w - u) ** 2) + 0.1 * jnp.sum(jnp.cos(w))

    def outer(u, w):
        return 0.5 * jnp.sum((w - target) ** 2)

    u, w0 = jnp.asarray(rng.normal(size=d)), jnp.zeros(d)

    def compiled(num_steps, branching):
        method = FullUnroll(optax.sgd(0.1), num_steps, checkpoint_branching=branching)
        return jax.jit(lambda u, w: hypergradient(outer, inner, u, w, method)[0])

    def temp_bytes(fn):
        return fn.lower(u, w0).compile().memory_analysis().temp_size_in_bytes

    plain, ckpt = compiled(256, None), compiled(256, 4)
    np.testing.assert_allclose(ckpt(u, w0), plain(u, w0), rtol=1e-12)
    plain_small, ckpt_small = compiled(64, None), compiled(64, 4)
    # Linear: 4x the steps, about 4x the memory (at least 3x). Checkpointed: one more level.
    assert temp_bytes(plain) >= 3 * temp_bytes(plain_small)
    assert temp_bytes(ckpt) <= 1.5 * temp_bytes(ckpt_small)
    assert temp_bytes(ckpt) < temp_bytes(plain) / 4


_SEEDS = st.integers(min_value=0, max_value=2**31 - 1)


@jax.jit
def _implicit_and_unrolled(arrays, gamma):
    inner, outer = _losses(arrays, gamma)
    u = _to_u(arrays["u"])
    w0 = _to_w(jnp.zeros(D, arrays["u"].dtype))
    lr = 1.0 / 3.0  # eig(A) in [1, 3]: (1 - 1/3)^400 ~ 1e-70, converged
    g_unroll, info = hypergradient(outer, inner, u, w0, FullUnroll(optax.sgd(lr), 400))
    g_implicit, _ = hypergradient(outer, inner, u, info.inner_params, Implicit(lx.Cholesky()))
    return _from_u(g_implicit), _from_u(g_unroll)


@pytest.mark.float64
@hypothesis.given(seed=_SEEDS)
@hypothesis.settings(max_examples=10)
def test_property_implicit_equals_unrolled_at_convergence(seed):
    arrays, gamma = _problem(seed, cond=3.0)
    g_implicit, g_unroll = _implicit_and_unrolled(arrays, gamma)
    assert _relerr(g_implicit, g_unroll) <= 1e-10


class _Counting(lx.AbstractLinearSolver):
    """Wraps a lineax solver and counts, at run time, every matvec the API hands to it."""

    inner: lx.AbstractLinearSolver
    bump: object = eqx.field(static=True)

    def init(self, operator, options):
        def counted(v):
            out = operator.mv(v)
            jax.debug.callback(self.bump, jax.tree.leaves(out)[0])
            return out

        tags = frozenset({lx.symmetric_tag} if lx.is_symmetric(operator) else ())
        wrapped = lx.FunctionLinearOperator(counted, operator.in_structure(), tags)
        return self.inner.init(wrapped, options)

    def compute(self, state, vector, options):
        return self.inner.compute(state, vector, options)

    def transpose(self, state, options):
        return self.inner.transpose(state, options)

    def conj(self, state, options):
        return self.inner.conj(state, options)

    def assume_full_rank(self):
        return self.inner.assume_full_rank()


@pytest.mark.parametrize(
    "make_solve",
    [lambda k: Neumann(max_steps=k, step_size=0.1), lambda k: CG(max_steps=k, rtol=0.0)],
    ids=["neumann", "cg"],
)
def test_matvec_count_is_exactly_k(make_solve):
    arrays, gamma = _problem(7, dtype=np.float32, cond=30.0)
    inner, outer = _losses(arrays, gamma)
    calls = []
    u = _to_u(jnp.asarray(arrays["u"]))
    w = _to_w(jnp.ones(D, jnp.float32))
    for k in (1, 4, 9):
        calls.clear()
        solve = _Counting(make_solve(k), lambda _: calls.append(1))
        # Only the count matters here (step 0.1 diverges on this Hessian: throw=False).
        method = Implicit(solve, throw=False)
        _, info = jax.jit(lambda u, w, m=method: hypergradient(outer, inner, u, w, m))(u, w)
        jax.effects_barrier()
        assert len(calls) == k
        assert int(info.matvecs) == k


@pytest.mark.float64
def test_min_norm_on_singular_inner_hessian():
    """Overparameterized inner least squares: H = X^T X is singular. CG from zero, the dense
    pseudo-inverse and lineax's SVD all equal the Moore-Penrose formula."""
    rng = np.random.default_rng(11)
    n, d, p = 4, 9, 3
    x = rng.normal(size=(n, d))
    bmat = rng.normal(size=(n, p))
    xv = rng.normal(size=(6, n)) @ x  # validation features in the row space of x
    tv = rng.normal(size=6)
    u0 = rng.normal(size=p)
    w = rng.normal(size=d)
    w = w - np.linalg.pinv(x) @ (x @ w - bmat @ u0)  # an interpolating inner solution

    def inner(u, w):
        r = jnp.asarray(x) @ w - jnp.asarray(bmat) @ u
        return 0.5 * r @ r

    def outer(u, w):
        r = jnp.asarray(xv) @ w - tv
        return 0.5 * r @ r

    g_w = xv.T @ (xv @ w - tv)
    expected = bmat.T @ x @ (np.linalg.pinv(x.T @ x) @ g_w)
    for solve, tol in [
        (CG(max_steps=50, rtol=1e-13), 1e-8),
        (lx.SVD(rcond=1e-10), 1e-8),
    ]:
        g, _ = hypergradient(outer, inner, jnp.asarray(u0), jnp.asarray(w), Implicit(solve))
        assert _relerr(g, expected) <= tol, solve


def test_vmap_over_outer_params_matches_loop():
    arrays, gamma = _problem(8, dtype=np.float32)
    inner, outer = _losses(arrays, gamma)
    us = jnp.asarray(np.random.default_rng(0).normal(size=(3, P)), jnp.float32)
    w = _to_w(jnp.ones(D, jnp.float32))
    method = Implicit(CG(max_steps=20, rtol=1e-6))
    fn = lambda uv: hypergradient(outer, inner, _to_u(uv), w, method)[0]
    batched = jax.jit(jax.vmap(fn))(us)
    for i in range(3):
        np.testing.assert_allclose(
            _from_u(batched)[i] if False else jnp.concatenate([batched[0][i], batched[1][i]]),
            _from_u(fn(us[i])),
            rtol=1e-5,
            atol=1e-6,
        )


def _unconverged_setup():
    arrays, gamma = _problem(9, dtype=np.float32, cond=50.0)
    inner, outer = _losses(arrays, gamma)
    u = _to_u(jnp.asarray(arrays["u"]))
    w, inner_info = solve_inner(inner, u, _to_w(jnp.zeros(D)), optax.sgd(0.01), max_steps=4)
    return inner, outer, u, w, inner_info


def test_unconverged_inner_is_flagged_with_maxiter_4():
    inner, outer, u, w, inner_info = _unconverged_setup()
    assert int(inner_info.steps) == 4 and not bool(inner_info.converged)
    method = Implicit(lx.Cholesky())
    with pytest.raises(Exception, match="not a solution"):
        g, _ = jax.jit(lambda u, w: hypergradient(outer, inner, u, w, method, inner_tol=1e-4))(u, w)
        jax.block_until_ready(g)
    g, info = hypergradient(outer, inner, u, w, method, inner_tol=1e-4, throw=False)
    assert info.result == RESULTS.not_a_solution and not bool(info.inner_converged)
    assert np.all(np.isfinite(_from_u(g)))
    # Without the opt-in check nothing is flagged.
    _, info = hypergradient(outer, inner, u, w, method)
    assert bool(info.inner_converged) and info.result == RESULTS.successful


def test_converged_inner_passes_the_check():
    arrays, gamma = _problem(10, dtype=np.float32)
    inner, outer = _losses(arrays, gamma)
    u = _to_u(jnp.asarray(arrays["u"]))
    w, inner_info = solve_inner(
        inner, u, _to_w(jnp.zeros(D)), optax.lbfgs(), max_steps=100, tol=1e-5
    )
    assert bool(inner_info.converged)
    g, info = hypergradient(
        outer, inner, u, w, Implicit(CG(max_steps=50, rtol=1e-6)), inner_tol=1e-4
    )
    assert bool(info.inner_converged) and np.all(np.isfinite(_from_u(g)))


def test_bad_input_errors():
    arrays, gamma = _problem(11, dtype=np.float32)
    inner, outer = _losses(arrays, gamma)
    u = _to_u(jnp.asarray(arrays["u"]))
    w = _to_w(jnp.ones(D))
    with pytest.raises(ValueError, match="max_steps"):
        Neumann(0, 0.1)
    with pytest.raises(ValueError, match="max_steps"):
        CG(-1)
    with pytest.raises(ValueError, match="step_size"):
        Neumann(3, 0.0)
    with pytest.raises(TypeError, match="linear_solver"):
        Implicit("cg")
    with pytest.raises(ValueError, match="backprop_steps"):
        TruncatedUnroll(optax.sgd(0.1), 5, 6)
    with pytest.raises(ValueError, match="num_steps"):
        FullUnroll(optax.sgd(0.1), 0)
    with pytest.raises(TypeError, match="optimizer"):
        FullUnroll("sgd", 3)
    with pytest.raises(TypeError, match="solve"):
        Implicit("cg")
    with pytest.raises(TypeError, match="method"):
        hypergradient(outer, inner, u, w, "implicit")
    # Mismatched pytrees: w with a different structure from what the objectives expect.
    with pytest.raises(ValueError, match="inner_params"):
        hypergradient(outer, inner, u, {"a": jnp.ones(2)}, Implicit(CG(max_steps=3, rtol=0.0)))
    # u and w swapped.
    with pytest.raises(ValueError, match="outer_params"):
        hypergradient(outer, inner, w, u, Implicit(CG(max_steps=3, rtol=0.0)))
    with pytest.raises(ValueError, match="scalar"):
        hypergradient(lambda u, w: _from_w(w), inner, u, w, Implicit(CG(max_steps=3, rtol=0.0)))
    with pytest.raises(TypeError, match="floating"):
        hypergradient(outer, inner, u, jnp.ones(D, jnp.int32), Implicit(CG(max_steps=3, rtol=0.0)))


def test_non_psd_system_to_cg_raises():
    def inner(u, w):  # indefinite Hessian diag(1, -1)
        return 0.5 * (w[0] ** 2 - w[1] ** 2) - w @ u

    outer = lambda u, w: 0.5 * jnp.sum(w**2)
    with pytest.raises(Exception, match="not positive definite"):
        g, _ = jax.jit(
            lambda u, w: hypergradient(outer, inner, u, w, Implicit(CG(max_steps=5, rtol=0.0)))
        )(jnp.ones(2), jnp.array([1.0, -1.0]))
        jax.block_until_ready(g)


@pytest.mark.float64
def test_run_inner_optimizer_matches_gd_and_solve_inner_lbfgs_converges():
    arrays, gamma = _problem(12)
    inner, _ = _losses(arrays, gamma)
    _, w_star, _ = _closed_form(arrays, gamma)
    u = _to_u(jnp.asarray(arrays["u"]))
    _, w_expected = _unroll_oracle(arrays, gamma, 0.1, 7, 7, np.zeros(D))
    w = run_inner_optimizer(inner, u, _to_w(jnp.zeros(D)), optax.sgd(0.1), 7)
    np.testing.assert_allclose(_from_w(w), w_expected, rtol=1e-12)
    w, info = solve_inner(inner, u, _to_w(jnp.zeros(D)), optax.lbfgs(), max_steps=200, tol=1e-12)
    assert bool(info.converged) and int(info.steps) < 200
    np.testing.assert_allclose(_from_w(w), w_star, rtol=1e-10)


@pytest.mark.float64
def test_damped_implicit_solve_matches_the_damped_closed_form():
    arrays, gamma = _problem(5)
    inner, outer = _losses(arrays, gamma)
    a, b, u = arrays["a"], arrays["b"], arrays["u"]
    _, w_star, g_w = _closed_form(arrays, gamma)
    expected = b.T @ np.linalg.solve(a + 0.3 * np.eye(D), g_w) + gamma * u
    g, _ = hypergradient(
        outer,
        inner,
        _to_u(jnp.asarray(u)),
        _to_w(jnp.asarray(w_star)),
        Implicit(lx.Cholesky(), damping=0.3),
    )
    assert _relerr(_from_u(g), expected) <= 1e-10
    with pytest.raises(ValueError, match="damping"):
        Implicit(damping=-1.0)


def test_whole_equinox_models_as_inner_and_outer_params():
    """An `eqx.nn.MLP` with `jnp.tanh` (a non-array leaf) works as the inner parameters."""
    mlp = eqx.nn.MLP(2, 1, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 2))
    y = jnp.sin(x[:, 0])

    def inner(log_lam, model):
        pred = jax.vmap(model)(x)[:, 0]
        params = eqx.filter(model, eqx.is_inexact_array)
        penalty = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return 0.5 * jnp.mean((pred - y) ** 2) + 0.5 * jnp.exp(log_lam) * penalty

    def outer(log_lam, model):
        return 0.5 * jnp.mean((jax.vmap(model)(x)[:, 0] - y) ** 2)

    u = jnp.asarray(-2.0)
    # The untrained MLP is not at a minimum (its Hessian is indefinite): throw=False, since this
    # test is about whole models as parameters, not about the solve.
    implicit = Implicit(CG(max_steps=50, rtol=0.0), throw=False)
    for method in (implicit, FullUnroll(optax.sgd(0.1), 5)):
        g, info = hypergradient(outer, inner, u, mlp, method)
        assert g.shape == () and bool(jnp.isfinite(g))
        assert info.inner_params.activation is jnp.tanh
    # The unrolled hypergradient equals plain autodiff through the same steps.
    steps = lambda lam: run_inner_optimizer(
        lambda ll, p: inner(ll, eqx.combine(p, static)), lam, params, optax.sgd(0.1), 5
    )
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    expected = jax.grad(lambda lam: outer(lam, eqx.combine(steps(lam), static)))(u)
    g, _ = hypergradient(outer, inner, u, mlp, FullUnroll(optax.sgd(0.1), 5))
    np.testing.assert_allclose(g, expected, rtol=1e-5)
