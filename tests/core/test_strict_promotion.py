"""The library's own tests run under strict dtype promotion (tests/conftest.py)."""

import jax
import jax.numpy as jnp
import pytest


def test_mixed_dtypes_raise_here():
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    with pytest.raises(jax.dtypes.TypePromotionError):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.bfloat16)
    with pytest.raises(jax.dtypes.TypePromotionError):
        2.5 * jnp.arange(3)
