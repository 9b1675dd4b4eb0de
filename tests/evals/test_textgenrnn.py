"""The Equinox port of textgenrnn's pretrained character LM: against a numpy forward pass written
from textgenrnn's Keras model, and against the behaviour the reference notes record (greedy text,
bits/char of English against shuffled text)."""

import json
from importlib import resources

import numpy as np
import pytest

from respax.evals import GenerateRequest
from respax.evals._textgenrnn import load_textgenrnn, textgenrnn_cudnn_to_keras

TITLES = [
    "What is the best way to learn to cook?",
    "Can someone explain how the stock market works?",
]


@pytest.fixture(scope="module")
def lm():
    return load_textgenrnn()


def _numpy_logprobs(text: str) -> np.ndarray:
    """log p(char_t | window) for every char of `text`, a plain numpy forward pass."""
    data = resources.files("respax.evals") / "_data"
    vocab = json.loads((data / "textgenrnn_vocab.json").read_text(encoding="utf-8"))
    with (data / "textgenrnn_weights.npz").open("rb") as fh:
        a = {k: v.astype(np.float64) for k, v in np.load(fh).items()}
    layers = [
        textgenrnn_cudnn_to_keras(a[f"{n}/kernel"], a[f"{n}/recurrent_kernel"], a[f"{n}/bias"])
        for n in ("rnn_1", "rnn_2")
    ]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    ids = [vocab["<s>"]] + [vocab[c] for c in text]
    out = []
    for t in range(1, len(ids)):
        ctx = ids[max(0, t - 40) : t]
        window = [0] * (40 - len(ctx)) + ctx
        x = a["embedding/embeddings"][window]
        feats = [x]
        for w, u, b in layers:
            h, c, hs = np.zeros(128), np.zeros(128), []
            for xt in feats[-1]:
                z = xt @ w + h @ u + b
                i, f, g, o = np.split(z, 4)
                c = sig(f) * c + sig(i) * np.tanh(g)
                h = sig(o) * np.tanh(c)
                hs.append(h)
            feats.append(np.stack(hs))
        seq = np.concatenate(feats, axis=1)
        logit = seq @ a["attention/attention_W"][:, 0]
        att = np.exp(logit - logit.max())
        att = att / (att.sum() + 1e-7)
        z = (seq * att[:, None]).sum(0) @ a["output/kernel"] + a["output/bias"]
        logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
        out.append(logp[ids[t]])
    return np.array(out)


def test_matches_numpy_forward_to_1e4_bits_per_char(lm):
    text = "Is it normal for cats to sleep this much?"
    ref = _numpy_logprobs(text)
    ids, logprobs, _, _ = lm.token_logprobs([text])[0]
    assert len(ids) == len(text)
    np.testing.assert_allclose(np.asarray(logprobs), ref, atol=1e-4)
    ours = lm.bits_per_char([text])
    assert abs(ours - (-ref.sum() / np.log(2) / len(text))) < 1e-4


def test_greedy_text_is_the_recorded_one(lm):
    # the reference notes record textgenrnn's greedy output from an empty prefix
    (text,) = lm.generate(
        [GenerateRequest(context="", stop=(), max_tokens=64, temperature=0.0, top_p=1.0, seed=0)]
    )
    assert text.startswith("[Specific] Can someone please remove the state of the state of")


def test_english_far_below_shuffled_and_uniform(lm):
    english = lm.bits_per_char(TITLES)
    rng = np.random.default_rng(0)
    shuffled = lm.bits_per_char(["".join(rng.permutation(list(t))) for t in TITLES])
    assert english < 2.0  # the notes: 0.82-1.52 on three English titles
    assert shuffled > 7.0  # the notes: 7.9-9.0; uniform over 465 is 8.86
    # a context reaching past the 40-character window scores like the window alone
    long = "x" * 50 + " Hello"
    (a,) = lm.loglikelihood([(long, " world")])
    (b,) = lm.loglikelihood([("y" * 10 + long[-40:], " world")])
    assert abs(a.logprob - b.logprob) < 1e-5  # both see the same 40 characters
    (c,) = lm.loglikelihood([(long[-39:], " world")])
    assert abs(a.logprob - c.logprob) > 1e-3  # 39 characters and <s>: another window


def test_bad_input(lm):
    with pytest.raises(ValueError, match="bias"):
        textgenrnn_cudnn_to_keras(np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8))
    with pytest.raises(ValueError, match="recurrent"):
        textgenrnn_cudnn_to_keras(np.zeros((3, 8)), np.zeros((2, 4)), np.zeros(16))
    with pytest.warns(UserWarning, match="not in textgenrnn's vocabulary"):
        lm.tokenizer.encode("tab\there")
    with pytest.raises(ValueError, match="texts"):
        lm.bits_per_char("a string, not a list")
