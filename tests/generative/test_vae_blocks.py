"""β-VAE building blocks: encoders/decoders, likelihoods, rate/distortion/ELBO, KL annealing."""

import math

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import respax.generative as g
from respax.core import BernoulliLoss, GaussianLoss

KEY = jax.random.key(0)


def _n_params(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array)))


@pytest.mark.parametrize(
    "shape, build",
    [
        ((64,), lambda s, k: g.mlp_vae(s, (16, 8), 3, key=k)),
        ((1, 8, 8), lambda s, k: g.mlp_vae(s, (16,), 3, key=k)),
        ((1, 8, 8), lambda s, k: g.conv_vae(s, (4, 8), 3, num_residual_blocks=1, key=k)),
        ((1, 28, 28), lambda s, k: g.conv_vae(s, (4, 8, 8), 3, residual_channels=4, key=k)),
        ((3, 9, 7), lambda s, k: g.conv_vae(s, (4, 8), 3, num_residual_blocks=0, key=k)),
    ],
)
def test_shapes_round_trip(shape, build):
    vae = build(shape, KEY)
    x = jnp.zeros((2, *shape))
    mu, logvar = g.encode(vae, x)
    assert mu.shape == logvar.shape == (2, 3)
    post = g.posterior(vae, BernoulliLoss(), x, key=KEY)
    assert post.outputs.shape == x.shape and post.z.shape == (2, 3)


def test_paper_resnet_layout_at_28x28():
    vae = g.conv_vae((1, 28, 28), key=KEY)
    enc, dec = vae.encoder, vae.decoder
    h = jnp.zeros((1, 28, 28))
    sizes = []
    for conv in enc.convs:
        h = conv(h)
        sizes.append(h.shape)
    assert sizes == [(64, 14, 14), (128, 7, 7), (128, 4, 4)]
    assert enc.mean_head.in_features == 2048 and len(enc.blocks) == 2
    assert dec.stem_shape == (128, 4, 4)


@pytest.mark.float64
def test_gaussian_kl_against_monte_carlo():
    mu = jnp.array([0.3, -1.2, 2.0])
    logvar = jnp.array([0.5, -1.0, 0.0])
    z = g.reparameterize(
        jnp.broadcast_to(mu, (400_000, 3)), jnp.broadcast_to(logvar, (400_000, 3)), key=KEY
    )
    log_q = jax.scipy.stats.norm.logpdf(z, mu, jnp.exp(0.5 * logvar))
    log_p = jax.scipy.stats.norm.logpdf(z)
    mc = jnp.mean(jnp.sum(log_q - log_p, axis=1))
    assert abs(float(g.gaussian_kl(mu, logvar)) - float(mc)) < 1e-2
    # Reparameterized moments.
    np.testing.assert_allclose(jnp.mean(z, 0), mu, atol=1e-2)
    np.testing.assert_allclose(jnp.var(z, 0), jnp.exp(logvar), rtol=1e-2)


@pytest.mark.float64
def test_likelihoods_are_full_nll_in_nats():
    out = jnp.array([[0.2, -1.0, 3.0]])
    x = jnp.array([[0.0, 1.0, 1.0]])
    p = jax.nn.sigmoid(out)
    bern = -jnp.sum(x * jnp.log(p) + (1 - x) * jnp.log1p(-p))
    np.testing.assert_allclose(g.negative_log_likelihood(BernoulliLoss(), out, x), [bern])
    gauss = -jnp.sum(jax.scipy.stats.norm.logpdf(x, out, math.sqrt(0.3)))
    np.testing.assert_allclose(g.negative_log_likelihood(GaussianLoss(0.3), out, x), [gauss])


