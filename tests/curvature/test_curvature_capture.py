"""Layer capture: statistics against hand-computed (brute-force) activations and output gradients,
coverage reports, and zero fallbacks on eqx.nn.MLP and a small transformer block."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.core import BernoulliLoss, GaussianLoss, SoftmaxCrossEntropy
from respax.curvature import UncoveredParameterError, capture_layers, kfac_stats, tap_layers


def _stats(plan, model, x, y, mode):
    return eqx.filter_jit(lambda m, x, y: kfac_stats(plan, m, x, y, mode=mode))(model, x, y)


def _f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


class SharedLinear(eqx.Module):
    """A Linear applied at every position of a sequence, then pooled, then a head."""

    body: eqx.nn.Linear
    head: eqx.nn.Linear

    def __call__(self, x):
        h = jnp.tanh(jax.vmap(self.body)(x))
        return self.head(jnp.mean(h, axis=0))


class TransformerBlock(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp1: eqx.nn.Linear
    mlp2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, width=64, heads=4, classes=5):
        k = jax.random.split(key, 4)
        self.ln1 = eqx.nn.LayerNorm(width)
        self.attn = eqx.nn.MultiheadAttention(heads, width, key=k[0])
        self.ln2 = eqx.nn.LayerNorm(width)
        self.mlp1 = eqx.nn.Linear(width, 2 * width, key=k[1])
        self.mlp2 = eqx.nn.Linear(2 * width, width, key=k[2])
        self.head = eqx.nn.Linear(width, classes, key=k[3])

    def __call__(self, x):  # x: (seq, width)
        h = jax.vmap(self.ln1)(x)
        x = x + self.attn(h, h, h)
        h = jax.vmap(self.ln2)(x)
        x = x + jax.vmap(self.mlp2)(jax.nn.gelu(jax.vmap(self.mlp1)(h)))
        return self.head(jnp.mean(x, axis=0))


@pytest.mark.slow
@pytest.mark.float64
def test_mlp_factors_match_brute_force_and_grads():
    key = jax.random.key(0)
    mlp = _f64(eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=key))
    loss = SoftmaxCrossEntropy()
    x = jax.random.normal(jax.random.key(1), (9, 3), jnp.float64)
    y = jnp.arange(9) % 2
    plan = capture_layers(mlp, loss, jnp.zeros(3))
    val, grads, stats = _stats(plan, mlp, x, y, "empirical")
    ref_val, ref = eqx.filter_jit(
        eqx.filter_value_and_grad(lambda m: loss.mean_loss(jax.vmap(m)(x), y))
    )(mlp)
    assert abs(float(val - ref_val)) < 1e-12
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)

    # Brute force: layer inputs and per-example output gradients through explicit probes.
    l0, l1 = mlp.layers

    def per_example(probe0, probe1, xi, yi):
        h0 = l0(xi) + probe0
        out = l1(jnp.tanh(h0)) + probe1
        return loss.loss(out, yi)

    z0, z1 = jnp.zeros((9, 4)), jnp.zeros((9, 2))
    g0, g1 = jax.jit(jax.vmap(jax.grad(per_example, (0, 1))))(z0, z1, x, y)
    a0 = jnp.concatenate([x, jnp.ones((9, 1))], 1)
    a1 = jnp.concatenate([jnp.tanh(jax.vmap(l0)(x)), jnp.ones((9, 1))], 1)
    np.testing.assert_allclose(stats[0]["A"], a0.T @ a0 / 9, atol=1e-12)
    np.testing.assert_allclose(stats[0]["G"], g0.T @ g0 / 9, atol=1e-12)
    np.testing.assert_allclose(stats[1]["A"], a1.T @ a1 / 9, atol=1e-12)
    np.testing.assert_allclose(stats[1]["G"], g1.T @ g1 / 9, atol=1e-12)

    # Expected mode: G = mean over examples of sum over Hessian-sqrt columns of J^T s s^T J.
    _, _, st = _stats(plan, mlp, x, y, "expected")
    outs = jax.vmap(mlp)(x)
    s = jax.vmap(loss.hessian_sqrt)(outs)  # (b, k, r)
    jac1 = jnp.eye(2)  # the last layer's output is the model output
    g_exp = jnp.einsum("bkr,blr->kl", s, s) / 9
    np.testing.assert_allclose(st[1]["G"], jac1 @ g_exp @ jac1.T, atol=1e-12)


@pytest.mark.float64
@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_shared_linear_expand_and_reduce(sharing):
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    model = _f64(SharedLinear(eqx.nn.Linear(3, 4, key=k1), eqx.nn.Linear(4, 2, key=k2)))
    loss = GaussianLoss()
    b, t = 6, 5
    x = jax.random.normal(k3, (b, t, 3), jnp.float64)
    y = jnp.zeros((b, 2), jnp.float64)
    plan = capture_layers(model, loss, jnp.zeros((t, 3)), sharing=sharing)
    assert plan.layers[0].uses == t and plan.layers[0].sharing == sharing
    assert plan.layers[1].uses == 1
    _, _, stats = _stats(plan, model, x, y, "empirical")

    def per_example(probe, xi, yi):
        h = jnp.tanh(jax.vmap(model.body)(xi) + probe)
        return loss.loss(model.head(jnp.mean(h, 0)), yi)

    g = jax.jit(jax.vmap(jax.grad(per_example)))(jnp.zeros((b, t, 4)), x, y)  # (b, t, 4)
    a = jnp.concatenate([x, jnp.ones((b, t, 1))], -1)  # (b, t, 4)
    if sharing == "expand":
        a_ref = jnp.einsum("bti,btj->ij", a, a) / (b * t)
        g_ref = jnp.einsum("bti,btj->ij", g, g) / b
    else:
        abar, gsum = a.mean(1), g.sum(1)
        a_ref, g_ref = abar.T @ abar / b, gsum.T @ gsum / b
    np.testing.assert_allclose(stats[0]["A"], a_ref, atol=1e-12)
    np.testing.assert_allclose(stats[0]["G"], g_ref, atol=1e-12)


class ConvNet(eqx.Module):
    conv: eqx.nn.Conv2d
    emb: eqx.nn.Embedding
    ln: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    extra: jax.Array

    def __call__(self, x):
        img, tok = x
        h = jnp.tanh(self.conv(img)).mean((1, 2))  # (4,)
        h = self.ln(h + self.emb(tok)) * self.extra
        return self.head(h)


@pytest.mark.float64
def test_conv_embedding_layernorm_uncovered(caplog):
    k = jax.random.split(jax.random.key(3), 6)
    model = _f64(
        ConvNet(
            eqx.nn.Conv2d(2, 4, 3, padding=1, stride=2, key=k[0]),
            eqx.nn.Embedding(5, 4, key=k[1]),
            eqx.nn.LayerNorm(4),
            eqx.nn.Linear(4, 3, key=k[2]),
            jnp.ones(4),
        )
    )
    loss = SoftmaxCrossEntropy()
    b = 6
    x = (jax.random.normal(k[3], (b, 2, 5, 5), jnp.float64), jnp.array([0, 1, 1, 3, 4, 0]))
    y = jnp.arange(b) % 3
    with caplog.at_level(logging.WARNING, logger="respax.curvature"):
        plan = capture_layers(model, loss, (jnp.zeros((2, 5, 5)), jnp.array(0)))
    assert "extra" in caplog.text and plan.num_uncovered == 1
    assert [layer.kind for layer in plan.layers] == [
        "conv",
        "embedding",
        "layernorm",
        "linear",
        "uncovered",
    ]
    with pytest.raises(UncoveredParameterError, match="extra"):
        capture_layers(model, loss, (jnp.zeros((2, 5, 5)), jnp.array(0)), on_uncovered="raise")
    val, grads, stats = _stats(plan, model, x, y, "empirical")
    ref = eqx.filter_jit(eqx.filter_grad(lambda m: loss.mean_loss(jax.vmap(m)(x), y)))(model)
    for a_, b_ in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a_, b_, atol=1e-12)

    # Brute force for the conv (KFC: positions act as examples), embedding and dense blocks.
    conv = model.conv

    def per_example(pc, pe, params_ln_extra, xi, yi):
        ln, extra = params_ln_extra
        img, tok = xi
        yc = conv(img) + pc
        h = jnp.tanh(yc).mean((1, 2))
        e = model.emb(tok) + pe
        return loss.loss(model.head(ln(h + e) * extra), yi)

    pc, pe = jnp.zeros((b, 4, 3, 3)), jnp.zeros((b, 4))
    lnx = jax.tree.map(lambda v: jnp.broadcast_to(v, (b,) + v.shape), (model.ln, model.extra))
    gc, ge, glnx = eqx.filter_jit(jax.vmap(jax.grad(per_example, (0, 1, 2))))(pc, pe, lnx, x, y)
    # Patches by explicit loops: stride 2, padding 1, 3x3 kernel -> 3x3 positions.
    img = np.pad(np.asarray(x[0]), ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = []
    for n in range(b):
        for i in range(3):
            for j in range(3):
                patch = img[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1)
                rows.append(np.concatenate([patch, [1.0]]))
    a = np.stack(rows)
    np.testing.assert_allclose(stats[0]["A"], a.T @ a / (b * 9), atol=1e-12)
    gpos = np.asarray(gc).transpose(0, 2, 3, 1).reshape(b * 9, 4)
    np.testing.assert_allclose(stats[0]["G"], gpos.T @ gpos / b, atol=1e-12)
    counts = np.bincount(np.asarray(x[1]), minlength=5) / b
    np.testing.assert_allclose(stats[1]["A"], counts, atol=1e-12)
    np.testing.assert_allclose(stats[1]["G"], ge.T @ ge / b, atol=1e-12)
    ln_g = jnp.concatenate([glnx[0].weight, glnx[0].bias], 1)
    np.testing.assert_allclose(stats[2]["F"], ln_g.T @ ln_g / b, atol=1e-12)
    np.testing.assert_allclose(stats[4]["F"], jnp.mean(glnx[1] ** 2, 0), atol=1e-12)


def test_zero_fallbacks_on_mlp_and_transformer_block(caplog):
    mlp = eqx.nn.MLP(64, 10, 256, 2, key=jax.random.key(0))
    plan = capture_layers(mlp, SoftmaxCrossEntropy(), jnp.zeros(64), on_uncovered="raise")
    assert plan.num_uncovered == 0 and len(plan.layers) == 3
    block = TransformerBlock(jax.random.key(1))
    with caplog.at_level(logging.WARNING, logger="respax.curvature"):
        plan = capture_layers(block, SoftmaxCrossEntropy(), jnp.zeros((16, 64)))
    assert caplog.text == ""
    assert plan.num_uncovered == 0
    kinds = sorted(layer.kind for layer in plan.layers)
    assert kinds == ["layernorm"] * 2 + ["linear"] * 7
    attn = [layer for layer in plan.layers if "attn" in layer.path]
    assert len(attn) == 4 and all(layer.uses == 16 and layer.sharing == "expand" for layer in attn)
    report = plan.report()
    assert "UNCOVERED" not in report and "0 diagonal fallbacks" in report
    n_params = sum(x.size for x in jax.tree.leaves(eqx.filter(block, eqx.is_inexact_array)))
    assert sum(layer.num_params for layer in plan.layers) == n_params


@pytest.mark.slow
def test_transformer_block_statistics_pass_gives_true_gradient():
    block = TransformerBlock(jax.random.key(1))
    plan = capture_layers(block, SoftmaxCrossEntropy(), jnp.zeros((16, 64)), on_uncovered="raise")
    x = jax.random.normal(jax.random.key(2), (4, 16, 64))
    y = jnp.arange(4) % 5
    loss, grads, stats = eqx.filter_jit(
        lambda m, x, y, k: kfac_stats(plan, m, x, y, mode="mc", key=k)
    )(block, x, y, jax.random.key(3))
    ref = eqx.filter_jit(
        eqx.filter_grad(lambda m: SoftmaxCrossEntropy().mean_loss(jax.vmap(m)(x), y))
    )(block)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(stats))


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), GaussianLoss(2.0), BernoulliLoss()])
def test_monte_carlo_factors_converge_to_expected(loss):
    # The sampled-label G factor is an unbiased estimate of the exact (expected) one: with many
    # labels per example it must match the analytic factor (closed form through hessian_sqrt).
    layer = eqx.nn.Linear(3, 4, key=jax.random.key(0))
    plan = capture_layers(layer, loss, jnp.zeros(3))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    y = jnp.zeros((4,), jnp.int32) if isinstance(loss, SoftmaxCrossEntropy) else jnp.zeros((4, 4))
    _, _, exact = _stats(plan, layer, x, y, "expected")
    _, _, mc = eqx.filter_jit(
        lambda m, x, y, k: kfac_stats(plan, m, x, y, mode="mc", key=k, num_samples=4000)
    )(layer, x, y, jax.random.key(2))
    g_exact, g_mc = np.asarray(exact[0]["G"]), np.asarray(mc[0]["G"])
    assert np.linalg.norm(g_mc - g_exact) <= 0.05 * np.linalg.norm(g_exact)
    np.testing.assert_allclose(mc[0]["A"], exact[0]["A"], rtol=1e-6)


def test_capture_bad_input():
    mlp = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="output_loss"):
        capture_layers(mlp, "ce", jnp.zeros(2))
    with pytest.raises((ValueError, TypeError), match="sharing"):
        capture_layers(mlp, GaussianLoss(), jnp.zeros(2), sharing="sum")
    plan = capture_layers(mlp, GaussianLoss(), jnp.zeros(2))
    with pytest.raises((ValueError, TypeError), match="mode"):
        kfac_stats(plan, mlp, jnp.zeros((3, 2)), jnp.zeros((3, 2)), mode="exact")
    with pytest.raises(ValueError, match="key"):
        kfac_stats(plan, mlp, jnp.zeros((3, 2)), jnp.zeros((3, 2)), mode="mc")
    other = eqx.nn.MLP(2, 2, 4, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="parameter groups"):
        kfac_stats(plan, other, jnp.zeros((3, 2)), jnp.zeros((3, 2)), mode="empirical")


@pytest.mark.float64
def test_tap_layers_rank_one_per_example_gradients():
    """`g a^T` from `tap_layers` equals each example's weight gradient of `<ct, f(x_n)>` (jax.grad,
    per example and cotangent set); the LayerNorm group's per-example gradients come back too."""
    key = jax.random.split(jax.random.key(0), 4)

    class Net(eqx.Module):
        l0: eqx.nn.Linear
        ln: eqx.nn.LayerNorm
        l1: eqx.nn.Linear

        def __call__(self, x):
            return self.l1(self.ln(jnp.tanh(self.l0(x))))

    net = _f64(
        Net(
            eqx.nn.Linear(3, 4, key=key[0]),
            eqx.nn.LayerNorm(4),
            eqx.nn.Linear(4, 2, use_bias=False, key=key[1]),
        )
    )
    x = jax.random.normal(key[2], (5, 3), jnp.float64)
    cts = jax.random.normal(key[3], (2, 5, 2), jnp.float64)
    plan = capture_layers(net, GaussianLoss(), jnp.zeros(3))
    taps, per_example = eqx.filter_jit(lambda m, x, c: tap_layers(plan, m, x, c))(net, x, cts)
    assert set(taps) == {0, 2}

    def grad_of(s, n):
        return jax.grad(lambda m: jnp.dot(cts[s, n], m(x[n])))(net)

    for s in range(2):
        for n in range(5):
            ref = grad_of(s, n)
            ref0 = jnp.concatenate([ref.l0.weight, ref.l0.bias[:, None]], axis=1)
            np.testing.assert_allclose(
                jnp.outer(taps[0]["g"][s, n], taps[0]["a"][n]), ref0, atol=1e-12
            )
            np.testing.assert_allclose(
                jnp.outer(taps[2]["g"][s, n], taps[2]["a"][n]), ref.l1.weight, atol=1e-12
            )
            np.testing.assert_allclose(per_example.ln.weight[s, n], ref.ln.weight, atol=1e-12)
    with pytest.raises((ValueError, TypeError), match="cotangents"):
        tap_layers(plan, net, x, cts[0])
    with pytest.raises((ValueError, TypeError), match="cotangents"):
        tap_layers(plan, net, x, cts[:, :3])


