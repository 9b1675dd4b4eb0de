"""respax.core's CG, Neumann and LiSSA: dense oracles in float64, float32 diagnostics that tell
the truth, exact matvec counts, results as values, jit/vmap/grad, bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from respax.core import (
    CG,
    RESULTS,
    Neumann,
    SolveInfo,
    as_operator,
    damped,
    default_rtol,
    linear_solve_with_info,
    lissa,
)
from respax.testing import spd_matrices


def _spd(seed, n, cond, dtype=jnp.float64):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    eigs = np.logspace(0, np.log10(cond), n)
    return jnp.asarray((q * eigs) @ q.T, dtype)


def _op(a):
    return lx.MatrixLinearOperator(a, lx.symmetric_tag)


def _krylov_oracle(a, b, k):
    """The CG iterate after k steps: the A-norm-optimal point of the k-dim Krylov subspace."""
    a, b = np.asarray(a), np.asarray(b)
    # an orthonormal Krylov basis by Arnoldi with re-orthogonalisation (a QR of the power basis
    # b, Ab, ... loses the subspace to rounding once cond^k is large)
    basis = [b / np.linalg.norm(b)]
    for _ in range(k - 1):
        w = a @ basis[-1]
        for _ in range(2):
            for u in basis:
                w = w - (u @ w) * u
        basis.append(w / np.linalg.norm(w))
    v = np.stack(basis, 1)
    return v @ np.linalg.solve(v.T @ a @ v, v.T @ b)


class _Counter:
    def __init__(self):
        self.count = 0

    def __call__(self, *_):
        self.count += 1


def _counting_operator(a, counter):
    def matvec(v):
        jax.debug.callback(counter)
        return a @ v

    return as_operator(matvec, jnp.zeros(a.shape[0], a.dtype))


@pytest.mark.float64
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 10),
    k=st.integers(1, 10),
    cond=st.floats(1.0, 1e3),
)
@settings(max_examples=12)
def test_cg_iterate_is_the_krylov_minimizer(seed, n, k, cond):
    k = min(k, n)
    a = _spd(seed, n, cond)
    b = jax.random.normal(jax.random.key(seed + 1), (n,), jnp.float64)
    x, info = linear_solve_with_info(_op(a), b, CG(max_steps=k, rtol=0.0), throw=False)
    oracle = _krylov_oracle(a, b, k)
    # CG in floating point drifts from the exact Krylov iterate as its residuals lose
    # orthogonality: measured 1.6e-5 relative at n = k = 10, cond 1e3 (1e-6 at cond 496)
    assert np.linalg.norm(x - oracle) <= 1e-8 * cond * n * np.linalg.norm(oracle)
    assert int(info.num_steps) <= k


@pytest.mark.float64
@given(a=spd_matrices(st.integers(2, 12), condition_number=st.floats(1.0, 1e4)))
@settings(max_examples=10)
def test_cg_to_tolerance_matches_the_dense_solve(a):
    b = jnp.arange(1.0, a.shape[0] + 1.0)
    x, info = linear_solve_with_info(_op(a), b, CG(max_steps=200, rtol=1e-12))
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8)
    assert bool(info.converged) and info.residual == "recursive"
    assert float(info.relative_residual) <= 1e-12


def test_default_rtol_follows_the_dtype():
    assert default_rtol(jnp.float32) == pytest.approx(np.finfo(np.float32).eps ** 0.5)
    assert default_rtol(jnp.float64) == pytest.approx(np.finfo(np.float64).eps ** 0.5)


def test_fixed_budget_cg_spends_exactly_k_matvecs():
    a = _spd(3, 20, 100.0, jnp.float32)
    counter = _Counter()
    x, info = linear_solve_with_info(
        _counting_operator(a, counter), jnp.ones(20), CG(max_steps=7, rtol=0.0)
    )
    jax.block_until_ready(x)
    assert counter.count == 7
    assert int(info.matvecs) == 7 and int(info.num_steps) == 7
    assert info.result == RESULTS.successful  # a fixed budget has nothing to fail


def test_true_residual_costs_one_matvec_and_is_reported_as_such():
    a = _spd(3, 20, 100.0, jnp.float32)
    counter = _Counter()
    solver = CG(max_steps=7, rtol=0.0, true_residual=True)
    x, info = linear_solve_with_info(_counting_operator(a, counter), jnp.ones(20), solver)
    jax.block_until_ready(x)
    assert counter.count == 8 and int(info.matvecs) == 8
    assert info.residual == "true"
    np.testing.assert_allclose(info.residual_norm, jnp.linalg.norm(jnp.ones(20) - a @ x), 1e-5)


def test_float32_cg_does_not_claim_a_tolerance_it_cannot_reach():
    """n=200, condition 1e4, float32: asking for 1e-10 with the true residual is an honest failure.

    The recursive residual drifts below the truth in float32; with `true_residual=True` the
    decision uses the recomputed residual and reports `max_steps_reached`.
    """
    a = _spd(0, 200, 1e4, jnp.float32)
    b = jax.random.normal(jax.random.key(1), (200,), jnp.float32)
    solver = CG(max_steps=1000, rtol=1e-10, true_residual=True)
    x, info = linear_solve_with_info(_op(a), b, solver, throw=False)
    true_rel = float(jnp.linalg.norm(b - a @ x) / jnp.linalg.norm(b))
    assert true_rel > 1e-10
    assert info.result == RESULTS.max_steps_reached
    np.testing.assert_allclose(float(info.relative_residual), true_rel, rtol=1e-3)
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.block_until_ready(linear_solve_with_info(_op(a), b, solver)[0])


def test_float32_cg_default_tolerance_converges_truthfully():
    """At condition 1e2 the float32 floor is below the default sqrt(eps); at 1e4 it is not, and
    the same call says so instead of claiming convergence."""
    a = _spd(0, 200, 1e2, jnp.float32)
    b = jax.random.normal(jax.random.key(1), (200,), jnp.float32)
    x, info = linear_solve_with_info(_op(a), b, CG(max_steps=1000, true_residual=True))
    true_rel = float(jnp.linalg.norm(b - a @ x) / jnp.linalg.norm(b))
    assert bool(info.converged)
    assert true_rel <= default_rtol(jnp.float32)
    hard = _spd(0, 200, 1e4, jnp.float32)
    x, info = linear_solve_with_info(
        _op(hard), b, CG(max_steps=1000, true_residual=True), throw=False
    )
    true_rel = float(jnp.linalg.norm(b - hard @ x) / jnp.linalg.norm(b))
    assert bool(info.converged) == (true_rel <= default_rtol(jnp.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cg_on_a_consistent_singular_psd_system_converges_to_the_min_norm_solution(dtype, request):
    """Breakdown on a consistent PSD system is convergence, not an error (one zero eigenvalue).

    Also: running with a tight tolerance does not make the answer worse.
    """
    if dtype == jnp.float64:
        request.getfixturevalue("float64")
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(30, 30)))
    eigs = np.concatenate([[0.0], np.logspace(-1, 1, 29)])  # condition 100 on the range
    a = jnp.asarray((q * eigs) @ q.T, dtype)
    z = np.random.default_rng(1).normal(size=30)
    b = jnp.asarray(a @ z, dtype)  # consistent: b is in the range of A
    oracle = z - (q[:, 0] @ z) * q[:, 0]  # the min-norm solution: z without its null component
    eps = float(jnp.finfo(dtype).eps)
    for rtol in (None, 1e-6, 1e-10):
        x, info = linear_solve_with_info(_op(a), b, CG(max_steps=300, rtol=rtol), throw=False)
        assert info.result in (RESULTS.successful, RESULTS.max_steps_reached), rtol
        err = np.linalg.norm(np.asarray(x, np.float64) - oracle) / np.linalg.norm(oracle)
        # error <= condition x residual, the residual being at least the dtype's floor
        used = default_rtol(dtype) if rtol is None else rtol
        assert err <= 100 * max(used, 1e3 * eps), (rtol, err)


def test_cg_reports_an_indefinite_operator_and_raises_with_throw():
    a = jnp.diag(jnp.array([1.0, -2.0, 3.0]))
    b = jnp.ones(3)
    _, info = linear_solve_with_info(_op(a), b, CG(max_steps=3), throw=False)
    assert info.result == RESULTS.indefinite
    with pytest.raises(Exception, match="not positive definite"):
        jax.block_until_ready(linear_solve_with_info(_op(a), b, CG(max_steps=3))[0])


@pytest.mark.float64
def test_cg_with_a_preconditioner_option_solves_in_fewer_steps():
    a = _spd(5, 40, 1e4)
    b = jnp.ones(40)
    precond = lx.MatrixLinearOperator(jnp.linalg.inv(a), lx.positive_semidefinite_tag)
    solver = CG(max_steps=200, rtol=1e-10)
    plain, info_plain = linear_solve_with_info(_op(a), b, solver)
    pre, info_pre = linear_solve_with_info(_op(a), b, solver, options={"preconditioner": precond})
    np.testing.assert_allclose(pre, np.linalg.solve(a, b), rtol=1e-8)
    assert int(info_pre.num_steps) <= 2 < int(info_plain.num_steps)


@pytest.mark.float64
def test_damped_operator_and_lineax_differentiation_through_cg():
    a = _spd(2, 6, 50.0)
    b = jnp.arange(1.0, 7.0)
    x, _ = linear_solve_with_info(damped(_op(a), 0.5), b, CG(max_steps=50, rtol=1e-12))
    np.testing.assert_allclose(x, np.linalg.solve(a + 0.5 * np.eye(6), b), rtol=1e-9)

    def f(scale):
        op = lx.MatrixLinearOperator(scale * a, lx.symmetric_tag)
        return jnp.sum(lx.linear_solve(op, b, CG(max_steps=50, rtol=1e-12)).value)

    # sum((s A)^{-1} b) = sum(A^{-1} b) / s, so the derivative at s = 2 is -sum(A^{-1} b) / 4.
    np.testing.assert_allclose(jax.grad(f)(2.0), -np.sum(np.linalg.solve(a, b)) / 4.0, rtol=1e-7)


@pytest.mark.float64
@given(seed=st.integers(0, 1000), k=st.integers(1, 30), fraction=st.floats(0.05, 0.95))
@settings(max_examples=10)
def test_neumann_is_the_truncated_series(seed, k, fraction):
    a = _spd(seed, 8, 20.0)
    b = jax.random.normal(jax.random.key(seed), (8,), jnp.float64)
    step = fraction * 2.0 / 20.0
    x, info = linear_solve_with_info(_op(a), b, Neumann(max_steps=k, step_size=step))
    m = np.eye(8) - step * np.asarray(a)
    oracle = step * sum(np.linalg.matrix_power(m, j) @ np.asarray(b) for j in range(k))
    np.testing.assert_allclose(x, oracle, rtol=1e-9, atol=1e-12)
    expected_res = np.linalg.norm(np.linalg.matrix_power(m, k) @ np.asarray(b))
    np.testing.assert_allclose(info.residual_norm, expected_res, rtol=1e-9, atol=1e-14)
    assert int(info.matvecs) == k and bool(info.converged)


def test_neumann_exact_matvec_count_and_divergence_is_a_value():
    a = _spd(1, 10, 10.0, jnp.float32)
    counter = _Counter()
    x, info = linear_solve_with_info(
        _counting_operator(a, counter), jnp.ones(10), Neumann(max_steps=9, step_size=0.05)
    )
    jax.block_until_ready(x)
    assert counter.count == 9 and int(info.matvecs) == 9
    # step * lambda_max = 0.25 * 10 > 2: the series diverges.
    _, info = linear_solve_with_info(
        _op(a), jnp.ones(10), Neumann(max_steps=40, step_size=0.25), throw=False
    )
    assert info.result == RESULTS.diverged and float(info.relative_residual) > 1.0
    with pytest.raises(Exception, match="diverged"):
        jax.block_until_ready(
            linear_solve_with_info(_op(a), jnp.ones(10), Neumann(max_steps=40, step_size=0.25))
        )


def test_solvers_work_under_jit_and_vmap_over_right_hand_sides():
    a = _spd(4, 6, 10.0, jnp.float32)

    @jax.jit
    def solve(b):
        return linear_solve_with_info(_op(a), b, CG(max_steps=30, rtol=1e-5))

    bs = jax.random.normal(jax.random.key(0), (5, 6))
    xs, infos = jax.vmap(solve)(bs)
    np.testing.assert_allclose(xs @ a.T, bs, rtol=1e-3, atol=1e-4)
    assert infos.num_steps.shape == (5,)


def test_solve_info_from_a_lineax_direct_solve_recomputes_the_true_residual():
    a = _spd(4, 5, 10.0, jnp.float32)
    b = jnp.ones(5)
    sol = lx.linear_solve(_op(a), b, lx.LU())
    info = SolveInfo.from_solution(sol, _op(a), b)
    assert info.residual == "true" and bool(info.converged)
    assert float(info.relative_residual) < 1e-5
    bare = SolveInfo.from_solution(sol)
    assert bare.residual == "unknown" and bool(jnp.isnan(bare.residual_norm))


def test_cg_on_a_pytree_operator():
    like = {"a": jnp.ones(2), "b": jnp.ones(3)}
    op = as_operator(lambda v: jax.tree.map(lambda x: 2.0 * x, v), like)
    x, info = linear_solve_with_info(op, like, CG(max_steps=5))
    np.testing.assert_allclose(x["a"], 0.5)
    np.testing.assert_allclose(x["b"], 0.5)
    assert bool(info.converged)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CG(max_steps=0), "max_steps"),
        (lambda: CG(max_steps=3, rtol=-1.0), "rtol"),
        (lambda: CG(max_steps=3, atol=float("nan")), "atol"),
        (lambda: Neumann(max_steps=3, step_size=0.0), "step_size"),
        (lambda: Neumann(max_steps=1.5, step_size=0.1), "max_steps"),
    ],
)
def test_bad_solver_settings_name_the_argument(make, match):
    # A wrong type is a TypeError (from the runtime type checker when it is on), a wrong value
    # a ValueError; both name the argument.
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_bad_operators_are_clear_errors():
    with pytest.raises(ValueError, match="symmetric"):
        linear_solve_with_info(lx.MatrixLinearOperator(jnp.eye(2)), jnp.ones(2), CG(max_steps=2))
    with pytest.raises(TypeError, match="solver"):
        linear_solve_with_info(_op(jnp.eye(2)), jnp.ones(2), "cg")
    with pytest.raises(ValueError, match="like"):
        as_operator(lambda v: v)
    with pytest.raises(TypeError, match="operator"):
        as_operator("not an operator", jnp.ones(2))


@pytest.mark.float64
def test_lissa_with_a_fixed_batch_is_a_neumann_series():
    a = _spd(9, 5, 10.0)
    b = jnp.arange(1.0, 6.0)
    x, info = lissa(
        lambda batch, v: batch @ v,
        b,
        lambda key: a,
        key=jax.random.key(0),
        max_steps=12,
        scale=20.0,
        damping=0.3,
    )
    expected, _ = linear_solve_with_info(
        damped(_op(a), 0.3), b, Neumann(max_steps=13, step_size=1 / 20.0)
    )
    np.testing.assert_allclose(x, expected, rtol=1e-10)
    assert int(info.matvecs) == 12 and info.residual == "update"
    assert bool(info.converged)


@pytest.mark.float64
def test_lissa_stochastic_minibatches_converge_in_expectation():
    """H = mean of per-example rank-one terms; LiSSA samples single examples."""
    feats = jax.random.normal(jax.random.key(1), (64, 4), jnp.float64)
    h = feats.T @ feats / 64
    b = jnp.ones(4)
    sample = lambda key: feats[jax.random.randint(key, (8,), 0, 64)]
    hvp = lambda batch, v: batch.T @ (batch @ v) / batch.shape[0]
    run = jax.jit(
        jax.vmap(
            lambda key: lissa(hvp, b, sample, key=key, max_steps=400, scale=10.0, damping=0.5)[0]
        )
    )
    estimates = run(jax.random.split(jax.random.key(2), 200))
    np.testing.assert_allclose(
        estimates.mean(0), jnp.linalg.solve(h + 0.5 * jnp.eye(4), b), rtol=0.05
    )


def test_lissa_requires_a_key_and_flags_divergence():
    with pytest.raises(TypeError, match="key"):
        lissa(lambda batch, v: v, jnp.ones(2), lambda k: None, max_steps=2, scale=2.0)
    # scale below lambda_max: the recursion blows up to inf.
    _, info = lissa(
        lambda batch, v: 100.0 * v,
        jnp.ones(2),
        lambda k: None,
        key=jax.random.key(0),
        max_steps=400,
        scale=1.0,
        throw=False,
    )
    assert info.result == RESULTS.diverged