def test_rate_distortion_elbo_are_consistent():
    vae = g.mlp_vae((1, 8, 8), (16,), 3, key=KEY)
    lik = BernoulliLoss()
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (5, 1, 8, 8)).astype(jnp.float32)
    k = jax.random.key(2)
    rd = g.rate_distortion(vae, lik, x, key=k)
    # By hand: encode, sample with the same key, decode.
    mu, logvar = jax.vmap(vae.encoder)(x)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k, mu.shape)
    logits = jax.vmap(vae.decoder)(z)
    d = jnp.sum(jax.nn.softplus(logits) - x * logits, axis=(1, 2, 3))
    np.testing.assert_allclose(rd.distortion, d, rtol=1e-5)
    np.testing.assert_allclose(rd.rate, g.gaussian_kl(mu, logvar), rtol=1e-5)
    np.testing.assert_allclose(g.rate(vae, x), jnp.mean(rd.rate), rtol=1e-6)
    np.testing.assert_allclose(g.distortion(vae, lik, x, key=k), jnp.mean(d), rtol=1e-5)
    np.testing.assert_allclose(g.elbo(vae, lik, x, key=k), -jnp.mean(d + rd.rate), rtol=1e-5)
    loss = g.beta_vae_loss(vae, lik, x, key=k, beta=0.25)
    np.testing.assert_allclose(loss, jnp.mean(d + 0.25 * rd.rate), rtol=1e-5)


def test_training_step_under_jit_lowers_the_loss():
    import optax

    vae = g.mlp_vae((64,), (32,), 4, key=KEY)
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (32, 64)).astype(jnp.float32)
    opt = optax.adam(1e-2)
    state = opt.init(eqx.filter(vae, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, key):
        loss, grads = eqx.filter_value_and_grad(g.beta_vae_loss)(
            model, BernoulliLoss(), x, key=key, beta=1.0
        )
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for i in range(60):
        vae, state, loss = step(vae, state, jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:5])


def test_kl_annealing_schedule():
    s = g.kl_annealing(0.5, warmup_steps=4, start=0.5)
    assert [float(s(i)) for i in (0, 2, 4, 100)] == [0.25, 0.375, 0.5, 0.5]
    with pytest.raises(ValueError, match="warmup_steps"):
        g.kl_annealing(1.0, warmup_steps=0)


def test_active_units_counts_varying_means():
    vae = g.mlp_vae((64,), (32,), 4, key=KEY)
    x = jax.random.normal(jax.random.key(1), (50, 64))
    mu, _ = g.encode(vae, x)
    expect = int(jnp.sum(jnp.var(mu, 0) >= 0.01))
    assert int(g.active_units(vae, x)) == expect


def test_bad_input_errors():
    vae = g.mlp_vae((64,), (16,), 3, key=KEY)
    with pytest.raises(ValueError, match=r"`x` must lie in \[0, 1\]"):
        g.rate_distortion(vae, BernoulliLoss(), jnp.full((2, 64), 2.0), key=KEY)
    with pytest.raises(ValueError, match="`x` must have shape"):
        g.rate_distortion(vae, BernoulliLoss(), jnp.zeros((2, 63)), key=KEY)
    with pytest.raises(TypeError, match="likelihood"):
        g.rate_distortion(vae, object(), jnp.zeros((2, 64)), key=KEY)
    with pytest.raises(TypeError, match="not conditioned on β"):
        g.rate(vae, jnp.zeros((2, 64)), beta=1.0)
    with pytest.raises((ValueError, TypeError), match="gate"):  # TypeError: the type checker
        g.MLPEncoder((4,), (2,), 1, gate="tanh", key=KEY)
    with pytest.raises(ValueError, match="ungated"):
        g.VAE(g.MLPEncoder((64,), (2,), 3, gate="sigmoid", key=KEY), vae.decoder)
    with pytest.raises(ValueError, match="latent_size"):
        g.VAE(vae.encoder, g.MLPDecoder(2, (4,), (64,), key=KEY))


@given(
    st.floats(-5, 5), st.floats(-5, 5), st.floats(-5, 5), st.sampled_from(["sigmoid", "sqrt_relu"])
)
def test_gate_values_lie_in_unit_interval(u, w, b, kind):
    gate = eqx.tree_at(
        lambda t: (t.weight, t.bias), g.Gate(2, kind), (jnp.full(2, w), jnp.full(2, b))
    )
    value = gate.value(jnp.asarray(u, jnp.float32))
    assert bool(jnp.all((value >= 0) & (value <= 1)))
    a = w * u + b
    expect = 1 / (1 + math.exp(-a)) if kind == "sigmoid" else math.sqrt(max(0.0, -math.expm1(a)))
    np.testing.assert_allclose(value, expect, rtol=1e-5, atol=1e-6)
