"""An n-gram language model with interpolated Witten-Bell smoothing over a uniform base, on any
`Tokenizer` (a character tokenizer by default). Counting and scoring are vectorized numpy."""

from collections.abc import Sequence

import numpy as np

from ._token_lm import TokenLM
from ._tokenizer import CharTokenizer, Tokenizer

__all__ = ["NGramLM"]


def _codes(windows: np.ndarray, vocab: int) -> np.ndarray:
    code = np.zeros(windows.shape[:-1], np.int64)
    for j in range(windows.shape[-1]):
        code = code * vocab + windows[..., j]
    return code


class NGramLM(TokenLM):
    """Interpolated Witten-Bell n-gram model (nltk.lm's `WittenBellInterpolated` rule):

    `p_m(c | h) = (C(h c) + N1(h) p_{m-1}(c | h')) / (C(h) + N1(h))` for a history `h` of
    `m - 1` tokens seen in training (`h'` drops its oldest token; `N1(h)` counts the distinct
    tokens seen after `h`), `p_m = p_{m-1}` for an unseen history, and `p_0 = 1 / vocab_size`.
    Every text is counted and scored after `order - 1` end-of-text tokens.

    Use `NGramLM.fit`.

    Example:
        >>> lm = NGramLM.fit("abababab", order=2)
        >>> lp, greedy = lm.loglikelihood([("abab", "a")])[0]
        >>> greedy, round(lp, 3) > -0.2
        (True, True)
    """

    def __init__(self, tokenizer: Tokenizer, order: int, tables, max_length: int = 1024):
        self.tokenizer = tokenizer
        self.order = order
        self._tables = tables
        self.max_length = max_length
        self.batch_size = 8

    @classmethod
    def fit(
        cls,
        texts: str | Sequence[str],
        order: int = 3,
        tokenizer: Tokenizer | None = None,
        max_length: int = 1024,
    ) -> "NGramLM":
        """Count the n-grams of `texts` (each text starts after end-of-text padding).

        Args:
            texts: a text or a list of texts.
            order: n, >= 1 (1 is a smoothed unigram model).
            tokenizer: default a `CharTokenizer` of the texts' characters.
            max_length: tokens per scoring batch row (any length works; n-grams look back
                `order - 1` tokens only).
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"`order` must be an int >= 1, got {order!r}.")
        tokenizer = tokenizer or CharTokenizer.from_text("".join(texts))
        v = tokenizer.vocab_size
        if v**order >= 2**62:
            raise ValueError(f"vocab_size**order = {v}**{order} overflows the int64 n-gram codes.")
        seqs = [
            np.array([tokenizer.eot_id] * (order - 1) + [tokenizer.eot_id] + tokenizer.encode(t))
            for t in texts
        ]
        tables = []
        for m in range(1, order + 1):
            grams = [
                np.lib.stride_tricks.sliding_window_view(s[order - m :], m)
                for s in seqs
                if len(s) - (order - m) >= m
            ]
            grams = _drop_first(grams)
            g_codes, g_counts = np.unique(_codes(grams, v), return_counts=True)
            h_of_g = g_codes // v
            h_codes, start = np.unique(h_of_g, return_index=True)
            h_counts = np.add.reduceat(g_counts, start) if len(start) else np.zeros(0, np.int64)
            h_types = np.diff(np.append(start, len(h_of_g)))
            tables.append((g_codes, g_counts, h_codes, h_counts, h_types))
        return cls(tokenizer, order, tables, max_length)

    def _prob_all(self, hist: np.ndarray) -> np.ndarray:
        """`p(. | hist)` for `hist` of shape `[..., order - 1]`, returning `[..., V]`."""
        v = self.tokenizer.vocab_size
        p = np.full(hist.shape[:-1] + (v,), 1.0 / v)
        cand = np.arange(v)
        for m in range(1, self.order + 1):
            g_codes, g_counts, h_codes, h_counts, h_types = self._tables[m - 1]
            h = _codes(hist[..., self.order - m :], v) if m > 1 else np.zeros(hist.shape[:-1], int)
            hi = np.searchsorted(h_codes, h).clip(0, max(len(h_codes) - 1, 0))
            seen = (h_codes[hi] == h) if len(h_codes) else np.zeros(h.shape, bool)
            ch = np.where(seen, h_counts[hi] if len(h_codes) else 0, 0)[..., None]
            n1 = np.where(seen, h_types[hi] if len(h_codes) else 0, 0)[..., None]
            g = h[..., None] * v + cand
            gi = np.searchsorted(g_codes, g).clip(0, len(g_codes) - 1)
            cg = np.where(g_codes[gi] == g, g_counts[gi], 0)
            new = (cg + n1 * p) / np.maximum(ch + n1, 1)
            p = np.where(seen[..., None], new, p)
        return p

    def _histories(self, inputs: np.ndarray) -> np.ndarray:
        # the history of position t is inputs[t-order+2 .. t], left-padded with end-of-text
        k = self.order - 1
        pad = np.full((inputs.shape[0], k), self.tokenizer.eot_id, inputs.dtype)
        x = np.concatenate([pad, inputs], axis=1)
        return np.lib.stride_tricks.sliding_window_view(x, k + 1, axis=1)[:, : inputs.shape[1]][
            ..., 1:
        ]

    def score_tokens(self, inputs, targets):
        p = self._prob_all(self._histories(np.asarray(inputs)))
        t = np.asarray(targets)
        pt = np.take_along_axis(p, t[..., None], -1)[..., 0]
        top = p.max(-1)
        return np.log(pt), pt >= top, p.argmax(-1), np.log(top)

    def next_logits(self, inputs, lengths):
        inputs = np.asarray(inputs)
        h = self._histories(inputs)
        last = h[np.arange(len(inputs)), np.asarray(lengths) - 1]
        return np.log(self._prob_all(last))


def _drop_first(grams):
    # the first window of every text has an all-padding history twice over; keep one per text
    return np.concatenate([g[1:] for g in grams])
