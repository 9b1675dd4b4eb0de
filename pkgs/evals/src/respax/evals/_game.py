"""The two games of Shlegeris et al. (2022), "Language models are better than humans at
next-token prediction", as pure state machines over an append-only log (the UIs only render them).

- `TopOneGame`: the player sees a document's prefix and types the next token, which must be
  exactly one GPT-2 token (leading space included); the true token is revealed and the running
  accuracy shown. Each record stores the *true* target read from the document (the original app
  logged a vocabulary entry instead), the document id and the position.
- `PairGame`: for a prompt the player sees the true next token and one sampled from a generator
  LM, as A and B in a random order, and says how confident they are that A is the original on
  the 11-point scale `PAIR_BUTTONS`; the answer scores `1000 * p_gen(t*) * (ln g - ln 0.5)` where
  `g` is the probability put on the true token. The first `n_training` comparisons are training.
  If the sampled token is the true one, 50% is recorded automatically (as the app did).

Both games rebuild their state from the log when created, so a game interrupted at any point
resumes where the player stopped; nothing answered is lost.
"""

import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ._bpe import GPT2Vocab
from ._gamelog import append_record, read_log
from ._gpt2 import GPT2

__all__ = [
    "PAIR_BUTTONS",
    "CandidateScorer",
    "PairFeedback",
    "PairGame",
    "PairPrompt",
    "PairQuestion",
    "TopOneFeedback",
    "TopOneGame",
    "TopOnePrompt",
    "pair_score",
    "player_sample_index",
    "score_candidates",
]

# "how confident are you that A is the original?" (the app's buttons, in percent / 100)
PAIR_BUTTONS = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.01)


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _check_player(player) -> str:
    if not isinstance(player, str) or not player.strip():
        raise ValueError(f"`player` must be a non-empty name, got {player!r}.")
    return player.strip()


def player_sample_index(player: str, num_samples: int) -> int:
    """The generator sample a player is shown for every prompt: a stable hash of the name mod
    `num_samples` (the app used `hash(name) % 400`).

    Example:
        >>> player_sample_index("ann", 400) == player_sample_index("ann", 400)
        True
    """
    return _stable_hash(_check_player(player)) % num_samples


def pair_score(g: float, gen_prob_true: float) -> float:
    """The perplexity game's per-answer score `1000 * p_gen(t*) * (ln g - ln 0.5)`.

    Args:
        g: the probability the player put on the true token, in (0, 1).
        gen_prob_true: the generator's probability of the true token.

    Example:
        >>> round(pair_score(0.9, 0.5), 3), pair_score(0.5, 0.5)
        (293.893, 0.0)
    """
    if not 0.0 < g < 1.0:
        raise ValueError(f"`g` must be in (0, 1), got {g!r}.")
    return 1000.0 * gen_prob_true * (math.log(g) - math.log(0.5))


# ---------------------------------------------------------------------------------------------
# Top-1 game


@dataclasses.dataclass(frozen=True)
class TopOnePrompt:
    """What the player sees: the prefix of `doc_id` before `position`."""

    doc_id: str
    position: int
    prefix_ids: tuple[int, ...]
    prefix_text: str
    guesses: int
    correct: int


@dataclasses.dataclass(frozen=True)
class TopOneFeedback:
    """The revealed answer to one guess and the running score."""

    correct: bool
    guess_text: str
    target_text: str
    guesses: int
    correct_total: int

    @property
    def accuracy(self) -> float:
        return self.correct_total / self.guesses


def _check_docs(docs) -> dict[str, tuple[int, ...]]:
    if not isinstance(docs, Mapping) or not docs:
        raise ValueError("`docs` must be a non-empty mapping of document id -> token ids.")
    out = {}
    for k, v in docs.items():
        toks = tuple(int(t) for t in v)
        if len(toks) < 2:
            raise ValueError(f"document {k!r} has {len(toks)} tokens; a game needs at least 2.")
        out[str(k)] = toks
    return out


