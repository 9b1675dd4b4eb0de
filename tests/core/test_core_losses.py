"""Output losses: per-example losses, Hessian square roots and samplers against autodiff oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from respax.core import BernoulliLoss, GaussianLoss, SoftmaxCrossEntropy

LOSSES = [
    ("softmax", SoftmaxCrossEntropy(), lambda k: jnp.asarray(1)),
    ("gaussian", GaussianLoss(variance=0.5), lambda k: jnp.linspace(-1.0, 1.0, k)),
    ("bernoulli", BernoulliLoss(), lambda k: (jnp.arange(k) % 2).astype(jnp.float64)),
]


@pytest.mark.float64
@pytest.mark.parametrize("name,loss,target_fn", LOSSES, ids=[n for n, *_ in LOSSES])
@given(seed=st.integers(0, 2**31 - 1))
def test_hessian_sqrt_matches_autodiff_hessian(name, loss, target_fn, seed):
    k = 5
    outputs = jax.random.normal(jax.random.key(seed), (k,), jnp.float64) * 3
    targets = target_fn(k)
    exact = jax.hessian(loss.loss)(outputs, targets)
    s = loss.hessian_sqrt(outputs)
    np.testing.assert_allclose(s @ s.T, exact, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss.output_hessian(outputs), exact, rtol=1e-10, atol=1e-12)
    v = jnp.arange(k, dtype=jnp.float64)
    np.testing.assert_allclose(loss.output_hvp(outputs, v), exact @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.float64
def test_losses_match_closed_forms():
    logits = jnp.array([1.0, 2.0, 0.5])
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(SoftmaxCrossEntropy().loss(logits, 1), -np.log(p[1]), rtol=1e-12)
    y = jnp.array([0.0, 1.0, 1.0])
    sig = 1 / (1 + np.exp(-np.asarray(logits)))
    bce = -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).sum()
    np.testing.assert_allclose(BernoulliLoss().loss(logits, y), bce, rtol=1e-12)
    np.testing.assert_allclose(
        GaussianLoss(variance=2.0).loss(logits, y), ((logits - y) ** 2).sum() / 4, rtol=1e-12
    )


def test_per_example_and_mean_loss_float32():
    loss = SoftmaxCrossEntropy()
    outputs = jax.random.normal(jax.random.key(0), (8, 4))
    targets = jnp.arange(8) % 4
    per = loss.per_example_loss(outputs, targets)
    assert per.shape == (8,) and per.dtype == jnp.float32
    np.testing.assert_allclose(loss.mean_loss(outputs, targets), per.mean(), rtol=1e-6)
    with pytest.raises((ValueError, TypeError), match="outputs"):
        loss.per_example_loss(outputs[0], targets)


@pytest.mark.float64
@pytest.mark.parametrize("name,loss,target_fn", LOSSES, ids=[n for n, *_ in LOSSES])
def test_expected_fisher_of_sampler_equals_output_hessian(name, loss, target_fn):
    """E_y[∇ℓ ∇ℓᵀ] under the sampler equals the output Hessian (canonical losses): Monte Carlo."""
    outputs = jnp.array([0.3, -1.2, 0.8])
    keys = jax.random.split(jax.random.key(1), 200_000)
    targets = jax.vmap(loss.sample_targets, in_axes=(0, None))(keys, outputs)
    grads = jax.vmap(jax.grad(loss.loss), in_axes=(None, 0))(outputs, targets)
    fisher = grads.T @ grads / grads.shape[0]
    np.testing.assert_allclose(fisher, loss.output_hessian(outputs), atol=1e-2)


def test_gaussian_variance_validated():
    with pytest.raises(ValueError, match="variance"):
        GaussianLoss(variance=0.0)


def test_gaussian_and_bernoulli_reject_broadcasting_targets():
    """Outputs (32, 3) against targets (32,) used to broadcast silently into another loss."""
    outputs = jax.random.normal(jax.random.key(0), (32, 3))
    for loss in (GaussianLoss(), BernoulliLoss()):
        with pytest.raises(ValueError, match="`targets`.*shape"):
            loss.mean_loss(outputs, jnp.zeros(32))
        # One example: the shape annotations (type-checked under the tests' import hook) or the
        # check itself name `targets`.
        with pytest.raises((ValueError, TypeError), match="targets"):
            loss.loss(outputs[0], jnp.zeros(()))
        with pytest.raises(ValueError, match="leading batch axis"):
            loss.mean_loss(outputs, jnp.zeros((31, 3)))
        # The matching shapes still work, and under jit too.
        value = jax.jit(loss.mean_loss)(outputs, jnp.zeros((32, 3)))
        assert value.shape == () and bool(jnp.isfinite(value))


def test_softmax_rejects_float_and_one_hot_labels():
    """Float or one-hot labels used to fail with `Indexer must have integer or boolean type`."""
    loss = SoftmaxCrossEntropy()
    logits = jax.random.normal(jax.random.key(0), (8, 4))
    labels = jnp.arange(8) % 4
    with pytest.raises(TypeError, match="`targets`.*integer class indices"):
        loss.mean_loss(logits, labels.astype(jnp.float32))
    with pytest.raises(TypeError, match="`targets`.*one-hot"):
        loss.mean_loss(logits, jax.nn.one_hot(labels, 4))
    with pytest.raises(ValueError, match="`targets`.*one integer class index"):
        loss.mean_loss(logits, jax.nn.one_hot(labels, 4, dtype=jnp.int32))
    expected = jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(8), labels])
    np.testing.assert_allclose(loss.mean_loss(logits, labels), expected, rtol=1e-6)
