"""`NGramLM` against nltk.lm's interpolated Witten-Bell model as the oracle.

nltk does the counting and the interpolation recursion. Two conventions differ and are matched
here explicitly: our texts are counted after `order - 1` end-of-text tokens with no end token and
no n-gram ending in padding (passed to nltk as exactly those n-grams), and our lowest order
interpolates the unigram counts with a uniform distribution over the vocabulary where nltk uses
the unigram MLE (its `unigram_score`, overridden below with the same Witten-Bell rule).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from respax.evals import CharTokenizer, NGramLM

nltk_lm = pytest.importorskip("nltk.lm")
from nltk.lm.models import InterpolatedLanguageModel  # noqa: E402
from nltk.lm.smoothing import WittenBell  # noqa: E402

PAD = "<s>"


def _nltk_model(texts, order, vocab_size):
    class UniformBaseWittenBell(WittenBell):
        def unigram_score(self, word):
            uni = self.counts.unigrams
            n1 = sum(1 for c in uni.values() if c > 0)
            return (uni[word] + n1 / vocab_size) / (uni.N() + n1)

    lm = InterpolatedLanguageModel(UniformBaseWittenBell, order)
    grams = []
    for t in texts:
        s = [PAD] * (order - 1) + list(t)
        grams.append(
            [
                tuple(s[j - m + 1 : j + 1])
                for j in range(order - 1, len(s))
                for m in range(1, order + 1)
            ]
        )
    lm.fit(grams, vocabulary_text=[PAD, *"".join(texts)])
    return lm


def _ours_and_nltk(texts, order, query):
    tok = CharTokenizer.from_text("".join(texts) + query)
    ours = NGramLM.fit(list(texts), order=order, tokenizer=tok)
    ref = _nltk_model(texts, order, tok.vocab_size)
    # per-character log-probability of `query` scored from a fresh start
    ids, lps, _, _ = ours.token_logprobs([query])[0]
    hist = [PAD] * (order - 1)
    want = []
    for c in query:
        want.append(
            math.log(ref.score(c, tuple(hist[len(hist) - (order - 1) :]) if order > 1 else None))
        )
        hist.append(c)
    return np.asarray(lps, np.float64), np.array(want)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_matches_nltk_witten_bell(order):
    texts = ["the cat sat on the mat", "a cat and a hat", "the hat sat"]
    ours, want = _ours_and_nltk(texts, order, "the cat and the hat sat on a mat")
    np.testing.assert_allclose(ours, want, rtol=1e-9, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="abc ", min_size=1, max_size=12), min_size=1, max_size=4),
    query=st.text(alphabet="abc ", min_size=1, max_size=10),
    order=st.integers(1, 4),
)
def test_matches_nltk_on_random_texts(texts, query, order):
    ours, want = _ours_and_nltk(texts, order, query)
    np.testing.assert_allclose(ours, want, rtol=1e-9, atol=1e-12)
