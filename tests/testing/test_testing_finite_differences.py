"""Tests of `check_directional_derivative`: correct derivatives pass, wrong ones fail."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import respax.testing as rt

# Few distinct shapes, and jitted functions at module level, so that JAX's compilation caches
# are hit across hypothesis examples (eager JAX compiles every primitive for every new shape).
_small_pytrees = rt.pytrees(max_leaves=3, max_dims=2, max_side=2, min_value=-2.0, max_value=2.0)


@jax.jit
def _mixing(tree):
    """A smooth map between pytrees that couples every input leaf into every output."""
    leaves = jax.tree.leaves(tree)
    total = sum(jnp.sum(jnp.tanh(leaf)) for leaf in leaves)
    return {
        "elementwise": jax.tree.map(lambda leaf: jnp.sin(leaf) * leaf + 0.1 * total, tree),
        "scalar": total**2,
    }


@jax.jit
def _cube(tree):
    return jax.tree.map(lambda leaf: leaf**3, tree)


@jax.custom_jvp
def _exp_with_scaled_jvp(x, scale):
    """`exp` with a custom JVP that is `scale` times the true one (wrong unless scale == 1)."""
    return jnp.exp(x)


@_exp_with_scaled_jvp.defjvp
def _exp_with_scaled_jvp_rule(primals, tangents):
    (x, scale), (x_dot, _) = primals, tangents
    return jnp.exp(x), scale * jnp.exp(x) * x_dot


@jax.jit
def _tree_exp_with_scaled_jvp(tree, scale):
    return jax.tree.map(lambda leaf: _exp_with_scaled_jvp(leaf, scale), tree)


def _scaled_exp(scale):
    return lambda tree: _tree_exp_with_scaled_jvp(tree, scale)


@jax.custom_vjp
def _exp_with_scaled_vjp(x, scale):
    """`exp` with a custom VJP that is `scale` times the true one."""
    return jnp.exp(x)


_exp_with_scaled_vjp.defvjp(
    lambda x, scale: (jnp.exp(x), (jnp.exp(x), scale)),
    lambda residuals, g: (residuals[1] * residuals[0] * g, jnp.zeros_like(residuals[1])),
)
_jitted_exp_with_scaled_vjp = jax.jit(_exp_with_scaled_vjp)


def _scaled_exp_vjp(scale):
    return lambda x: _jitted_exp_with_scaled_vjp(x, scale)


@pytest.mark.float64
@hypothesis.settings(max_examples=10)
@given(st.data())
def test_finite_difference_matches_the_closed_form(data):
    x = data.draw(_small_pytrees)
    v = data.draw(rt.pytrees_like(x, min_value=-1.0, max_value=1.0))
    check = rt.check_directional_derivative(_cube, x, v)
    expected = jax.tree.map(lambda a, b: 3 * a**2 * b, x, v)
    rt.assert_tree_allclose(check.finite_difference, expected, rtol=1e-8, atol=1e-8)
    rt.assert_tree_allclose(check.derivative, expected, rtol=1e-12, atol=1e-12)
    assert check.mode == "jvp" and check.error <= check.tolerance


@pytest.mark.float64
@hypothesis.settings(max_examples=10)
@given(st.data())
def test_correct_derivatives_pass_float64(data):
    x = data.draw(_small_pytrees)
    v = data.draw(rt.pytrees_like(x))
    check = rt.check_directional_derivative(_mixing, x, v, mode="both")
    assert check.mode == "vjp"
    # default float64 tolerance is far looser than the error on this smooth function
    assert check.error < 1e-3 * check.tolerance + 1e-12


@hypothesis.settings(max_examples=10)
@given(st.data())
def test_correct_derivatives_pass_float32(data):
    x = data.draw(_small_pytrees)
    v = data.draw(rt.pytrees_like(x))
    rt.check_directional_derivative(_mixing, x, v, mode="both")


@hypothesis.settings(max_examples=10)
@given(rt.small_mlps(in_size=4, out_size=3), st.data())
def test_correct_derivatives_of_mlps_pass(mlp, data):
    x = data.draw(rt.pytrees_like(jnp.zeros(4), min_value=-3.0, max_value=3.0))
    v = data.draw(rt.pytrees_like(x))
    rt.check_directional_derivative(eqx.filter_jit(mlp), x, v, mode="both")


@pytest.mark.float64
@given(
    st.floats(1e-3, 0.5) | st.floats(-2.0, -1e-3),
    _small_pytrees,
    st.data(),
)
def test_wrong_jvp_fails_float64(relative_error, x, data):
    v = data.draw(rt.pytrees_like(x, min_value=0.5, max_value=1.0))
    rt.check_directional_derivative(_scaled_exp(1.0), x, v)
    with pytest.raises(AssertionError, match="jvp of `f` disagrees"):
        rt.check_directional_derivative(_scaled_exp(1.0 + relative_error), x, v)


@given(
    st.floats(0.05, 1.0) | st.floats(-2.0, -0.05),
    _small_pytrees,
    st.data(),
)
def test_wrong_jvp_fails_float32(relative_error, x, data):
    v = data.draw(rt.pytrees_like(x, min_value=0.5, max_value=1.0))
    rt.check_directional_derivative(_scaled_exp(1.0), x, v)
    with pytest.raises(AssertionError, match="jvp of `f` disagrees"):
        rt.check_directional_derivative(_scaled_exp(1.0 + relative_error), x, v)


@pytest.mark.float64
@given(st.floats(1e-3, 0.5), st.integers(0, 2**32 - 1))
def test_wrong_custom_vjp_fails_and_right_one_passes(relative_error, seed):
    x = jnp.linspace(-1.0, 1.0, 5)
    v = jnp.linspace(0.5, 1.0, 5)
    rt.check_directional_derivative(_scaled_exp_vjp(1.0), x, v, mode="vjp", seed=seed)
    with pytest.raises(AssertionError, match="vjp of `f` disagrees"):
        rt.check_directional_derivative(
            _scaled_exp_vjp(1.0 + relative_error), x, v, mode="vjp", cotangent=jnp.ones(5)
        )


@pytest.mark.float64
def test_fourth_order_stencil_is_more_accurate():
    x, v = jnp.array([0.3, 1.1]), jnp.array([1.0, -0.5])
    second = rt.check_directional_derivative(jnp.sin, x, v, step=1e-2, order=2, rtol=1e-3)
    fourth = rt.check_directional_derivative(jnp.sin, x, v, step=1e-2, order=4)
    exact = jnp.cos(x) * v
    # truncation errors: h^2 |f'''| / 6 ~ 1e-5 and h^4 |f^(5)| / 30 ~ 3e-10
    assert 1e-6 < np.abs(second.finite_difference - exact).max() < 3e-5
    assert np.abs(fourth.finite_difference - exact).max() < 1e-9


def test_zero_direction_and_scalar_inputs():
    check = rt.check_directional_derivative(jnp.sin, jnp.asarray(0.5), jnp.asarray(0.0))
    assert check.error == 0.0
    rt.check_directional_derivative(lambda x: x * jnp.exp(x), 0.5, 1.0, mode="both")


def test_tight_tolerance_fails_float32():
    # With a coarse step the truncation error (~2e-3) is far above the rounding floor (~1e-5)
    # of float32, so asking for a tiny tolerance must fail.
    x, v = jnp.array([0.3, 1.1]), jnp.array([1.0, -0.5])
    with pytest.raises(AssertionError):
        rt.check_directional_derivative(jnp.sin, x, v, rtol=0.0, atol=1e-12, step=1e-1)


def test_bad_arguments():
    x = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match="structure"):
        rt.check_directional_derivative(jnp.sin, x, [jnp.ones(2)])
    with pytest.raises(ValueError, match="shapes"):
        rt.check_directional_derivative(jnp.sin, x, {"a": jnp.ones(3)})
    # Under the test suite's jaxtyping hook the annotation rejects it first; without it, our check.
    with pytest.raises(TypeError, match="floating|parameter 'x'"):
        rt.check_directional_derivative(jnp.sin, {"a": jnp.ones(2, jnp.int32)}, x)
    with pytest.raises((ValueError, TypeError), match="mode"):
        rt.check_directional_derivative(jnp.sin, x, x, mode="hvp")
    with pytest.raises(ValueError, match="step"):
        rt.check_directional_derivative(jnp.sin, x, x, step=0.0)
    with pytest.raises(ValueError, match="at least one"):
        rt.check_directional_derivative(jnp.sin, {}, {})
