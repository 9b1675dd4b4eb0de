"""`Exact` accumulates in the parameters' dtype (or the one it is given), not the x64 flag's."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.core import GaussianLoss
from respax.interp import Exact, fit_factors


def _apply(model, x):
    return model(x)


def _problem(dtype):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    model = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=k1)
    model = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
    x = jax.random.normal(k2, (10, 3), dtype)
    y = jax.random.normal(k3, (10, 2), dtype)
    return model, (x, y)


@pytest.mark.float64
@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_float32_parameters_under_x64_accumulate_in_float32_unless_asked(curvature):
    model, train = _problem(jnp.float32)
    loss = GaussianLoss()
    f32 = fit_factors(_apply, loss, model, train, strategy=Exact(curvature=curvature))
    f64 = fit_factors(
        _apply, loss, model, train, strategy=Exact(curvature=curvature, dtype="float64")
    )
    assert {m.dtype for m in f32.matrices} == {jnp.dtype(jnp.float32)}
    assert {m.dtype for m in f64.matrices} == {jnp.dtype(jnp.float64)}
    # The same curvature either way, to float32 accuracy.
    for a, b in zip(f32.matrices, f64.matrices, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_float64_without_x64_is_an_error():
    with jax.enable_x64(False), pytest.raises(ValueError, match="dtype"):
        Exact(dtype="float64")
    with pytest.raises(ValueError, match="dtype"):
        Exact(dtype="bfloat16")
