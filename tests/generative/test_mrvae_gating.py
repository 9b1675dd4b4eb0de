"""MR-VAE gating: 2 parameters per gated unit/filter, gates on pre-activations exactly as the
paper's Eq. 9 / Listing 1, which layers are gated, β sampling, the objective, RD evaluation."""

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import respax.generative as g
from respax.core import BernoulliLoss

KEY = jax.random.key(0)


def _n_params(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array)))


@pytest.mark.parametrize(
    "build, units",
    [
        # MLP: every hidden layer of encoder and decoder, not the heads or the output layer.
        (lambda mr, k: g.mlp_vae((64,), (32, 16), 4, multi_rate=mr, key=k), 2 * (32 + 16)),
        # Conv: encoder convs (8, 16) + residual (4 hidden + 16 out); decoder: the residual block
        # (4 + 16) and the transposed conv 16 -> 8; not the stem, heads or output conv.
        (
            lambda mr, k: g.conv_vae(
                (1, 8, 8),
                (8, 16),
                4,
                num_residual_blocks=1,
                residual_channels=4,
                multi_rate=mr,
                key=k,
            ),
            (8 + 16 + 4 + 16) + (4 + 16 + 8),
        ),  # fmt: skip
        # The paper's ResNet at 28x28: 64+128+128 + 2*(32+128), decoder 2*(32+128) + 128 + 64.
        (
            lambda mr, k: g.conv_vae((1, 28, 28), multi_rate=mr, key=k),
            (64 + 128 + 128 + 2 * 160) + (2 * 160 + 128 + 64),
        ),
    ],
)
def test_parameter_overhead_is_two_per_gated_unit(build, units):
    vae, mr = build(False, KEY), build(True, KEY)
    assert g.gated_units(mr) == units
    assert _n_params(mr) - _n_params(vae) == 2 * units
    # Same key: the same base weights, doubled in the gated layers (the gates start at ½).
    strip = lambda m: jax.tree.leaves(
        eqx.filter(m, eqx.is_array), is_leaf=lambda x: isinstance(x, g.Gate)
    )
    base_mr = [x for x in strip(mr) if not isinstance(x, g.Gate)]
    for a, b in zip(strip(vae), base_mr, strict=True):
        assert np.array_equal(b, a) or np.allclose(b, 2 * a, rtol=1e-6, atol=0), a.shape


def test_mrvae_at_initialisation_computes_its_betavae_at_every_beta():
    vae = g.mlp_vae((64,), (32, 16), 4, key=KEY)
    mr = g.mlp_vae((64,), (32, 16), 4, multi_rate=True, key=KEY)
    x = jax.random.bernoulli(jax.random.key(3), 0.5, (3, 64)).astype(jnp.float32)
    mu, logvar = g.encode(vae, x)
    out = jax.vmap(vae.decode)(mu)
    for beta in (0.01, 0.3, 10.0):
        mu_b, logvar_b = g.encode(mr, x, beta=beta)
        np.testing.assert_allclose(mu_b, mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logvar_b, logvar, rtol=1e-5, atol=1e-6)
        out_b = jax.vmap(lambda z, b=beta: mr.decode(z, b))(mu)
        np.testing.assert_allclose(out_b, out, rtol=1e-5, atol=1e-5)


def test_heads_stem_and_output_are_ungated():
    mr = g.conv_vae((1, 8, 8), (8, 16), 4, num_residual_blocks=1, multi_rate=True, key=KEY)
    assert mr.decoder.gates[-1] is None  # output conv
    assert all(gate is not None for gate in mr.encoder.gates)
    assert all(gate is not None for gate in mr.decoder.gates[:-1])
    for name in ("mean_head", "logvar_head"):
        assert isinstance(getattr(mr.encoder, name), eqx.nn.Linear)
    assert isinstance(mr.decoder.stem, eqx.nn.Linear)


@pytest.mark.float64
@pytest.mark.parametrize("gates", ["paper", "sigmoid"])
def test_gates_scale_pre_activations_per_unit(gates):
    mr = g.mlp_vae((6,), (5,), 2, multi_rate=True, gates=gates, key=KEY)
    # Random gate parameters, so that every unit has its own gate.
    k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
    mr = eqx.tree_at(
        lambda m: (
            m.encoder.gates[0].weight, m.encoder.gates[0].bias,
            m.decoder.gates[0].weight, m.decoder.gates[0].bias,
        ),
        mr,
        (
            jax.random.normal(k1, (5,)), jax.random.normal(k2, (5,)),
            jax.random.normal(k3, (5,)), -jnp.abs(jax.random.normal(k4, (5,))),
        ),
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(4), (6,))
    beta = 0.37
    a, b = mr.beta_range
    u = (math.log(beta) - (math.log(a) + math.log(b)) / 2) / ((math.log(b) - math.log(a)) / 12**0.5)
    enc, dec = mr.encoder, mr.decoder
    ge = enc.gates[0]
    h = jax.nn.relu(
        (enc.layers[0].weight @ x + enc.layers[0].bias) * jax.nn.sigmoid(ge.weight * u + ge.bias)
    )
    mu, logvar = mr.encode(x, beta)
    np.testing.assert_allclose(mu, enc.mean_head.weight @ h + enc.mean_head.bias, rtol=1e-12)
    np.testing.assert_allclose(
        logvar, enc.logvar_head.weight @ h + enc.logvar_head.bias, rtol=1e-12
    )
    gd = dec.gates[0]
    a_d = gd.weight * u + gd.bias
    gate_d = jax.nn.sigmoid(a_d) if gates == "sigmoid" else jnp.sqrt(jax.nn.relu(1 - jnp.exp(a_d)))
    hd = jax.nn.relu((dec.layers[0].weight @ mu + dec.layers[0].bias) * gate_d)
    np.testing.assert_allclose(
        mr.decode(mu, beta), dec.output_layer.weight @ hd + dec.output_layer.bias, rtol=1e-12
    )


