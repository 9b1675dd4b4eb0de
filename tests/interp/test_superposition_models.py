"""Toy models of superposition: forward passes and loss against numpy, the data sampler's
statistics, and training (loss decreases, vmap = per-instance, chunked = one scan)."""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from respax.interp import superposition as sp


def _numpy_reconstruct(params, x, model):
    """Brute force, one example and one output at a time."""
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        if model == "abs":
            W1, W2, bias = (np.asarray(a) for a in params)
            h = [
                max(0.0, sum(x[b, i] * W1[i, j] for i in range(W1.shape[0])))
                for j in range(W1.shape[1])
            ]
            for i in range(W2.shape[1]):
                out[b, i] = max(0.0, sum(h[j] * W2[j, i] for j in range(len(h))) + bias[i])
            continue
        W, bias = np.asarray(params.W), np.asarray(params.b)
        h = [sum(x[b, i] * W[i, j] for i in range(W.shape[0])) for j in range(W.shape[1])]
        if model == "neuron":
            h = [max(0.0, v) for v in h]
        for i in range(W.shape[0]):
            v = sum(h[j] * W[i, j] for j in range(W.shape[1])) + bias[i]
            out[b, i] = v if model == "linear" else max(0.0, v)
    return out


@pytest.mark.float64
@pytest.mark.parametrize("model", ["linear", "relu", "neuron", "abs"])
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(1, 1), (4, 2), (5, 3), (3, 4)]))
@settings(max_examples=6)
def test_reconstruct_and_loss_match_numpy(model, seed, shape):
    n, m = shape
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    if model == "abs":
        params = sp.init_computation_params(k1, n, m, jnp.float64)
    else:
        params = sp.init_toy_params(k1, n, m, jnp.float64)
    params = params._replace(b=0.3 * jax.random.normal(k2, (n,), jnp.float64))
    x = sp.sample_batch(k3, 7, n, 0.6, signed=model == "abs", dtype=jnp.float64)
    importance = jax.random.uniform(k4, (n,), jnp.float64)
    out = sp.reconstruct(params, x, model)
    expected = _numpy_reconstruct(params, np.asarray(x), model)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    target = np.abs(np.asarray(x)) if model == "abs" else np.asarray(x)
    loss = sp.reconstruction_loss(params, x, importance, model)
    np.testing.assert_allclose(
        loss, np.mean(np.asarray(importance) * (target - expected) ** 2), rtol=1e-10
    )


def test_reconstruct_under_jit_and_vmap():
    params = sp.init_toy_params(jax.random.key(0), 5, 2)
    x = sp.sample_batch(jax.random.key(1), 8, 5, 0.5)
    fn = jax.jit(sp.reconstruct, static_argnames="model")
    np.testing.assert_allclose(
        fn(params, x, model="neuron"), sp.reconstruct(params, x, "neuron"), atol=1e-6
    )
    per_example = jax.vmap(sp.reconstruct, in_axes=(None, 0, None))(params, x, "relu")
    np.testing.assert_allclose(per_example, sp.reconstruct(params, x, "relu"), atol=1e-5)


def test_gram_path_equals_two_matmuls():
    # n <= 64 computes x @ (W W^T); check it against h = x @ W, out = h @ W^T
    params = sp.init_toy_params(jax.random.key(0), 70, 6)
    x = sp.sample_batch(jax.random.key(1), 16, 70, 0.5)
    small = params._replace(W=params.W[:30], b=params.b[:30])
    xs = x[:, :30]
    np.testing.assert_allclose(
        sp.reconstruct(small, xs, "linear"), xs @ small.W @ small.W.T, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        sp.reconstruct(params, x, "relu"), jax.nn.relu(x @ params.W @ params.W.T), atol=1e-5
    )


def test_model_input_errors():
    toy = sp.init_toy_params(jax.random.key(0), 4, 2)
    comp = sp.init_computation_params(jax.random.key(0), 4, 2)
    x = jnp.ones((2, 4))
    with pytest.raises(TypeError, match="ComputationParams"):
        sp.reconstruct(toy, x, "abs")
    with pytest.raises(TypeError, match="ToyParams"):
        sp.reconstruct(comp, x, "relu")
    # a ValueError from the checks, or a TypeError from runtime type checking of the Literal
    with pytest.raises((ValueError, TypeError), match="model"):
        sp.ToyConfig(4, 2, model="tanh")
    with pytest.raises(ValueError, match="n_features must be even"):
        sp.ToyConfig(5, 2, correlation="correlated")
    with pytest.raises((ValueError, TypeError), match="correlation"):
        sp.sample_batch(jax.random.key(0), 4, 4, 0.5, correlation="sometimes")
    with pytest.raises(ValueError, match="n_hidden"):
        sp.ToyConfig(4, 0)


