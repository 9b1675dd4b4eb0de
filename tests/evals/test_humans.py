"""The games' analyses: the importance-sampling estimator against an LM player's true loss, its
bias with rounded ratios and few samples, per-player accuracy, the filters, the half-player
bootstrap and the log loaders on generated logs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import respax.evals as ev


def _world(key, prompts=1000, vocab=200, samples=400):
    """Data, player and generator next-token distributions that share a common base."""
    k = jax.random.split(key, 6)
    base = 2.0 * jax.random.normal(k[0], (prompts, vocab))
    log_p = jax.nn.log_softmax(base + 0.5 * jax.random.normal(k[1], (prompts, vocab)))
    log_h = jax.nn.log_softmax(base + 0.7 * jax.random.normal(k[2], (prompts, vocab)))
    log_g = jax.nn.log_softmax(base + 0.7 * jax.random.normal(k[3], (prompts, vocab)))
    t_true = jax.random.categorical(k[4], log_p)
    t_s = ev.sample_tokens(log_g, samples, key=k[5])

    def take(a, i):
        return jnp.take_along_axis(a, i, -1)

    lh_true, lg_true = take(log_h, t_true[:, None])[:, 0], take(log_g, t_true[:, None])[:, 0]
    return lh_true, take(log_h, t_s), lg_true, take(log_g, t_s)


@jax.jit
def _oracle(key):
    lh_true, lh_s, lg_true, lg_s = _world(key)
    true_gap = jnp.mean(lg_true - lh_true)
    r = ev.exact_ratio(lh_true[:, None], lh_s)
    sizes = [1, 4, 16, 100, 400]
    return (
        true_gap,
        -lh_true.mean(),
        ev.loss_gap(r, lg_s, lg_true),
        ev.estimator_bias_curve(r, lg_s, lg_true, true_gap, sizes),
        ev.estimator_bias_curve(ev.round_to_buttons(r), lg_s, lg_true, true_gap, sizes),
    )


@pytest.mark.float64
def test_estimator_recovers_lm_players_loss():
    true_gap, true_loss, est, bias_exact, bias_rounded = _oracle(jax.random.key(0))
    # the player's loss = gap + the reference's mean loss; the reference part is exact
    assert abs(float(est - true_gap)) < 0.02
    assert float(bias_exact[-1]) == pytest.approx(float(est - true_gap))
    # log of a mean: biased low, less so with more samples per prompt
    b = np.asarray(bias_exact)
    assert np.all(b < 0.0) and np.all(np.diff(np.abs(b)) < 0)
    print(
        f"\ntrue loss {float(true_loss):.4f}, gap {float(true_gap):.4f}, exact-ratio error "
        f"{float(est - true_gap):+.4f}; bias vs samples/prompt [1,4,16,100,400]: exact "
        f"{np.round(b, 4).tolist()}, rounded {np.round(np.asarray(bias_rounded), 4).tolist()}"
    )
    # rounding to the buttons biases the estimate by far more than 0.02 nats here
    assert abs(float(bias_rounded[-1])) > 0.02


def test_sample_tokens_matches_distribution():
    p = jnp.array([[0.1, 0.6, 0.3], [0.5, 0.0, 0.5]])
    s = jax.jit(lambda lp, k: ev.sample_tokens(lp, 20000, key=k))(jnp.log(p), jax.random.key(1))
    freq = np.stack([np.bincount(np.asarray(row), minlength=3) / 20000 for row in s])
    np.testing.assert_allclose(freq, np.asarray(p), atol=0.015)


def test_loss_gap_closed_form_and_masks():
    # one prompt, two answers: ln(q* * mean((1/r - 1) / g))
    r = jnp.array([[0.8, 0.25], [0.5, 0.5]])
    lg = jnp.log(jnp.array([[0.5, 0.2], [0.1, 0.1]]))
    lq = jnp.log(jnp.array([0.4, 0.3]))
    mask = jnp.array([[True, True], [True, False]])
    want0 = np.log(0.4 * np.mean([(1 / 0.8 - 1) / 0.5, (1 / 0.25 - 1) / 0.2]))
    want1 = np.log(0.3 * (1.0 / 0.1))
    got = ev.loss_gap_per_prompt(r, lg, lq, mask)
    np.testing.assert_allclose(got, [want0, want1], rtol=1e-5)
    none = ev.loss_gap_per_prompt(r, lg, lq, jnp.array([[True, True], [False, False]]))
    assert np.isnan(none[1]) and float(ev.loss_gap(r, lg, lq, none.shape and mask)) == (
        pytest.approx(float((want0 + want1) / 2), rel=1e-5)
    )
    with pytest.raises((ValueError, TypeError)):  # the runtime type check or our own message
        ev.loss_gap_per_prompt(r[0], lg, lq)
    with pytest.raises((ValueError, TypeError)):
        ev.loss_gap_per_prompt(r, lg[:, :1], lq)
    np.testing.assert_allclose(
        ev.round_to_buttons(jnp.array([0.04, 0.96, 0.449])), [0.01, 0.99, 0.4]
    )


def _jackknife_brute_force(w, mask):
    """Per row, c ln mean(w) - (c - 1) mean_j ln mean(w without j), one leave-one-out at a
    time in float64 numpy."""
    out = []
    for row, m in zip(w, mask, strict=True):
        x = row[m]
        c = len(x)
        if c < 2:
            out.append(np.nan)
            continue
        loo = [np.log(np.mean(np.delete(x, j))) for j in range(c)]
        out.append(c * np.log(np.mean(x)) - (c - 1) * np.mean(loo))
    return np.array(out)


@pytest.mark.float64
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 6.0))
def test_jackknife_matches_brute_force_leave_one_out(seed, spread):
    """Oracle: the stable leave-one-out formula equals the brute-force jackknife, heavy tails
    (one weight e^(6 * a few) times the rest) and masked rows included; one answer gives NaN."""
    rng = np.random.default_rng(seed)
    r = 1.0 / (1.0 + np.exp(spread * rng.standard_normal((5, 7))))
    lg = np.log(rng.uniform(0.01, 1.0, (5, 7)))
    lq = np.log(rng.uniform(0.01, 1.0, 5))
    mask = rng.random((5, 7)) < 0.8
    mask[0] = True
    mask[1] = False
    mask[1, 3] = True  # one answer
    w = np.exp(lq[:, None] + np.log1p(-r) - np.log(r) - lg)
    got = ev.loss_gap_per_prompt(r, lg, lq, mask, bias_correction="jackknife")
    want = _jackknife_brute_force(w, mask)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert np.isnan(got[1])
    # constant weights: no bias to remove, the jackknife is the plain log of the mean
    flat = ev.loss_gap_per_prompt(
        jnp.full((2, 4), 0.3), jnp.zeros((2, 4)), jnp.zeros(2), bias_correction="jackknife"
    )
    np.testing.assert_allclose(flat, np.log(0.7 / 0.3), rtol=1e-12)


@pytest.mark.float64
def test_jackknife_removes_most_of_the_log_mean_bias():
    """Lognormal weights with a known mean (so a known true log-mean): over many prompts of 50
    samples the jackknife's bias is a small fraction of the plain estimator's."""
    rng = np.random.default_rng(0)
    sigma, n, prompts = 1.5, 50, 4000
    log_w = sigma * rng.standard_normal((prompts, n))  # E[w] = exp(sigma^2 / 2)
    true = sigma**2 / 2
    # r with 1/r - 1 = w (g = q = 1): r = 1 / (1 + w)
    r = 1.0 / (1.0 + np.exp(log_w))
    zeros = np.zeros((prompts, n))
    plain = float(ev.loss_gap(r, zeros, np.zeros(prompts)) - true)
    jack = float(ev.loss_gap(r, zeros, np.zeros(prompts), bias_correction="jackknife") - true)
    assert plain < -0.05 and abs(jack) < 0.3 * abs(plain), (plain, jack)
    with pytest.raises((ValueError, TypeError), match="bias_correction"):  # type check or ours
        ev.loss_gap(r, zeros, np.zeros(prompts), bias_correction="delta")
    with pytest.raises(ValueError, match="jackknife needs sizes >= 2"):
        ev.estimator_bias_curve(r, zeros, np.zeros(prompts), 0.0, [1], bias_correction="jackknife")


@given(
    st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=60),
    st.integers(0, 5),
)
def test_accuracy_per_player_brute_force(guesses, min_guesses):
    # padded to one shape (pad rows go to a fifth, ignored player): one compilation
    player = np.full(60, 4, np.int32)
    correct = np.zeros(60, bool)
    player[: len(guesses)] = [p for p, _ in guesses]
    correct[: len(guesses)] = [c for _, c in guesses]
    acc, n, kept = ev.accuracy_per_player(player, correct, 5, min_guesses=min_guesses)
    for p in range(4):
        rows = [c for q, c in guesses if q == p]
        assert int(n[p]) == len(rows) and bool(kept[p]) == (len(rows) > min_guesses)
        if rows:
            assert float(acc[p]) == pytest.approx(sum(rows) / len(rows))
        else:
            assert np.isnan(acc[p])


def test_target_filters():
    texts = [" the", "\n", "", " cat", "\ufffd", " naïve", "ing", " dog"]
    nxt = [" a", " b", " c", ",", " d", " e", " f", None]
    assert ev.target_filter(texts).tolist() == [True, False, False, True, False, True, True, True]
    assert ev.target_filter(texts, nxt, word=True).tolist() == [True] + [False] * 7
    with pytest.raises(ValueError, match="next_texts"):
        ev.target_filter(texts, word=True)


def test_half_player_bootstrap():
    x = jnp.arange(20.0)

    @jax.jit
    def boot(key):
        # the mean of the drawn players' values, and how many were drawn
        return ev.half_player_bootstrap(
            lambda m: jnp.stack([jnp.sum(x * m) / m.sum(), m.sum().astype(x.dtype)]),
            20,
            key=key,
            num_draws=100,
        )

    ci = boot(jax.random.key(0))
    assert float(ci.estimate[0]) == pytest.approx(9.5) and float(ci.estimate[1]) == 20
    assert float(ci.lower[0]) < 9.5 < float(ci.upper[0]) and float(ci.standard_error[0]) > 0
    # every draw holds exactly half of the players, drawn without replacement
    assert float(ci.lower[1]) == float(ci.upper[1]) == 10.0
    with pytest.raises(ValueError, match="num_players"):
        ev.half_player_bootstrap(lambda m: m.sum(), 1, key=jax.random.key(0))


@pytest.fixture(scope="module")
def vocab():
    return ev.GPT2Vocab()


def test_replayed_top1_log_gives_hand_computed_accuracies(tmp_path, vocab):
    docs = {f"d{i}": vocab.tokenizer.encode(t) for i, t in enumerate(["a b c d e f g h"] * 2)}
    log = tmp_path / "log.jsonl"
    plan = {"ann": (60, 3), "bob": (55, 5), "cy": (10, 1)}  # guesses, every k-th right
    for name, (n, k) in plan.items():
        game = ev.TopOneGame(docs, vocab, log, name)
        for i in range(n):
            p = game.current()
            tgt = docs[p.doc_id][p.position]
            game.guess(vocab.token_text(tgt) if i % k == 0 else " the")
    table = ev.load_top1_log(log, docs, vocab)
    acc, n, kept = ev.accuracy_per_player(table.player, table.correct, len(table.players))
    want = {"ann": 20 / 60, "bob": 11 / 55, "cy": 10 / 10}
    for i, name in enumerate(table.players):
        assert int(n[i]) == plan[name][0]
        assert acc[i] == np.float32(round(want[name] * plan[name][0])) / np.float32(n[i])
    assert kept.tolist() == [True, True, False] and table.mismatched == 0
    # a model scored on exactly the same (doc, position) pairs: greedy = true token half the time
    model_pred = np.where(table.position % 2 == 0, table.target_id, 0)
    assert float(np.mean(model_pred == table.target_id)) == np.mean(table.position % 2 == 0)
    with pytest.raises(ValueError, match="not in docs"):
        ev.load_top1_log(log, {"d0": docs["d0"]}, vocab)


def test_pair_log_loader_and_estimate(tmp_path, vocab):
    docs = {"d": vocab.tokenizer.encode("The cat sat on the mat and then it slept.")}
    n_q, v = 6, vocab.vocab_size
    z = np.random.default_rng(0).standard_normal((n_q, v)).astype(np.float32)
    lp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    s = jax.jit(lambda lp, k: ev.sample_tokens(lp, 5, key=k))(lp, jax.random.key(1))
    qs = ev.make_pair_questions([("d", i + 1) for i in range(n_q)], docs, lp, s)
    log = tmp_path / "pair.jsonl"
    for name in ["ann", "bob", "cy", "dee"]:
        game = ev.PairGame(qs, vocab, log, name, n_training=2)
        stop = 3 if name == "dee" else n_q  # dee quits early and is dropped
        for _ in range(stop):
            game.answer(0.7)
    table = ev.load_pair_log(log, qs[2:])
    assert table.players == ("ann", "bob", "cy") and table.dropped_players == ("dee",)
    assert table.r.shape == (4, 3) and table.mask.all()
    recs = [r for r in ev.read_log(log)[0] if r["player"] == "ann" and not r["training"]]
    np.testing.assert_allclose(table.r[:, 0], [r["g"] for r in recs])
    lq = jnp.array([q.gen_logprob_true for q in qs[2:]])
    est = ev.loss_gap(table.r, table.log_gen_sampled, lq, table.mask)
    manual = np.mean(
        [
            q.gen_logprob_true
            + np.log(
                np.mean(
                    [
                        (1 / table.r[i, j] - 1) / np.exp(table.log_gen_sampled[i, j])
                        for j in range(3)
                    ]
                )
            )
            for i, q in enumerate(qs[2:])
        ]
    )
    assert float(est) == pytest.approx(manual, rel=1e-4)
