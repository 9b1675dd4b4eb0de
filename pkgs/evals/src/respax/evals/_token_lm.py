"""The protocol on top of a token scorer: request tokenization, fixed-shape batching, rolling
windows and sampling. In-process backends subclass `TokenLM` and supply `score_tokens` (and
optionally a faster `generate_tokens`)."""

from collections.abc import Sequence

import numpy as np

from ._protocol import Capabilities, GenerateRequest, Loglikelihood, cut_at_stop
from ._tokenizer import Tokenizer

__all__ = ["TokenLM", "rolling_windows", "sample_next"]


def rolling_windows(
    num_tokens: int, max_length: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """The windows that score every token of `[eot] + tokens` once, each in at most `max_length`
    inputs.

    Position j of `x = [eot] + tokens` (j = 1..num_tokens) is predicted from the inputs
    `x[a:j]`. A window `(a, s, e)` feeds the inputs `x[a:e-1]` and scores the predictions of
    `x[s:e]`; windows score `stride` new tokens each (default `max_length`, disjoint windows),
    and the inputs reach back as far as `max_length` allows.

    Args:
        num_tokens: tokens in the text.
        max_length: the most inputs one window may hold.
        stride: new tokens scored per window, 1..max_length.

    Returns:
        A list of `(a, s, e)`.

    Example:
        >>> rolling_windows(5, 2)
        [(0, 1, 3), (2, 3, 5), (3, 5, 6)]
        >>> rolling_windows(5, 8)
        [(0, 1, 6)]
    """
    if max_length < 1:
        raise ValueError(f"`max_length` must be >= 1, got {max_length}.")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"`stride` must be in 1..max_length={max_length}, got {stride}.")
    out = []
    s = 1
    while s <= num_tokens:
        e = min(num_tokens + 1, s + stride)
        a = max(0, e - 1 - max_length)
        out.append((a, s, e))
        s = e
    return out


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rng) -> int:
    """One token from `logits` (host numpy): argmax at temperature 0, else nucleus sampling."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, top_p)) + 1]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


class TokenLM:
    """Base class of the in-process backends (see the module docstring).

    Subclasses set `tokenizer`, `max_length`, `batch_size` and implement
    `score_tokens(inputs, targets) -> (logprob, is_argmax, top_token, top_logprob)` on
    `int32[batch_size, T]` arrays (right-padded; padding positions are ignored) and
    `next_logits(inputs, lengths)`.
    Batches are always padded to `batch_size` rows and `T` to a multiple of `pad_multiple`, so a
    request's score does not depend on what it is batched with.
    """

    tokenizer: Tokenizer
    max_length: int
    batch_size: int = 8
    pad_multiple: int = 32

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(loglikelihood=True, rolling=True, generate=True)

    # -- to implement ---------------------------------------------------------------------------
    def score_tokens(self, inputs: np.ndarray, targets: np.ndarray):
        raise NotImplementedError

    def next_logits(self, inputs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Logits `[B, V]` of the token after `inputs[b, :lengths[b]]`."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def _score_rows(self, rows: list[tuple[list[int], list[int], int]], detail: bool = False):
        """`rows[i] = (inputs, targets, n)`: the sum over the last `n` targets of `log p`."""
        out: list[Loglikelihood] = [None] * len(rows)  # type: ignore[list-item]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            longest = max(len(rows[i][0]) for i in idx)
            width = -(-longest // self.pad_multiple) * self.pad_multiple
            width = min(width, max(self.max_length, longest))
            inputs = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            for r, i in enumerate(idx):
                x, y, _ = rows[i]
                inputs[r, : len(x)] = x
                targets[r, : len(y)] = y
            logp, greedy, top, top_lp = self.score_tokens(inputs, targets)
            logp, greedy = np.asarray(logp, np.float64), np.asarray(greedy)
            for r, i in enumerate(idx):
                x, _, n = rows[i]
                sl = slice(len(x) - n, len(x))
                if detail:
                    out[i] = (logp[r, sl], np.asarray(top)[r, sl], np.asarray(top_lp)[r, sl])
                else:
                    out[i] = Loglikelihood(float(logp[r, sl].sum()), bool(greedy[r, sl].all()))
        return out

    def token_logprobs(self, texts: Sequence[str]):
        """Per-token detail of each text, scored from an end-of-text start (what an
        OpenAI-compatible server echoes): `(ids, logprobs, top_ids, top_logprobs)` per text.
        Texts longer than `max_length` tokens are refused."""
        rows, ids = [], []
        for text in texts:
            x = [self.tokenizer.eot_id] + self.tokenizer.encode(text)
            if len(x) - 1 > self.max_length:
                raise ValueError(f"a text of {len(x) - 1} tokens exceeds max_length.")
            rows.append((x[:-1], x[1:], len(x) - 1))
            ids.append(x[1:])
        return [(i, *d) for i, d in zip(ids, self._score_rows(rows, detail=True), strict=True)]

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # lm-eval's rule for BPE tokenizers: trailing spaces of the context belong to the
        # continuation, so "...?" + " Yes" is one leading-space token. A character tokenizer
        # (`merges_leading_space = False`) scores exactly the continuation's characters.
        if not getattr(self.tokenizer, "merges_leading_space", True):
            return [self.tokenizer.eot_id] + self.tokenizer.encode(context), self.tokenizer.encode(
                continuation
            )
        stripped = context.rstrip(" ")
        continuation = context[len(stripped) :] + continuation
        ctx = [self.tokenizer.eot_id] + self.tokenizer.encode(stripped)
        return ctx, self.tokenizer.encode(continuation)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]:
        """`log p(continuation | context)` and greediness of each request (see the protocol).

        The context is prefixed with end-of-text and cut from the left to fit `max_length`.
        """
        rows = []
        for req in requests:
            if not (isinstance(req, tuple | list) and len(req) == 2):
                raise TypeError(f"each request must be a (context, continuation) pair, got {req!r}")
            ctx, cont = self._split(*req)
            if not cont:
                raise ValueError(f"the continuation of {req!r} encodes to no tokens.")
            full = (ctx + cont)[-(self.max_length + 1) :]
            rows.append((full[:-1], full[1:], min(len(cont), len(full) - 1)))
        return self._score_rows(rows)

    def loglikelihood_rolling(self, texts: Sequence[str], stride: int | None = None) -> list[float]:
        """`log p(text)` of each text, from an end-of-text start, in `rolling_windows`."""
        rows, owner = [], []
        for t, text in enumerate(texts):
            x = [self.tokenizer.eot_id] + self.tokenizer.encode(text)
            for a, s, e in rolling_windows(len(x) - 1, self.max_length, stride):
                rows.append((x[a : e - 1], x[a + 1 : e], e - s))
                owner.append(t)
        totals = [0.0] * len(texts)
        for t, r in zip(owner, self._score_rows(rows), strict=True):
            totals[t] += r.logprob
        return totals

    def _last_logits(self, seq: list[int]) -> np.ndarray:
        """Logits `[V]` of the token after `seq` (its last `max_length` tokens)."""
        window = seq[-self.max_length :]
        x = np.zeros((1, len(window)), np.int32)
        x[0] = window
        return np.asarray(self.next_logits(x, np.array([len(window)])))[0]

    def generate_tokens(self, prompts: list[list[int]], requests: Sequence[GenerateRequest]):
        """Token ids generated for each prompt (default: one `next_logits` call per token)."""
        outs = []
        for prompt, req in zip(prompts, requests, strict=True):
            rng = np.random.default_rng(req.seed)
            seq = list(prompt)
            gen = []
            for _ in range(req.max_tokens):
                logits = self._last_logits(seq)
                tok = sample_next(logits, req.temperature, req.top_p, rng)
                if tok == self.tokenizer.eot_id:
                    break
                gen.append(tok)
                seq.append(tok)
                if req.stop and any(s in self.tokenizer.decode(gen) for s in req.stop):
                    break
            outs.append(gen)
        return outs

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Continuations of each request, cut before the first stop sequence or end-of-text."""
        for r in requests:
            if not isinstance(r, GenerateRequest):
                raise TypeError(f"each request must be a GenerateRequest, got {type(r).__name__}")
        prompts = [[self.tokenizer.eot_id] + self.tokenizer.encode(r.context) for r in requests]
        gens = self.generate_tokens(prompts, requests)
        out = []
        for g, r in zip(gens, requests, strict=True):
            g = [int(t) for t in g]
            if self.tokenizer.eot_id in g:
                g = g[: g.index(self.tokenizer.eot_id)]
            out.append(cut_at_stop(self.tokenizer.decode(g), r.stop))
        return out