class TopOneGame:
    """The top-1 game for one player over a set of documents, logged to `log_path`.

    Documents are drawn at random (seeded by `seed`, the player's name and how many documents
    they started); within a document the player guesses every token from `start` on, in order,
    until the document ends (or they ask for a `new_document`).

    Args:
        docs: document id -> GPT-2 token ids.
        vocab: the `GPT2Vocab` guesses are checked against.
        log_path: the append-only JSONL log (shared by all players; created if missing).
        player: the player's name.
        seed: the document-order seed.
        start: the first position guessed in each document (>= 1: at least one token of
            context).

    Example:
        >>> import tempfile, pathlib
        >>> vocab = GPT2Vocab()
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "top1.jsonl"
        >>> game = TopOneGame({"d0": [15496, 995]}, vocab, log, "ann")  # "Hello world"
        >>> game.current().prefix_text
        'Hello'
        >>> fb = game.guess(" world")
        >>> fb.correct, fb.target_text, fb.accuracy
        (True, ' world', 1.0)
    """

    def __init__(
        self,
        docs: Mapping[str, Sequence[int]],
        vocab: GPT2Vocab,
        log_path: str | os.PathLike,
        player: str,
        *,
        seed: int = 0,
        start: int = 1,
    ):
        self.docs = _check_docs(docs)
        self.vocab = vocab
        self.log_path = log_path
        self.player = _check_player(player)
        self.seed = int(seed)
        if not isinstance(start, int) or start < 1:
            raise ValueError(f"`start` must be an int >= 1, got {start!r}.")
        self.start = start
        self._order = sorted(self.docs)
        self.guesses = 0
        self.correct = 0
        self.doc_index = 0
        records, self.problems = read_log(log_path)
        mine = [r for r in records if r.get("game") == "top1" and r.get("player") == self.player]
        self.guesses = len(mine)
        self.correct = sum(bool(r.get("correct")) for r in mine)
        if mine:
            last = mine[-1]
            self.doc_index = int(last["doc_index"])
            self.doc_id, self.position = str(last["doc_id"]), int(last["position"]) + 1
            if self.doc_id not in self.docs or self.position >= len(self.docs[self.doc_id]):
                self.new_document()
        else:
            self._open(0)

    def _open(self, doc_index: int) -> None:
        rng = np.random.default_rng([self.seed, _stable_hash(self.player) % 2**32, doc_index])
        self.doc_index = doc_index
        self.doc_id = self._order[int(rng.integers(len(self._order)))]
        self.position = min(self.start, len(self.docs[self.doc_id]) - 1)

    def new_document(self) -> TopOnePrompt:
        """Move on to the next random document."""
        self._open(self.doc_index + 1)
        return self.current()

    def current(self) -> TopOnePrompt:
        """The prompt now on screen."""
        prefix = self.docs[self.doc_id][: self.position]
        return TopOnePrompt(
            self.doc_id,
            self.position,
            prefix,
            self.vocab.decode(prefix),
            self.guesses,
            self.correct,
        )

    def guess(self, text: str) -> TopOneFeedback:
        """Check `text` (exactly one GPT-2 token), log it with the true target, reveal it and
        advance.

        Raises:
            ValueError: `text` is empty or not one token; nothing is logged and the prompt
                stays the same.
        """
        guess_id = self.vocab.token_id(text)
        target_id = self.docs[self.doc_id][self.position]
        correct = guess_id == target_id
        append_record(
            self.log_path,
            {
                "game": "top1",
                "player": self.player,
                "doc_id": self.doc_id,
                "doc_index": self.doc_index,
                "position": self.position,
                "guess_id": guess_id,
                "guess": text,
                "target_id": target_id,
                "target": self.vocab.token_text(target_id),
                "correct": correct,
            },
        )
        self.guesses += 1
        self.correct += int(correct)
        fb = TopOneFeedback(
            correct, text, self.vocab.token_text(target_id), self.guesses, self.correct
        )
        self.position += 1
        if self.position >= len(self.docs[self.doc_id]):
            self.new_document()
        return fb


# ---------------------------------------------------------------------------------------------
# Perplexity (pairwise) game


@dataclasses.dataclass(frozen=True)
class PairQuestion:
    """One prompt of the perplexity game: the true next token and the generator's samples.

    Attributes:
        question_id: a unique id.
        doc_id: the document.
        position: the true token's position in it.
        prefix_ids: the tokens before it.
        true_id: the true next token t*.
        sampled_ids: tokens sampled from the generator for this prompt (the paper drew 400).
        gen_logprob_true: `log p_gen(t*)`.
        gen_logprob_sampled: `log p_gen(t_i)` of each sample.
    """

    question_id: int
    doc_id: str
    position: int
    prefix_ids: tuple[int, ...]
    true_id: int
    sampled_ids: tuple[int, ...]
    gen_logprob_true: float
    gen_logprob_sampled: tuple[float, ...]

    def __post_init__(self):
        if not self.sampled_ids or len(self.sampled_ids) != len(self.gen_logprob_sampled):
            raise ValueError(
                f"question {self.question_id}: `sampled_ids` must be non-empty and as long as "
                "`gen_logprob_sampled`."
            )


