"""textgenrnn's pretrained character LM (Max Woolf, MIT; 462,717 parameters, trained on Reddit
submission titles) ported to Equinox: an offline reference model that needs no download.

The architecture, from textgenrnn 2.0.0's `model.py`: embedding 465x100 -> two LSTMs of 128
(`return_sequences`) -> the concatenation [embedding, LSTM 1, LSTM 2] (356 channels) -> an
attention-weighted average over the 40 window positions -> softmax over 465 classes. The input is
the last 40 characters of `<s>` + text, pre-padded with id 0 (which is not masked). The weights
were saved from CuDNN LSTMs; `load_textgenrnn` converts them to the standard gate layout (i, f, c,
o) as Keras does when it loads such a file.
"""

import json
import warnings
from collections.abc import Sequence
from importlib import resources

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._token_lm import TokenLM

__all__ = ["TextGenRNN", "TextGenRNNTokenizer", "load_textgenrnn", "textgenrnn_cudnn_to_keras"]

WINDOW = 40
_EPSILON = 1e-7  # Keras's K.epsilon() in the attention normalizer


class TextGenRNNTokenizer:
    """textgenrnn's character vocabulary: ids 1..464 from its `textgenrnn_vocab.json`, `<s>`
    (id 464) as end-of-text, id 0 the padding that unknown characters also map to (as in
    textgenrnn). Encoding a character outside the vocabulary warns, naming it.

    Example:
        >>> tok = load_textgenrnn().tokenizer
        >>> tok.decode(tok.encode("Hi there")), tok.eot_id, tok.vocab_size
        ('Hi there', 464, 465)
    """

    def __init__(self, vocab: dict[str, int]):
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError("`vocab` must be a non-empty dict of character -> id.")
        if "<s>" not in vocab:
            raise ValueError("`vocab` must hold the meta token '<s>'.")
        self._ids = dict(vocab)
        self._chars = {i: c for c, i in vocab.items()}
        self.vocab_size = max(vocab.values()) + 1
        self.eot_id = vocab["<s>"]
        self.unk_id = 0
        self.merges_leading_space = False

    def encode(self, text: str) -> list[int]:
        ids = [self._ids.get(c, 0) for c in text]
        if 0 in ids:
            missing = sorted({c for c in text if c not in self._ids})
            warnings.warn(
                f"characters not in textgenrnn's vocabulary map to its padding id 0: {missing!r}",
                stacklevel=2,
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                continue
            out.append(self._chars.get(i, "\ufffd"))
        return "".join(out)


def textgenrnn_cudnn_to_keras(
    kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The standard LSTM weights `(W [in, 4u], U [u, 4u], b [4u])` of CuDNN-saved ones.

    CuDNN stores each gate's input kernel in column-major order and its recurrent kernel
    transposed, with separate input and recurrent biases (`bias` has 8u entries). Per gate:
    `W_g = k_g.T.reshape(k_g.shape, order="F")`, `U_g = r_g.T`, `b = b_in + b_rec`.
    """
    kernel, recurrent, bias = (np.asarray(a) for a in (kernel, recurrent, bias))
    units = recurrent.shape[0]
    if kernel.shape[1] != 4 * units or recurrent.shape != (units, 4 * units):
        raise ValueError(
            f"`kernel` must be [in, {4 * units}] and `recurrent` [{units}, {4 * units}], "
            f"got {kernel.shape} and {recurrent.shape}."
        )
    if bias.shape != (8 * units,):
        raise ValueError(f"`bias` must hold 8 * units = {8 * units} biases, got {bias.shape}.")
    w = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, 4)])
    u = np.hstack([r.T for r in np.hsplit(recurrent, 4)])
    b = bias[: 4 * units] + bias[4 * units :]
    return w, u, b


class TextGenRNN(eqx.Module):
    """The textgenrnn network; `__call__` maps windows `int[..., 40]` to next-character
    log-probabilities `[..., 465]`. Build it with `load_textgenrnn`."""

    embedding: Float[Array, "vocab 100"]
    lstm: tuple[tuple[Array, Array, Array], ...]
    attention: Float[Array, " channels"]
    out_w: Float[Array, "channels vocab"]
    out_b: Float[Array, " vocab"]

    def _lstm(self, x, w, u, b):
        # x [T, B, in] -> h [T, B, u]; Keras LSTM with sigmoid recurrent activation
        units = u.shape[0]
        xw = x @ w + b

        def step(carry, xw_t):
            h, c = carry
            z = xw_t + h @ u
            i, f, g, o = (z[..., k * units : (k + 1) * units] for k in range(4))
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros(x.shape[1:-1] + (units,), x.dtype)
        return jax.lax.scan(step, (zeros, zeros), xw)[1]

    def __call__(self, windows: Int[Array, "*batch 40"]) -> Float[Array, "*batch vocab"]:
        batch = windows.shape[:-1]
        x = self.embedding[windows.reshape(-1, windows.shape[-1]).T]  # [T, B, 100]
        feats = [x]
        for w, u, b in self.lstm:
            feats.append(self._lstm(feats[-1], w, u, b))
        seq = jnp.concatenate(feats, axis=-1)  # [T, B, 356]
        logits = seq @ self.attention
        a = jnp.exp(logits - logits.max(axis=0, keepdims=True))
        a = a / (a.sum(axis=0, keepdims=True) + _EPSILON)
        pooled = jnp.sum(seq * a[..., None], axis=0)  # [B, 356]
        out = jax.nn.log_softmax(pooled @ self.out_w + self.out_b, axis=-1)
        return out.reshape(batch + out.shape[-1:])


def _windows(inputs: jnp.ndarray) -> jnp.ndarray:
    # the window predicting position t holds inputs[t-39 .. t], pre-padded with 0
    t = jnp.arange(inputs.shape[1])
    idx = t[:, None] - (WINDOW - 1) + jnp.arange(WINDOW)[None, :]
    win = jnp.take(inputs, jnp.clip(idx, 0), axis=1)
    return jnp.where(idx >= 0, win, 0)


@eqx.filter_jit
def _score(net: TextGenRNN, inputs, targets):
    logp = net(_windows(inputs))  # [B, T, V]
    lp = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    top = logp.argmax(-1)
    top_lp = logp.max(-1)
    return lp, lp >= top_lp, top, top_lp


@eqx.filter_jit
def _next(net: TextGenRNN, inputs, lengths):
    win = _windows(inputs)
    return net(win[jnp.arange(inputs.shape[0]), lengths - 1])


@eqx.filter_jit
def _window_logits(net: TextGenRNN, windows):
    return net(windows)


class _TextGenRNNLM(TokenLM):
    """The LM protocol (`loglikelihood`, `loglikelihood_rolling`, `generate`) over `TextGenRNN`:
    every character is predicted from its own 40-character window, as textgenrnn does."""

    def __init__(self, net: TextGenRNN, tokenizer: TextGenRNNTokenizer, batch_size: int = 8):
        self.net = net
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # rows of any length: each position sees only its own window
        self.max_length = 2048

    def score_tokens(self, inputs, targets):
        return _score(self.net, jnp.asarray(inputs), jnp.asarray(targets))

    def next_logits(self, inputs, lengths):
        return _next(self.net, jnp.asarray(inputs), jnp.asarray(lengths))

    def _last_logits(self, seq):
        # one fixed-shape window per step: a single compilation for any prompt length
        window = np.zeros((1, WINDOW), np.int32)
        tail = seq[-WINDOW:]
        window[0, WINDOW - len(tail) :] = tail
        return np.asarray(_window_logits(self.net, jnp.asarray(window)))[0]

    def bits_per_char(self, texts: Sequence[str]) -> float:
        """Bits per character of `texts` (each scored from `<s>`; the end token is not scored)."""
        if isinstance(texts, str) or not texts:
            raise ValueError("`texts` must be a non-empty list of strings.")
        total = sum(self.loglikelihood_rolling(list(texts)))
        return -total / np.log(2) / sum(len(t) for t in texts)


def load_textgenrnn(batch_size: int = 8) -> _TextGenRNNLM:
    """textgenrnn 2.0.0's shipped character LM as an in-process backend of the LM protocol.

    The weights and vocabulary ship with this package (`_data/textgenrnn_*`, MIT licence beside
    them); nothing is downloaded.

    Example:
        >>> lm = load_textgenrnn()
        >>> bpc = lm.bits_per_char(["What is the best way to learn to cook?"])
        >>> bool(bpc < 3.0)
        True
    """
    data = resources.files("respax.evals") / "_data"
    vocab = json.loads((data / "textgenrnn_vocab.json").read_text(encoding="utf-8"))
    with (data / "textgenrnn_weights.npz").open("rb") as fh:
        arrays = dict(np.load(fh))
    lstm = []
    for name in ("rnn_1", "rnn_2"):
        w, u, b = textgenrnn_cudnn_to_keras(
            arrays[f"{name}/kernel"], arrays[f"{name}/recurrent_kernel"], arrays[f"{name}/bias"]
        )
        lstm.append((jnp.asarray(w), jnp.asarray(u), jnp.asarray(b)))
    net = TextGenRNN(
        embedding=jnp.asarray(arrays["embedding/embeddings"]),
        lstm=tuple(lstm),
        attention=jnp.asarray(arrays["attention/attention_W"][:, 0]),
        out_w=jnp.asarray(arrays["output/kernel"]),
        out_b=jnp.asarray(arrays["output/bias"]),
    )
    return _TextGenRNNLM(net, TextGenRNNTokenizer(vocab), batch_size=batch_size)
