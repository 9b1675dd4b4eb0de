"""The protocol on the in-process backends: n-gram counts oracle, rolling windows, generation."""

import collections
import math

import jax
import numpy as np
import pytest
from hypothesis import given, strategies as st

import respax.evals as ev

TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog."


def _witten_bell(text, order, tok):
    """Brute-force interpolated Witten-Bell from Python dict counts (the docstring's formula)."""
    eot = tok.eot_id
    seq = [eot] * order + tok.encode(text)
    counts = collections.Counter()
    for m in range(1, order + 1):
        for j in range(order, len(seq)):
            counts[tuple(seq[j - m + 1 : j + 1])] += 1
    v = tok.vocab_size

    def p(c, hist):
        prob = 1.0 / v
        for m in range(1, order + 1):
            h = tuple(hist[len(hist) - (m - 1) :]) if m > 1 else ()
            followers = {g[-1]: n for g, n in counts.items() if len(g) == m and g[:-1] == h}
            if not followers:
                continue
            ch, n1 = sum(followers.values()), len(followers)
            prob = (followers.get(c, 0) + n1 * prob) / (ch + n1)
        return prob

    return p


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_matches_brute_force_counts(order):
    lm = ev.NGramLM.fit(TEXT, order=order)
    tok = lm.tokenizer
    p = _witten_bell(TEXT, order, tok)
    text = "the cat on a log"
    x = [tok.eot_id] * order + tok.encode(text)
    expected = sum(math.log(p(x[j], x[j - order + 1 : j])) for j in range(order, len(x)))
    got = lm.loglikelihood_rolling([text])[0]
    assert abs(got - expected) < 1e-10
    # the distribution over the next token sums to one
    probs = np.exp(lm.next_logits(np.array([[tok.eot_id] + tok.encode("the c")]), np.array([6])))
    assert abs(probs.sum() - 1.0) < 1e-12


def test_ngram_loglikelihood_is_a_rolling_difference():
    lm = ev.NGramLM.fit(TEXT, order=3)
    ctx, cont = "the cat", " sat on"
    ll = lm.loglikelihood([(ctx, cont)])[0].logprob
    full, head = lm.loglikelihood_rolling([ctx + cont, ctx])
    assert abs(ll - (full - head)) < 1e-10


@given(n=st.integers(0, 40), max_length=st.integers(1, 12), data=st.data())
def test_rolling_windows_cover_every_token_once(n, max_length, data):
    stride = data.draw(st.integers(1, max_length))
    wins = ev.rolling_windows(n, max_length, stride)
    scored = [j for _, s, e in wins for j in range(s, e)]
    assert scored == list(range(1, n + 1))
    for a, s, e in wins:
        assert 0 <= a <= s - 1 and e - 1 - a <= max_length


@pytest.fixture(scope="module")
def tiny_lm():
    tok = ev.CharTokenizer.from_text(TEXT)
    cfg = ev.GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return ev.JaxLM(ev.GPT2.init(cfg, key=jax.random.key(0)), tok, batch_size=4, pad_multiple=8)


def test_rolling_equals_full_context_sum_when_the_window_covers_it(tiny_lm):
    text = "the dog sat on the mat"  # 22 chars + eot < 32 positions: one window
    tok = tiny_lm.tokenizer
    x = np.array([tok.eot_id] + tok.encode(text))
    logp = jax.nn.log_softmax(ev.gpt2_logits(tiny_lm.model, x[:-1]), -1)
    full = float(np.take_along_axis(np.asarray(logp), x[1:, None], -1).sum())
    got = tiny_lm.loglikelihood_rolling([text])[0]
    assert abs(got - full) < 1e-4
    # small windows score the same tokens with less context: the same number of terms, a
    # different value; stride 1 with a full window is again the full-context sum
    assert abs(tiny_lm.loglikelihood_rolling([text], stride=1)[0] - full) < 1e-4


def test_rolling_is_the_sum_of_per_token_loglikelihoods(tiny_lm):
    text = "a cat and a dog"
    per_token = sum(
        tiny_lm.loglikelihood([(text[:i], text[i])])[0].logprob for i in range(len(text))
    )
    assert abs(tiny_lm.loglikelihood_rolling([text])[0] - per_token) < 1e-4


def test_jit_and_no_jit_agree_and_batching_does_not_change_scores(tiny_lm):
    reqs = [("the cat", " sat"), ("a", " dog"), ("the mat. the", " log.")]
    eager = ev.JaxLM(tiny_lm.model, tiny_lm.tokenizer, batch_size=4, jit=False, pad_multiple=8)
    a = tiny_lm.loglikelihood(reqs)
    b = eager.loglikelihood(reqs)
    alone = [tiny_lm.loglikelihood([r])[0] for r in reqs]
    for x, y, z in zip(a, b, alone, strict=True):
        assert abs(x.logprob - y.logprob) < 1e-5 and x.is_greedy == y.is_greedy
        assert x == z  # fixed-shape batches: bit-identical whatever a request is batched with


@pytest.mark.slow
def test_kv_cache_generation_equals_recomputation(tiny_lm):
    reqs = [
        ev.GenerateRequest("the ", max_tokens=10),
        ev.GenerateRequest("a cat and a", max_tokens=7, temperature=1.0, top_p=0.9, seed=3),
    ]
    nocache = ev.JaxLM(tiny_lm.model, tiny_lm.tokenizer, batch_size=4, use_cache=False)
    assert tiny_lm.generate(reqs) == nocache.generate(reqs)


def test_greedy_kv_cache_generation_is_the_argmax_at_every_token(tiny_lm):
    out = tiny_lm.generate([ev.GenerateRequest("the ", max_tokens=10)])[0]
    assert len(out) > 0 and tiny_lm.loglikelihood([("the ", out)])[0].is_greedy


def test_generate_is_seeded_and_cut_at_stops():
    lm = ev.NGramLM.fit(TEXT, order=3)
    r = ev.GenerateRequest("the ", max_tokens=30, temperature=1.0, top_p=0.975, seed=7)
    assert lm.generate([r]) == lm.generate([r])
    stopped = lm.generate([ev.GenerateRequest("the ", max_tokens=30, stop=(".", " -"))])[0]
    assert "." not in stopped and len(stopped) < 30
    assert lm.generate([ev.GenerateRequest("the ", max_tokens=30)])[0].startswith(stopped)


def test_bad_requests_and_capabilities():
    lm = ev.NGramLM.fit(TEXT, order=2)
    with pytest.raises(ValueError, match="top_p"):
        ev.GenerateRequest("x", top_p=0.0)
    with pytest.raises(TypeError, match="stop"):
        ev.GenerateRequest("x", stop="\n")
    with pytest.raises(TypeError, match="pair|requests"):
        lm.loglikelihood(["just a string"])
    with pytest.raises(ValueError, match="order"):
        ev.NGramLM.fit(TEXT, order=0)
    ev.require(lm, "exact_loglikelihood")

    class ChatOnly:
        capabilities = ev.Capabilities(
            loglikelihood=True, rolling=False, generate=True, approximate=True
        )

        def loglikelihood(self, requests):
            raise AssertionError

        def loglikelihood_rolling(self, texts):
            raise AssertionError

        def generate(self, requests):
            raise AssertionError

    with pytest.raises(ev.CapabilityError, match="exact"):
        ev.require(ChatOnly(), "exact_loglikelihood")
    with pytest.raises(ev.CapabilityError, match="rolling"):
        ev.require(ChatOnly(), "rolling")