@dataclasses.dataclass(frozen=True)
class PairPrompt:
    """What the player sees for one comparison."""

    question_id: int
    index: int  # 0-based position in the player's sequence
    total: int
    training: bool
    prefix_text: str
    a_text: str
    b_text: str
    auto: bool  # the two candidates are the same token: 50% is recorded automatically


@dataclasses.dataclass(frozen=True)
class PairFeedback:
    """The revealed answer and the score."""

    a_is_true: bool
    g: float  # the probability the player put on the true token
    score: float
    total_score: float  # over scored (non-training) answers
    done: bool


class PairGame:
    """The perplexity game for one player over `questions`, logged to `log_path`.

    Args:
        questions: the comparisons, in the order played; the first `n_training` are training.
        vocab: the vocabulary (for the candidates' text).
        log_path: the append-only JSONL log.
        player: the player's name; it fixes which generator sample they see
            (`player_sample_index`).
        n_training: training comparisons before the scored ones (the paper: 10).
        seed: the A/B order seed.

    Example:
        >>> import tempfile, pathlib
        >>> vocab = GPT2Vocab()
        >>> ids = [15496, 995]  # "Hello", " world"
        >>> q = PairQuestion(0, "d0", 1, (ids[0],), ids[1], (262,), -1.0, (-2.0,))
        >>> game = PairGame([q], vocab, pathlib.Path(tempfile.mkdtemp()) / "p.jsonl", "ann",
        ...                 n_training=0)
        >>> p = game.current()
        >>> fb = game.answer(0.9 if p.a_text == " world" else 0.1)
        >>> round(fb.g, 2), fb.done
        (0.9, True)
    """

    def __init__(
        self,
        questions: Sequence[PairQuestion],
        vocab: GPT2Vocab,
        log_path: str | os.PathLike,
        player: str,
        *,
        n_training: int = 10,
        seed: int = 0,
    ):
        if not questions:
            raise ValueError("`questions` must hold at least one PairQuestion.")
        ids = [q.question_id for q in questions]
        if len(set(ids)) != len(ids):
            raise ValueError("`questions` must have distinct question_id values.")
        if not isinstance(n_training, int) or not 0 <= n_training <= len(questions):
            raise ValueError(f"`n_training` must be in 0..{len(questions)}, got {n_training!r}.")
        self.questions = list(questions)
        self.vocab = vocab
        self.log_path = log_path
        self.player = _check_player(player)
        self.n_training = n_training
        self.seed = int(seed)
        n_samples = {len(q.sampled_ids) for q in questions}
        if len(n_samples) != 1:
            raise ValueError(f"every question must have the same number of samples: {n_samples}")
        self.sample_index = player_sample_index(self.player, n_samples.pop())
        records, self.problems = read_log(log_path)
        done = {
            int(r["question_id"]): r
            for r in records
            if r.get("game") == "pair" and r.get("player") == self.player
        }
        self.answered = [q.question_id for q in self.questions if q.question_id in done]
        self.total_score = float(
            sum(float(done[i]["score"]) for i in self.answered if not done[i]["training"])
        )
        self.index = next(
            (i for i, q in enumerate(self.questions) if q.question_id not in done),
            len(self.questions),
        )

    @property
    def done(self) -> bool:
        return self.index >= len(self.questions)

    def _a_is_true(self, q: PairQuestion) -> bool:
        rng = np.random.default_rng(
            [self.seed, _stable_hash(self.player) % 2**32, q.question_id % 2**32]
        )
        return bool(rng.integers(2))

    def current(self) -> PairPrompt:
        """The comparison now on screen.

        Raises:
            ValueError: the player has answered every question.
        """
        if self.done:
            raise ValueError(f"{self.player} has answered all {len(self.questions)} questions.")
        q = self.questions[self.index]
        true_t = self.vocab.token_text(q.true_id)
        other = self.vocab.token_text(q.sampled_ids[self.sample_index])
        a, b = (true_t, other) if self._a_is_true(q) else (other, true_t)
        return PairPrompt(
            q.question_id,
            self.index,
            len(self.questions),
            self.index < self.n_training,
            self.vocab.decode(q.prefix_ids),
            a,
            b,
            q.sampled_ids[self.sample_index] == q.true_id,
        )

    def answer(self, choice: float | None) -> PairFeedback:
        """Record the confidence `choice` (one of `PAIR_BUTTONS`) that A is the original.

        When the two candidates are the same token, 50% is recorded whatever `choice` is
        (`None` is accepted then).

        Raises:
            ValueError: `choice` is not one of the buttons, or the game is over.
        """
        p = self.current()
        q = self.questions[self.index]
        if p.auto:
            choice = 0.5
        elif choice is None or not any(
            isinstance(choice, int | float) and abs(choice - b) < 1e-6 for b in PAIR_BUTTONS
        ):
            raise ValueError(
                f"`choice` must be one of {', '.join(f'{round(b * 100)}%' for b in PAIR_BUTTONS)}"
                f" (as a fraction), got {choice!r}."
            )
        a_is_true = self._a_is_true(q)
        g = float(choice) if a_is_true else 1.0 - float(choice)
        score = pair_score(g, math.exp(q.gen_logprob_true))
        sampled = q.sampled_ids[self.sample_index]
        append_record(
            self.log_path,
            {
                "game": "pair",
                "player": self.player,
                "question_id": q.question_id,
                "doc_id": q.doc_id,
                "position": q.position,
                "true_id": q.true_id,
                "true": self.vocab.token_text(q.true_id),
                "sampled_id": sampled,
                "sampled": self.vocab.token_text(sampled),
                "sample_index": self.sample_index,
                "a_is_true": a_is_true,
                "choice": float(choice),
                "g": g,
                "auto": p.auto,
                "score": score,
                "training": p.training,
            },
        )
        if not p.training:
            self.total_score += score
        self.answered.append(q.question_id)
        self.index += 1
        return PairFeedback(a_is_true, g, score, self.total_score, self.done)


