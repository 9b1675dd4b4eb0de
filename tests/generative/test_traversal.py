"""Latent traversals: against decoding each swept code by hand, the swept / fixed latents, a
linear decoder's closed form, the MR-VAE's β, jit, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from respax.generative import latent_traversal, mlp_vae


class _LinearDecoder(eqx.Module):
    """`decode(z) = W z + b`: the traversal of latent d is `W z + b + (v - z_d) W[:, d]`."""

    w: jax.Array
    b: jax.Array

    def decode(self, z, beta=None):
        return self.w @ z + self.b


@pytest.mark.float64
def test_traversal_of_a_linear_decoder_is_its_closed_form():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    dec = _LinearDecoder(jax.random.normal(k1, (6, 4)), jax.random.normal(k2, (6,)))
    z = jax.random.normal(k3, (4,))
    values = jnp.linspace(-3.0, 3.0, 5)
    out = latent_traversal(dec, z, values, dims=(3, 1))
    for i, d in enumerate((3, 1)):
        expected = (dec.w @ z + dec.b)[None] + (values - z[d])[:, None] * dec.w[:, d][None]
        np.testing.assert_allclose(out[i], expected, rtol=1e-12, atol=1e-12)


_LIN = _LinearDecoder(
    jnp.asarray(np.random.default_rng(0).normal(size=(5, 4))), jnp.asarray([0.5, -1.0, 0, 2, 1])
)
_TRAVERSE = jax.jit(latent_traversal, static_argnames="dims")


@settings(max_examples=15)
@given(
    z=st.lists(st.floats(-5, 5), min_size=4, max_size=4),
    v=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    dims=st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
)
def test_traversal_property_only_the_swept_latent_moves(z, v, dims):
    # A linear decoder recovers the codes: row i, column j is the code z with z[dims[i]] = v[j].
    z, v = jnp.asarray(z, jnp.float32), jnp.asarray(v, jnp.float32)
    out = _TRAVERSE(_LIN, z, v, dims=tuple(dims))
    codes = np.asarray(jnp.linalg.lstsq(_LIN.w, (out - _LIN.b).reshape(-1, 5).T)[0]).T
    expected = np.tile(np.asarray(z), (len(dims) * 3, 1)).reshape(len(dims), 3, 4)
    for i, d in enumerate(dims):
        expected[i, :, d] = np.asarray(v)
    np.testing.assert_allclose(codes.reshape(len(dims), 3, 4), expected, atol=1e-3)


@pytest.mark.float64
def test_traversal_decodes_each_swept_code():
    vae = mlp_vae((12,), (8,), 3, dtype=jnp.float64, key=jax.random.key(1))
    z = jnp.asarray([0.3, -1.0, 2.0])
    values = jnp.asarray([-1.5, 0.0, 0.7])
    out = jax.jit(latent_traversal, static_argnames="dims")(vae, z, values)
    assert out.shape == (3, 3, 12)
    for d in range(3):
        for j, v in enumerate(values):
            np.testing.assert_allclose(out[d, j], vae.decode(z.at[d].set(v)), rtol=1e-12)
    # Sweeping a latent through its own value reproduces the unswept decoding.
    same = latent_traversal(vae, z, z[1:2], dims=(1,))
    np.testing.assert_allclose(same[0, 0], vae.decode(z), rtol=1e-12)


def test_traversal_of_a_multi_rate_vae_decodes_at_beta():
    mr = mlp_vae((12,), (8,), 2, multi_rate=True, beta_range=(0.1, 10.0), key=jax.random.key(2))
    z, values = jnp.zeros(2), jnp.asarray([-1.0, 1.0])
    lo = latent_traversal(mr, z, values, beta=0.2)
    hi = latent_traversal(mr, z, values, beta=5.0)
    np.testing.assert_allclose(lo[1, 0], mr.decode(jnp.asarray([0.0, -1.0]), 0.2), rtol=1e-5)
    np.testing.assert_allclose(hi[0, 1], mr.decode(jnp.asarray([1.0, 0.0]), 5.0), rtol=1e-5)


def test_bad_input():
    vae = mlp_vae((12,), (8,), 3, key=jax.random.key(3))
    mr = mlp_vae((12,), (8,), 3, multi_rate=True, key=jax.random.key(3))
    v = jnp.linspace(-1.0, 1.0, 3)
    # The runtime type check of the test suite catches the shapes first; without it, ValueError.
    shape_errors = (ValueError, jaxtyping.TypeCheckError)
    with pytest.raises(shape_errors, match="`z`|z"):
        latent_traversal(vae, jnp.zeros((2, 3)), v)
    with pytest.raises(shape_errors, match="`values`|values"):
        latent_traversal(vae, jnp.zeros(3), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`dims`"):
        latent_traversal(vae, jnp.zeros(3), v, dims=(0, 3))
    with pytest.raises(TypeError, match="beta"):
        latent_traversal(mr, jnp.zeros(3), v)
    with pytest.raises(TypeError, match="beta"):
        latent_traversal(vae, jnp.zeros(3), v, beta=1.0)
    with pytest.raises(TypeError, match="`model`"):
        latent_traversal(object(), jnp.zeros(3), v)
