"""The beta-TCVAE objective on the package's VAE: its parts and its beta-VAE special case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.core import BernoulliLoss
from respax.generative import (
    kl_decomposition,
    mlp_vae,
    mrvae_tcvae_loss,
    negative_log_likelihood,
    posterior,
    sample_beta,
    tcvae_loss,
)


@pytest.mark.float64
@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_tcvae_loss_is_nll_plus_the_weighted_decomposition(estimator):
    vae = mlp_vae((16,), (8,), 3, dtype=jnp.float64, key=jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (12, 16)) > 0.5).astype(jnp.float64)
    key = jax.random.key(2)
    loss, dec = tcvae_loss(
        vae, BernoulliLoss(), x, key=key, dataset_size=500, beta=6.0, estimator=estimator
    )
    post = posterior(vae, BernoulliLoss(), x, key=key)
    nll = jnp.mean(negative_log_likelihood(BernoulliLoss(), post.outputs, x))
    ref = kl_decomposition(post.z, post.mu, post.logvar, 500, estimator)
    np.testing.assert_allclose(loss, nll + ref.mi + 6.0 * ref.tc + ref.dwkl, rtol=1e-10)
    # beta-TCVAE = the single-sample negative ELBO + (beta - 1) TC.
    np.testing.assert_allclose(loss, nll + ref.kl + 5.0 * ref.tc, rtol=1e-10)
    # alpha = beta = gamma: a beta-VAE with the Monte-Carlo KL.
    loss_b, _ = tcvae_loss(
        vae, BernoulliLoss(), x, key=key, dataset_size=500, beta=4.0, alpha=4.0, gamma=4.0,
        estimator=estimator,
    )  # fmt: skip
    np.testing.assert_allclose(loss_b, nll + 4.0 * dec.kl, rtol=1e-10)


def test_tcvae_loss_trains_under_jit():
    vae = mlp_vae((16,), (8,), 2, key=jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (8, 16)) > 0.5).astype(jnp.float32)

    @jax.jit
    def value_and_grad(model):
        return jax.value_and_grad(
            lambda m: tcvae_loss(
                m, BernoulliLoss(), x, key=jax.random.key(3), dataset_size=80, beta=4.0
            )[0]  # fmt: skip
        )(model)

    loss, grads = value_and_grad(vae)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.float64
def test_mrvae_on_the_tc_objective_is_conditioned_on_the_sampled_beta():
    mr = mlp_vae((16,), (8,), 3, multi_rate=True, beta_range=(0.1, 10.0), dtype=jnp.float64,
                 key=jax.random.key(0))  # fmt: skip
    x = (jax.random.uniform(jax.random.key(1), (10, 16)) > 0.5).astype(jnp.float64)
    key = jax.random.key(2)
    loss, dec = mrvae_tcvae_loss(mr, BernoulliLoss(), x, key=key, dataset_size=300)
    k_beta, k_z = jax.random.split(key)
    beta = sample_beta(k_beta, (0.1, 10.0), (), jnp.float64)
    assert 0.1 <= float(beta) <= 10.0
    post = posterior(mr, BernoulliLoss(), x, key=k_z, beta=beta)
    nll = jnp.mean(negative_log_likelihood(BernoulliLoss(), post.outputs, x))
    ref = kl_decomposition(post.z, post.mu, post.logvar, 300, "mss")
    np.testing.assert_allclose(loss, nll + ref.mi + beta * ref.tc + ref.dwkl, rtol=1e-10)
    np.testing.assert_allclose(dec.tc, ref.tc, rtol=1e-10)
    with pytest.raises(TypeError, match="MultiRateVAE"):
        mrvae_tcvae_loss(mlp_vae((16,), (8,), 3, key=jax.random.key(0)), BernoulliLoss(), x,
                         key=key, dataset_size=300)  # fmt: skip