def score_candidates(
    model: GPT2,
    prefix: Int[ArrayLike, " T"],
    length: Int[ArrayLike, ""],
    candidates: Int[ArrayLike, " k"],
) -> Float[Array, " k"]:
    """The perplexity game's model step: `log p(candidate | prefix[:length])` of each candidate
    next token, from one forward pass of a `GPT2` over a right-padded prefix. Only the last
    position's logits are formed (the `[T, V]` logits of full scoring are not needed). Jit it
    yourself (`jax.jit(score_candidates)`: one compilation per padded length `T`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.evals import GPT2, GPT2Config, gpt2_logits
        >>> m = GPT2.init(GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1,
        ...                          n_head=2), key=jax.random.key(0))
        >>> lp = score_candidates(m, jnp.array([3, 4, 0, 0]), 2, jnp.array([5, 6]))
        >>> full = jax.nn.log_softmax(gpt2_logits(m, jnp.array([3, 4]))[-1])
        >>> bool(jnp.allclose(lp, full[jnp.array([5, 6])], atol=1e-5))
        True
    """
    from ._gpt2 import _hidden

    prefix = jnp.asarray(prefix)
    t = prefix.shape[0]
    mask = jnp.tril(jnp.ones((t, t), bool))
    h = _hidden(model, prefix, jnp.arange(t), mask)[jnp.asarray(length) - 1]
    logits = (h @ model.wte.T).astype(jnp.float32)
    return logits[jnp.asarray(candidates)] - jax.nn.logsumexp(logits)


def _cached_prefill(model: GPT2, tokens, length, max_len: int):
    """Bucketed prefill: `tokens [P]` right-padded (P static), keys/values of every layer written
    into a `[L, max_len, H, Dh]` cache, and the next-token log-probabilities after
    `tokens[:length]`."""
    from ._gpt2 import _block, _layers, _ln

    p_len = tokens.shape[0]
    nh, dh = model.n_head, model.wte.shape[1] // model.n_head
    n_layer = model.ln_1_w.shape[0]
    cache = jnp.zeros((n_layer, max_len, nh, dh), model.wte.dtype)
    causal = jnp.tril(jnp.ones((p_len, p_len), bool))

    def layer(h, xs):
        p, ck, cv = xs

        def kv(k, v):
            ck2 = jax.lax.dynamic_update_slice(ck, k, (0, 0, 0))
            cv2 = jax.lax.dynamic_update_slice(cv, v, (0, 0, 0))
            return k, v, (ck2, cv2)

        return _block(model, p, h, kv, causal)

    h = model.wte[tokens] + model.wpe[jnp.arange(p_len)]
    h, (ck, cv) = jax.lax.scan(layer, h, (_layers(model), cache, cache))
    h = _ln(h[length - 1], model.ln_f_w, model.ln_f_b, model.eps)
    return ck, cv, jax.nn.log_softmax((h @ model.wte.T).astype(jnp.float32))


def _cached_decode(model: GPT2, ck, cv, token, pos):
    """One token of decode at position `pos`: its keys/values go into slot `pos`, it attends to
    slots `<= pos`; returns the caches and the next-token log-probabilities."""
    from ._gpt2 import decode_one

    valid = jnp.arange(ck.shape[1]) <= pos
    ck, cv, h = decode_one(model, ck, cv, token, pos, pos, valid)
    return ck, cv, jax.nn.log_softmax((h @ model.wte.T).astype(jnp.float32))