def test_one_fisher_vocabulary_and_key_required_exactly_when_used():
    """`kfac_stats` defaulted to "mc" where `fit_kfac_factors` defaulted to "expected", and
    `fit_kfac_factors(mode="mc")` silently used key 0 where `kfac_stats` raised."""
    from respax.curvature import fit_ekfac, fit_kfac_factors

    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
    loss = SoftmaxCrossEntropy()
    plan = capture_layers(mlp, loss, jnp.zeros(3))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    y = jnp.arange(6) % 2
    default = kfac_stats(plan, mlp, x, y)
    expected = kfac_stats(plan, mlp, x, y, mode="expected")
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    factors = fit_kfac_factors(plan, mlp, x)
    for a, b in zip(jax.tree.leaves(factors.blocks), jax.tree.leaves(expected[2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for fn in (
        lambda: kfac_stats(plan, mlp, x, y, mode="mc"),
        lambda: fit_kfac_factors(plan, mlp, x, mode="mc"),
        lambda: fit_ekfac(plan, mlp, x, mode="mc"),
    ):
        with pytest.raises(ValueError, match="`key` is required"):
            fn()
    # The key changes the Monte-Carlo factors and nothing else needs one.
    f1 = fit_kfac_factors(plan, mlp, x, mode="mc", key=jax.random.key(1))
    f2 = fit_kfac_factors(plan, mlp, x, mode="mc", key=jax.random.key(2))
    assert not np.allclose(f1.blocks[-1]["G"], f2.blocks[-1]["G"])


def test_skipping_the_statistics_pass_keeps_loss_and_gradient():
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
    plan = capture_layers(mlp, SoftmaxCrossEntropy(), jnp.zeros(3))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    y = jnp.arange(6) % 2
    full = kfac_stats(plan, mlp, x, y)
    for flag in (False, jnp.asarray(False)):
        loss, grads, stats = eqx.filter_jit(
            lambda m, f: kfac_stats(plan, m, x, y, update_curvature=f)
        )(mlp, flag)
        np.testing.assert_allclose(loss, full[0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(full[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert jax.tree.structure(stats) == jax.tree.structure(full[2])
        for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(full[2]), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype and not bool(jnp.any(a))