def test_conv_gate_is_one_scalar_per_filter():
    gate = eqx.tree_at(lambda t: t.bias, g.Gate(3, "sigmoid"), jnp.array([-1.0, 0.0, 2.0]))
    h = jax.random.normal(KEY, (3, 4, 5))
    out = gate(h, jnp.asarray(0.0))
    np.testing.assert_allclose(out, h * jax.nn.sigmoid(gate.bias)[:, None, None], rtol=1e-6)


def test_hyper_input_is_standardized_log_beta():
    mr = g.mlp_vae((4,), (3,), 2, multi_rate=True, beta_range=(0.01, 10.0), key=KEY)
    u = [float(mr.hyper_input(b)) for b in (0.01, math.sqrt(0.1), 10.0)]
    np.testing.assert_allclose(u, [-math.sqrt(3), 0.0, math.sqrt(3)], atol=1e-5)
    # Log-uniform β gives u with mean 0 and variance 1.
    us = mr.hyper_input(g.sample_beta(KEY, mr.beta_range, (20_000,)))
    assert abs(float(jnp.mean(us))) < 0.03 and abs(float(jnp.var(us)) - 1) < 0.03


def test_sample_beta_is_log_uniform():
    beta = g.sample_beta(KEY, (0.01, 10.0), (20_000,))
    eta = np.log(np.asarray(beta))
    assert eta.min() >= math.log(0.01) - 1e-6 and eta.max() <= math.log(10) + 1e-6
    counts, _ = np.histogram(eta, bins=10, range=(math.log(0.01), math.log(10)))
    assert counts.min() > 0.9 * 2000 and counts.max() < 1.1 * 2000


@pytest.mark.parametrize("per_example", [False, True])
def test_mrvae_loss_draws_beta_once_per_step_or_per_example(per_example):
    mr = g.mlp_vae((16,), (8,), 2, multi_rate=True, key=KEY)
    x = jax.random.bernoulli(jax.random.key(1), 0.4, (6, 16)).astype(jnp.float32)
    key = jax.random.key(7)
    loss = g.mrvae_loss(mr, BernoulliLoss(), x, key=key, per_example_beta=per_example)
    k_beta, k_z = jax.random.split(key)
    beta = g.sample_beta(k_beta, mr.beta_range, (6,) if per_example else ())
    expect = g.beta_vae_loss(mr, BernoulliLoss(), x, key=k_z, beta=beta)
    np.testing.assert_allclose(loss, expect, rtol=1e-6)
    rd = g.rate_distortion(mr, BernoulliLoss(), x, key=k_z, beta=beta)
    np.testing.assert_allclose(loss, jnp.mean(rd.distortion + beta * rd.rate), rtol=1e-6)


def test_rate_distortion_curve_matches_pointwise_evaluation():
    mr = g.mlp_vae((16,), (8,), 2, multi_rate=True, key=KEY)
    x = jax.random.bernoulli(jax.random.key(1), 0.4, (6, 16)).astype(jnp.float32)
    betas = g.log_spaced_betas(5)
    curve = g.rate_distortion_curve(mr, BernoulliLoss(), x, betas, key=KEY)
    for i, beta in enumerate(betas):
        rd = g.rate_distortion(mr, BernoulliLoss(), x, key=KEY, beta=float(beta))
        np.testing.assert_allclose(curve.rate[i], jnp.mean(rd.rate), rtol=1e-5)
        np.testing.assert_allclose(curve.distortion[i], jnp.mean(rd.distortion), rtol=1e-5)
    np.testing.assert_allclose(curve.loss, curve.distortion + curve.beta * curve.rate, rtol=1e-6)
    # Inside jit (the experiment vmaps it over a population): the same numbers.
    jitted = jax.jit(lambda m: g.rate_distortion_curve(m, BernoulliLoss(), x, betas, key=KEY))(mr)
    np.testing.assert_allclose(jitted.loss, curve.loss, rtol=1e-5)


def test_distortion_at_matched_rate():
    d = g.distortion_at_rate([3.0, 1.0, 2.0], [10.0, 30.0, 20.0], [1.5, 2.5, 0.5, 3.5])
    np.testing.assert_allclose(d[:2], [25.0, 15.0])
    assert np.isnan(d[2:]).all()


def test_bad_beta_input():
    mr = g.mlp_vae((4,), (3,), 2, multi_rate=True, key=KEY)
    x = jnp.zeros((2, 4))
    with pytest.warns(UserWarning, match="extrapolation"):
        g.rate(mr, x, beta=100.0)
    with pytest.warns(UserWarning, match="extrapolation"):
        g.rate_distortion_curve(mr, BernoulliLoss(), x, [0.001, 1.0], key=KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g.rate(mr, x, beta=10.0)  # the range's end is inside
    with pytest.raises(TypeError, match="needs `beta`"):
        g.rate(mr, x)
    with pytest.raises(ValueError, match="finite and > 0"):
        g.rate(mr, x, beta=-1.0)
    with pytest.raises(ValueError, match="shape"):
        g.rate(mr, x, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="beta_range"):
        g.mlp_vae((4,), (3,), 2, multi_rate=True, beta_range=(1.0, 0.1), key=KEY)
    with pytest.raises(ValueError, match="needs gated blocks"):
        vae = g.mlp_vae((4,), (3,), 2, key=KEY)
        g.MultiRateVAE(vae.encoder, vae.decoder)