class CandidateScorer:
    """The perplexity game's model step with a KV cache, for a game that walks a document
    position by position: `start(prefix)` runs one prefill (the prefix right-padded to a
    multiple of `bucket`, so only one compilation per bucket, not per prefix length), then each
    `advance(token)` is one token of decode (the cache holds `bucket * 2**j` slots, doubled when
    full, up to `max_len`: one compilation per capacity), and `score(candidates)` reads
    `log p(candidate | prefix)` off the stored next-token distribution (both candidates are
    next tokens of the same prefix: no extra forward).

    Args:
        model: a `GPT2`.
        max_len: the cache length (the longest prefix; at most the model's `n_positions`).
        bucket: prefill lengths are rounded up to a multiple of this.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from respax.evals import GPT2, GPT2Config, gpt2_logits
        >>> m = GPT2.init(GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1,
        ...                          n_head=2), key=jax.random.key(0))
        >>> s = CandidateScorer(m, max_len=8, bucket=4)
        >>> s.start([3, 4]); s.advance(5)
        >>> full = jax.nn.log_softmax(gpt2_logits(m, jnp.array([3, 4, 5]))[-1])
        >>> bool(np.allclose(s.score([1, 2]), full[jnp.array([1, 2])], atol=1e-5))
        True
    """

    def __init__(self, model: GPT2, *, max_len: int | None = None, bucket: int = 32):
        n_pos = model.wpe.shape[0]
        max_len = n_pos if max_len is None else max_len
        if not isinstance(max_len, int) or not 1 <= max_len <= n_pos:
            raise ValueError(f"`max_len` must be an int in 1..{n_pos}, got {max_len!r}.")
        if not isinstance(bucket, int) or bucket < 1:
            raise ValueError(f"`bucket` must be a positive int, got {bucket!r}.")
        self.model, self.max_len, self.bucket = model, max_len, bucket
        self._prefill = jax.jit(_cached_prefill, static_argnums=3)
        self._decode = jax.jit(_cached_decode, donate_argnums=(1, 2))
        self.length = 0
        self._cache = None
        self._logp = None

    def _capacity(self, n: int) -> int:
        # cache slots for a prefix of n tokens: `bucket` doubled until it fits, capped at
        # `max_len` (decode reads every slot, so a cache far longer than the prefix is slow;
        # doubling keeps the number of compiled shapes logarithmic)
        c = self.bucket
        while c < n:
            c *= 2
        return min(c, self.max_len)

    def start(self, prefix: Sequence[int] | Int[ArrayLike, " n"]) -> None:
        """Prefill the cache with `prefix` (at least one token)."""
        ids = np.asarray(prefix, np.int32).reshape(-1)
        n = len(ids)
        if not 1 <= n <= self.max_len:
            raise ValueError(f"`prefix` must have 1..{self.max_len} tokens, got {n}.")
        p_len = min(-(-n // self.bucket) * self.bucket, self.max_len)
        x = np.zeros(p_len, np.int32)
        x[:n] = ids
        cap = max(self._capacity(n + 1), p_len)
        ck, cv, self._logp = self._prefill(self.model, jnp.asarray(x), n, cap)
        self._cache, self.length = (ck, cv), n

    def advance(self, token: int | Int[ArrayLike, ""]) -> None:
        """Append `token` to the prefix (one token of decode; the cache grows to the next
        capacity when full)."""
        if self._cache is None:
            raise ValueError("call `start(prefix)` before `advance`.")
        if self.length >= self.max_len:
            raise ValueError(f"the prefix is already `max_len`={self.max_len} tokens long.")
        ck, cv = self._cache
        if self.length >= ck.shape[1]:
            pad = ((0, 0), (0, self._capacity(self.length + 1) - ck.shape[1]), (0, 0), (0, 0))
            ck, cv = jnp.pad(ck, pad), jnp.pad(cv, pad)
        ck, cv, self._logp = self._decode(self.model, ck, cv, jnp.int32(token), self.length)
        self._cache = (ck, cv)
        self.length += 1

    def score(self, candidates: Sequence[int] | Int[ArrayLike, " k"]) -> np.ndarray:
        """`log p(candidate | prefix)` of each candidate next token, as float32."""
        if self._logp is None:
            raise ValueError("call `start(prefix)` before `score`.")
        c = np.asarray(candidates, np.int64).reshape(-1)
        if c.size == 0 or c.min() < 0 or c.max() >= self._logp.shape[0]:
            raise ValueError(f"`candidates` must be token ids in 0..{self._logp.shape[0] - 1}.")
        return np.asarray(self._logp[jnp.asarray(c)])
