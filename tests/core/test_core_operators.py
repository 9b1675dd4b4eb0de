"""The HVP and the Hessian operator against jax.hessian on pytree parameters."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from respax.core import hvp, hvp_operator


def _loss(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b"])
    return jnp.sum(jnp.sin(h @ params["w2"])) + 0.1 * jnp.sum(params["w1"] ** 4)


def _params(dtype):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (3, 4), dtype),
        "b": jnp.zeros(4, dtype),
        "w2": jax.random.normal(k2, (4, 2), dtype),
    }


@pytest.mark.float64
def test_hvp_operator_matches_dense_hessian():
    params = _params(jnp.float64)
    x = jnp.linspace(-1, 1, 15, dtype=jnp.float64).reshape(5, 3)
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda f: _loss(unravel(f), x))(flat)
    op = hvp_operator(_loss, params, x)
    assert lx.is_symmetric(op)
    matvec = jax.jit(lambda v: ravel_pytree(op.mv(unravel(v)))[0])
    ours = jax.vmap(matvec)(jnp.eye(flat.size))
    np.testing.assert_allclose(ours, dense, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lx.materialise(op).as_matrix(), dense, rtol=1e-10, atol=1e-10)


def test_hvp_float32_and_vmap():
    params = _params(jnp.float32)
    x = jnp.ones((2, 3))
    tangents = jax.tree.map(lambda p: jnp.stack([jnp.ones_like(p), -jnp.ones_like(p)]), params)
    out = jax.jit(jax.vmap(lambda t: hvp(_loss, params, t, x)))(tangents)
    single = hvp(_loss, params, jax.tree.map(lambda t: t[0], tangents), x)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(single), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a[1], -b, rtol=1e-5, atol=1e-5)