def test_xavier_normal_scale():
    W = sp.xavier_normal(jax.random.key(0), (200, 300))
    np.testing.assert_allclose(jnp.std(W), np.sqrt(2 / 500), rtol=0.02)
    assert sp.init_toy_params(jax.random.key(0), 20, 5).W.shape == (20, 5)


# ---------------------------------------------------------------------------------------------
# Data.


@pytest.mark.parametrize("p", [1.0, 0.3, 0.02])
def test_sample_batch_independent_statistics(p):
    x = np.asarray(sp.sample_batch(jax.random.key(1), 20_000, 10, p))
    active = x > 0
    sem = np.sqrt(p * (1 - p) / active.size) + 1e-9
    assert abs(active.mean() - p) < 5 * sem
    values = x[active]
    assert values.min() >= 0 and values.max() < 1
    np.testing.assert_allclose(values.mean(), 0.5, atol=5 * 0.29 / np.sqrt(values.size))
    # independence across features: P(both on) = p^2
    both = (active[:, 0] & active[:, 1]).mean()
    assert abs(both - p * p) < 5 * np.sqrt(p * p / x.shape[0]) + 1e-9


def test_sample_batch_per_feature_probability_and_signed():
    p = jnp.array([1.0, 0.5, 0.0, 0.1])
    x = np.asarray(sp.sample_batch(jax.random.key(2), 20_000, 4, p, signed=True))
    np.testing.assert_allclose((x != 0).mean(0), p, atol=0.015)
    assert x.min() >= -1 and x.max() < 1 and (x < 0).mean() > 0.2


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_sample_batch_correlated_and_anticorrelated_pairs(p):
    n, batch = 6, 40_000
    corr = np.asarray(sp.sample_batch(jax.random.key(3), batch, n, p, "correlated")) > 0
    anti = np.asarray(sp.sample_batch(jax.random.key(4), batch, n, p, "anticorrelated")) > 0
    for a in (corr, anti):
        np.testing.assert_allclose(a.mean(0), p, atol=5 * np.sqrt(p / batch))
    np.testing.assert_array_equal(corr[:, 0::2], corr[:, 1::2])  # a pair is on together
    assert not (anti[:, 0::2] & anti[:, 1::2]).any()  # never together
    # different pairs stay independent
    assert abs((corr[:, 0] & corr[:, 2]).mean() - p * p) < 5 * np.sqrt(p * p / batch)


# ---------------------------------------------------------------------------------------------
# Training.


def test_training_reduces_loss_and_learns_dense_pca():
    # lr 1e-2 (not the paper's 1e-3) so that 800 steps converge
    config = sp.ToyConfig(5, 2, model="relu", batch_size=256, learning_rate=0.01)
    params, losses = sp.train(jax.random.key(0), config, 800, 0.7 ** jnp.arange(5.0), 1.0)
    assert losses.shape == (800,)
    assert float(losses[-50:].mean()) < 0.5 * float(losses[:10].mean())
    # dense data: the two most important features get (nearly) unit norm, the rest ~0
    norms = np.asarray(sp.feature_norms(params.W))
    assert (norms[:2] > 0.9).all() and (norms[2:] < 0.2).all(), norms


def test_vmap_over_instances_equals_single_instances():
    config = sp.ToyConfig(6, 2, model="relu", batch_size=128)
    keys = jax.random.split(jax.random.key(0), 2)
    importance = jnp.stack([jnp.ones(6), 0.5 ** jnp.arange(6.0)])
    prob = jnp.array([1.0, 0.03])
    batched, batched_losses = jax.vmap(sp.train, in_axes=(0, None, None, 0, 0))(
        keys, config, 30, importance, prob
    )
    for i in range(2):
        single, losses = sp.train(keys[i], config, 30, importance[i], prob[i])
        np.testing.assert_allclose(batched.W[i], single.W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched_losses[i], losses, rtol=1e-5, atol=1e-7)


def test_chunked_training_equals_one_scan():
    config = sp.ToyConfig(4, 2, model="abs", batch_size=64)
    state = sp.init_train_state(jax.random.key(0), config)
    run = jax.jit(
        functools.partial(sp.train_steps, importance=1.0, feature_probability=0.2, config=config),
        static_argnames="num_steps",
    )
    key = jax.random.key(1)
    whole, whole_losses = run(state, key, 0, num_steps=40)
    half, first = run(state, key, 0, num_steps=20)
    half, second = run(half, key, jnp.int32(20), num_steps=20)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(half)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole_losses, jnp.concatenate([first, second]))


def test_weight_decay_matches_pytorch_semantics():
    # AdamW: p <- p - lr * (adam_update + wd * p); with zero gradients only the decay acts
    config = sp.ToyConfig(3, 2, learning_rate=0.1, weight_decay=0.5)
    opt = sp.make_optimizer(config)
    params = sp.init_toy_params(jax.random.key(0), 3, 2)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(updates.W, -0.1 * 0.5 * params.W, rtol=1e-6)
