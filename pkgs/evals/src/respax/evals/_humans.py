"""Analyses of the next-token games (Shlegeris et al. 2022) in JAX: the paper's target filters,
top-1 accuracy per player and for models on the same (document, position) pairs, the
importance-sampling estimator of a player's loss from pairwise answers, the bootstrap over half
of the players, and the loaders that turn game logs into arrays.

The estimator. A player who judges "is t* or t_i the original?" with their own next-token
distribution h states `r_i = h(t*) / (h(t*) + h(t_i))`, so `1/r_i - 1 = h(t_i) / h(t*)`. With
`t_i ~ g` (the generator) `E_g[(h(t)/h(t*)) / g(t)] = 1 / h(t*)`, hence per prompt

    loss_h - loss_q  ~  ln mean_i [ q(t*) (1/r_i - 1) / g(t_i) ]

for any reference model q (the paper uses the generator, GPT-2 small, as q). The log of a mean
of n terms is biased low by about `Var / (2 n mean^2)`; `estimator_bias_curve` measures it, and
`bias_correction="jackknife"` removes that first-order term (the paper's estimator is the plain
log of the mean, the default).
"""

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from respax.core import BootstrapCI

from ._bpe import GPT2Vocab
from ._game import PairQuestion
from ._gamelog import read_log

__all__ = [
    "PairTable",
    "TopOneTable",
    "accuracy_per_player",
    "estimator_bias_curve",
    "exact_ratio",
    "half_player_bootstrap",
    "load_pair_log",
    "load_top1_log",
    "loss_gap",
    "loss_gap_per_prompt",
    "make_pair_questions",
    "round_to_buttons",
    "sample_tokens",
    "target_filter",
]


# ---------------------------------------------------------------------------------------------
# Filters (host side: they are string tests)


def _is_word(text: str) -> bool:
    return len(text) >= 2 and text[0] == " " and text[1:].isascii() and text[1:].isalpha()


def target_filter(
    target_texts: Sequence[str], next_texts: Sequence[str | None] | None = None, word: bool = False
) -> np.ndarray:
    """The paper's filters on targets, as a boolean keep-mask.

    The first filter drops targets that are empty, contain a newline or contain U+FFFD (a
    partial UTF-8 token). The word filter (`word=True`) keeps only targets of the form
    " " + letters (choice: ASCII letters, `str.isalpha`) that are followed by a token starting
    with a space; `next_texts[i]` is the token after target i (`None` at a document's end,
    which fails the word filter).

    Example:
        >>> target_filter([" the", "\\n", "", " cat", "\\ufffd"]).tolist()
        [True, False, False, True, False]
        >>> target_filter([" the", " cat", "ing"], [" dog", ".", " x"], word=True).tolist()
        [True, False, False]
    """
    keep = np.array(
        [bool(t) and "\n" not in t and "\ufffd" not in t for t in target_texts], dtype=bool
    )
    if word:
        if next_texts is None or len(next_texts) != len(target_texts):
            raise ValueError("the word filter needs `next_texts`, one per target.")
        keep &= np.array(
            [
                _is_word(t) and n is not None and n.startswith(" ")
                for t, n in zip(target_texts, next_texts, strict=True)
            ],
            dtype=bool,
        )
    return keep


# ---------------------------------------------------------------------------------------------
# Top-1 accuracy


def accuracy_per_player(
    player: Int[ArrayLike, " N"],
    correct: Bool[ArrayLike, " N"],
    num_players: int,
    min_guesses: int = 50,
) -> tuple[Float[Array, " P"], Int[Array, " P"], Bool[Array, " P"]]:
    """Top-1 accuracy of each player and which players count (more than `min_guesses` guesses,
    as the paper's analysis keeps players with > 50).

    Args:
        player: the player index (0..num_players-1) of each guess.
        correct: whether each guess was the true token.
        num_players: the number of players.
        min_guesses: a player counts with strictly more guesses than this.

    Returns:
        `(accuracy, guesses, kept)`; accuracy is NaN for a player with no guesses.

    Example:
        >>> acc, n, kept = accuracy_per_player(jnp.array([0, 0, 1]), jnp.array([True, False, True]),
        ...                                    2, min_guesses=1)
        >>> acc.tolist(), n.tolist(), kept.tolist()
        ([0.5, 1.0], [2, 1], [True, False])
    """
    player = jnp.asarray(player)
    correct = jnp.asarray(correct)
    if player.shape != correct.shape or player.ndim != 1:
        raise ValueError(
            f"`player` and `correct` must be 1-d of one length, got {player.shape} and "
            f"{correct.shape}."
        )
    n = jax.ops.segment_sum(jnp.ones_like(player), player, num_segments=num_players)
    c = jax.ops.segment_sum(correct.astype(jnp.int32), player, num_segments=num_players)
    acc = jnp.where(n > 0, c / jnp.maximum(n, 1), jnp.nan)
    return acc, n, n > min_guesses


# ---------------------------------------------------------------------------------------------
# The importance-sampling estimator


def exact_ratio(
    logprob_true: Float[ArrayLike, "*#b"], logprob_other: Float[ArrayLike, "*#b"]
) -> Float[Array, "..."]:
    """The answer of a player with next-token distribution h who knows it exactly:
    `r = h(t*) / (h(t*) + h(t_i))`.

    Example:
        >>> round(float(exact_ratio(jnp.log(0.3), jnp.log(0.1))), 6)
        0.75
    """
    return jax.nn.sigmoid(jnp.asarray(logprob_true) - jnp.asarray(logprob_other))


def round_to_buttons(r: Float[ArrayLike, "*b"]) -> Float[Array, "*b"]:
    """A ratio rounded as the paper's analysis mimics the buttons: to the nearest 0.1, clamped
    to 0.01..0.99.

    Example:
        >>> [round(x, 6) for x in round_to_buttons(jnp.array([0.004, 0.26, 0.5, 0.97])).tolist()]
        [0.01, 0.3, 0.5, 0.99]
    """
    r = jnp.asarray(r)
    return jnp.clip(jnp.round(r * 10.0) / 10.0, 0.01, 0.99).astype(r.dtype)


def _log_mean_jackknife(terms: Array, mask: Array) -> Array:
    """Per row, the jackknife of `ln mean exp(terms)` over the masked entries: `c L - (c - 1)
    mean_j L_(-j)` with `L_(-j)` the log-mean without entry j, computed stably (the entry that
    holds the maximum is left out against the second largest, every other against the
    maximum); NaN for rows with fewer than two entries."""
    c = mask.sum(-1)
    t = jnp.where(mask, terms, -jnp.inf)
    top = jnp.argmax(t, axis=-1)
    is_top = jnp.arange(t.shape[-1])[None, :] == top[:, None]
    m1 = jnp.max(t, axis=-1, keepdims=True)
    e1 = jnp.where(mask, jnp.exp(t - m1), 0.0)
    s1 = e1.sum(-1, keepdims=True)
    rest = jnp.where(is_top, -jnp.inf, t)
    m2 = jnp.max(rest, axis=-1, keepdims=True)
    s2 = jnp.where(mask & ~is_top, jnp.exp(rest - jnp.where(jnp.isfinite(m2), m2, 0.0)), 0.0)
    s2 = s2.sum(-1, keepdims=True)
    # log of the sum without entry j (j not the maximum: s1 - e1_j >= 1, no cancellation)
    loo = jnp.where(is_top, jnp.log(s2) + m2, jnp.log(jnp.maximum(s1 - e1, 1.0)) + m1)
    cf = c.astype(terms.dtype)
    log_mean = jnp.log(s1[:, 0]) + m1[:, 0] - jnp.log(jnp.maximum(cf, 1.0))
    loo_mean = jnp.sum(jnp.where(mask, loo, 0.0), -1) / jnp.maximum(cf, 1.0) - jnp.log(
        jnp.maximum(cf - 1.0, 1.0)
    )
    return jnp.where(c >= 2, cf * log_mean - (cf - 1.0) * loo_mean, jnp.nan)


def loss_gap_per_prompt(
    r: Float[ArrayLike, "P n"],
    log_gen_sampled: Float[ArrayLike, "P n"],
    log_ref_true: Float[ArrayLike, " P"],
    mask: Bool[ArrayLike, "P n"] | None = None,
    *,
    bias_correction: Literal["none", "jackknife"] = "none",
) -> Float[Array, " P"]:
    """Per prompt, `ln mean_i [ q(t*) (1/r_i - 1) / g(t_i) ]` over its answered samples: the
    estimate of `loss_h - loss_q` at that prompt (see the module docstring).

    Args:
        r: the probability each answer puts on the true token, in (0, 1).
        log_gen_sampled: `log g(t_i)` of the sample each answer compared against.
        log_ref_true: `log q(t*)` of the reference model.
        mask: which answers exist (default all); a prompt without answers gives NaN.
        bias_correction: `"none"` (the paper's estimator) or `"jackknife"`: the jackknife of the
            log of the mean, which removes its `-Var / (2 n mean^2)` bias term (the rest is
            O(1/n^2)); a prompt needs two or more answers for it and gives NaN otherwise.

    Example:
        >>> # h(t*) = 0.5 and h(t_1) = 0.25 give r = 2/3; t_1 was drawn with g(t_1) = 0.5, and
        >>> # q(t*) = 0.5: one sample estimates 1/h(t*) by (0.25 / 0.5) / 0.5 = 1
        >>> gap = loss_gap_per_prompt(jnp.array([[2 / 3]]), jnp.log(jnp.array([[0.5]])),
        ...                           jnp.log(jnp.array([0.5])))
        >>> round(float(gap[0]), 4)  # ln(0.5 * 1)
        -0.6931
    """
    r = jnp.asarray(r)
    lg = jnp.asarray(log_gen_sampled)
    lq = jnp.asarray(log_ref_true)
    if r.ndim != 2 or lg.shape != r.shape or lq.shape != r.shape[:1]:
        raise ValueError(
            f"expected r and log_gen_sampled [P, n] and log_ref_true [P]; got {r.shape}, "
            f"{lg.shape}, {lq.shape}."
        )
    if bias_correction not in ("none", "jackknife"):
        raise ValueError(f"bias_correction must be 'none' or 'jackknife', got {bias_correction!r}.")
    mask = jnp.ones(r.shape, bool) if mask is None else jnp.asarray(mask, bool)
    terms = jnp.log1p(-r) - jnp.log(r) - lg
    if bias_correction == "jackknife":
        return lq + _log_mean_jackknife(terms, mask)
    terms = jnp.where(mask, terms, -jnp.inf)
    count = mask.sum(-1)
    lme = jax.nn.logsumexp(terms, axis=-1) - jnp.log(jnp.maximum(count, 1))
    return jnp.where(count > 0, lq + lme, jnp.nan)


def loss_gap(
    r: Float[ArrayLike, "P n"],
    log_gen_sampled: Float[ArrayLike, "P n"],
    log_ref_true: Float[ArrayLike, " P"],
    mask: Bool[ArrayLike, "P n"] | None = None,
    *,
    bias_correction: Literal["none", "jackknife"] = "none",
) -> Float[Array, ""]:
    """The estimate of `loss_h - loss_q`: `loss_gap_per_prompt` averaged over the prompts that
    have answers (two or more with `bias_correction="jackknife"`). Add the reference's mean
    loss (e.g. over 1,000 prompts, as the paper) to get the player's loss; `exp` of that is
    their perplexity."""
    g = loss_gap_per_prompt(r, log_gen_sampled, log_ref_true, mask, bias_correction=bias_correction)
    return jnp.nanmean(g)


def estimator_bias_curve(
    r: Float[ArrayLike, "P n"],
    log_gen_sampled: Float[ArrayLike, "P n"],
    log_ref_true: Float[ArrayLike, " P"],
    true_gap: Float[ArrayLike, ""],
    sizes: Sequence[int],
    *,
    bias_correction: Literal["none", "jackknife"] = "none",
) -> Float[Array, " S"]:
    """The estimator's bias `loss_gap(first m samples) - true_gap` for each `m` in `sizes`
    (the paper's check with m = 1..400 simulated samples per prompt; with the jackknife every
    size must be >= 2).

    Example:
        >>> r = jnp.full((4, 8), 0.5); lg = jnp.zeros((4, 8)); lq = jnp.zeros(4)
        >>> estimator_bias_curve(r, lg, lq, 0.0, [1, 8]).tolist()
        [0.0, 0.0]
    """
    r = jnp.asarray(r)
    n = r.shape[-1]
    out = []
    for m in sizes:
        if not 1 <= m <= n:
            raise ValueError(f"each size must be in 1..{n}, got {m}.")
        mask = jnp.arange(n)[None, :] < m
        if bias_correction == "jackknife" and m < 2:
            raise ValueError(f"the jackknife needs sizes >= 2, got {m}.")
        mask = jnp.broadcast_to(mask, r.shape)
        out.append(
            loss_gap(r, log_gen_sampled, log_ref_true, mask, bias_correction=bias_correction)
        )
    return jnp.stack(out) - jnp.asarray(true_gap)


def half_player_bootstrap(
    statistic: Callable[[Bool[Array, " P"]], Float[Array, "..."]],
    num_players: int,
    *,
    key: PRNGKeyArray,
    num_draws: int = 100,
    quantiles: tuple[float, float] = (0.05, 0.95),
) -> BootstrapCI:
    """The paper's uncertainty: recompute a statistic on `num_draws` random halves of the
    players (drawn without replacement) and take the 5%-95% quantiles.

    Args:
        statistic: a JAX function of a boolean mask over players (which players are in the
            draw) returning an array; it is vmapped over the draws.
        num_players: the number of players (>= 2).
        key: PRNG key for the draws.
        num_draws: the number of halves (the paper: 100).
        quantiles: the interval's lower and upper quantiles.

    Returns:
        `respax.core.BootstrapCI(estimate on all players, lower, upper, standard_error)`.

    Example:
        >>> x = jnp.arange(10.0)
        >>> ci = half_player_bootstrap(lambda m: jnp.sum(x * m) / m.sum(), 10,
        ...                            key=jax.random.key(0))
        >>> bool(ci.lower <= 4.5 <= ci.upper)
        True
    """
    if not isinstance(num_players, int) or num_players < 2:
        raise ValueError(f"`num_players` must be an int >= 2, got {num_players!r}.")
    if not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"`num_draws` must be an int >= 2, got {num_draws!r}.")
    half = num_players // 2
    keys = jax.random.split(key, num_draws)

    def draw(k):
        chosen = jax.random.permutation(k, num_players)[:half]
        return statistic(jnp.zeros(num_players, bool).at[chosen].set(True))

    reps = jax.vmap(draw)(keys)
    lo, hi = quantiles
    return BootstrapCI(
        estimate=statistic(jnp.ones(num_players, bool)),
        lower=jnp.nanquantile(reps, lo, axis=0),
        upper=jnp.nanquantile(reps, hi, axis=0),
        standard_error=jnp.nanstd(reps, axis=0, ddof=1),
    )


# ---------------------------------------------------------------------------------------------
# Question sets and logs


def sample_tokens(
    logprobs: Float[ArrayLike, "P V"], num_samples: int, *, key: PRNGKeyArray
) -> Int[Array, "P n"]:
    """`num_samples` tokens from each row's distribution by inverting its CDF (memory
    `P * (V + n)`, where Gumbel-max sampling would need `P * V * n`).

    Example:
        >>> s = sample_tokens(jnp.log(jnp.array([[0.0, 1.0], [1.0, 0.0]])), 3,
        ...                   key=jax.random.key(0))
        >>> s.tolist()
        [[1, 1, 1], [0, 0, 0]]
    """
    lp = jnp.asarray(logprobs)
    cdf = jnp.cumsum(jnp.exp(lp - jax.nn.logsumexp(lp, -1, keepdims=True)), axis=-1)
    u = jax.random.uniform(key, (lp.shape[0], num_samples), cdf.dtype) * cdf[:, -1:]
    idx = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(cdf, u)
    return jnp.minimum(idx, lp.shape[-1] - 1).astype(jnp.int32)


def make_pair_questions(
    prompts: Sequence[tuple[str, int]],
    docs: Mapping[str, Sequence[int]],
    gen_logprobs: Float[ArrayLike, "P V"],
    sampled_ids: Int[ArrayLike, "P n"],
    first_id: int = 0,
) -> list[PairQuestion]:
    """Perplexity-game questions: for each `(doc_id, position)` prompt, the true next token and
    the generator samples `sampled_ids[p]` (draw them with `sample_tokens(gen_logprobs, 400,
    key=...)`, jitted as you like), with the generator's log-probabilities of all of them.

    Example:
        >>> docs = {"d": [1, 2, 3]}
        >>> lp = jnp.log(jnp.array([[0.0, 0.0, 0.5, 0.5]]))
        >>> s = sample_tokens(lp, 3, key=jax.random.key(0))
        >>> q = make_pair_questions([("d", 1)], docs, lp, s)
        >>> q[0].true_id, len(q[0].sampled_ids), round(q[0].gen_logprob_true, 3)
        (2, 3, -0.693)
    """
    lp = np.asarray(gen_logprobs)
    samples = np.asarray(sampled_ids)
    if lp.ndim != 2 or lp.shape[0] != len(prompts):
        raise ValueError(f"`gen_logprobs` must be [{len(prompts)}, V], got {lp.shape}.")
    if samples.ndim != 2 or samples.shape[0] != len(prompts) or samples.shape[1] < 1:
        raise ValueError(f"`sampled_ids` must be [{len(prompts)}, n >= 1], got {samples.shape}.")
    lp_np = np.asarray(lp, np.float64)
    out = []
    for p, (doc_id, pos) in enumerate(prompts):
        toks = docs[doc_id]
        if not 1 <= pos < len(toks):
            raise ValueError(f"prompt {p}: position {pos} is outside document {doc_id!r}.")
        s = samples[p]
        out.append(
            PairQuestion(
                first_id + p,
                str(doc_id),
                int(pos),
                tuple(int(t) for t in toks[:pos]),
                int(toks[pos]),
                tuple(int(t) for t in s),
                float(lp_np[p, toks[pos]]),
                tuple(float(x) for x in lp_np[p, s]),
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class TopOneTable:
    """Top-1 guesses as arrays (one row per guess), targets rebuilt from the documents.

    Attributes:
        players: player names; `player` indexes into it.
        mismatched: rows whose logged target disagreed with the document (reported: the
            original app stored the wrong target; the document wins).
    """

    players: tuple[str, ...]
    player: np.ndarray
    doc_id: tuple[str, ...]
    position: np.ndarray
    guess_id: np.ndarray
    target_id: np.ndarray
    correct: np.ndarray
    target_text: tuple[str, ...]
    next_text: tuple[str | None, ...]
    mismatched: int
    problems: tuple[str, ...]


def load_top1_log(
    path: str | os.PathLike, docs: Mapping[str, Sequence[int]], vocab: GPT2Vocab
) -> TopOneTable:
    """Read a top-1 game log into a `TopOneTable`, rebuilding every target from `docs`.

    Raises:
        ValueError: a record names a document or position that `docs` does not have.
    """
    records, problems = read_log(path)
    rows = [r for r in records if r.get("game") == "top1"]
    players = tuple(sorted({str(r["player"]) for r in rows}))
    index = {p: i for i, p in enumerate(players)}
    tgt, nxt, mism = [], [], 0
    for n, r in enumerate(rows):
        d, pos = str(r["doc_id"]), int(r["position"])
        if d not in docs or not 0 <= pos < len(docs[d]):
            raise ValueError(f"{path}: guess {n} names document {d!r} position {pos} not in docs.")
        t = int(docs[d][pos])
        mism += int(r.get("target_id", t)) != t
        tgt.append(t)
        nxt.append(vocab.token_text(int(docs[d][pos + 1])) if pos + 1 < len(docs[d]) else None)
    guess = np.array([int(r["guess_id"]) for r in rows], np.int32)
    target = np.array(tgt, np.int32)
    return TopOneTable(
        players,
        np.array([index[str(r["player"])] for r in rows], np.int32),
        tuple(str(r["doc_id"]) for r in rows),
        np.array([int(r["position"]) for r in rows], np.int32),
        guess,
        target,
        guess == target,
        tuple(vocab.texts(target.tolist())),
        tuple(nxt),
        mism,
        tuple(problems),
    )


@dataclasses.dataclass(frozen=True)
class PairTable:
    """Perplexity-game answers as `[prompts, players]` arrays (for `loss_gap`).

    Attributes:
        question_ids: the prompts (rows), in the order of `questions`.
        players: the players kept (columns): those who answered every scored question.
        r: the probability each answer put on the true token (NaN where none).
        log_gen_sampled: `log g(t_i)` of the sample each answer saw.
        mask: which answers exist.
    """

    question_ids: tuple[int, ...]
    players: tuple[str, ...]
    r: np.ndarray
    log_gen_sampled: np.ndarray
    mask: np.ndarray
    dropped_players: tuple[str, ...]
    problems: tuple[str, ...]


def load_pair_log(
    path: str | os.PathLike, questions: Sequence[PairQuestion], include_training: bool = False
) -> PairTable:
    """Read a perplexity-game log into a `PairTable` over `questions`, keeping only the players
    who answered every one of them (as the paper keeps players who completed a set).

    Training answers are left out unless `include_training`.
    """
    records, problems = read_log(path)
    qpos = {q.question_id: i for i, q in enumerate(questions)}
    answers: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("game") != "pair" or int(r["question_id"]) not in qpos:
            continue
        if r.get("training") and not include_training:
            continue
        answers.setdefault(str(r["player"]), {})[int(r["question_id"])] = r
    full = sorted(p for p, a in answers.items() if len(a) == len(questions))
    dropped = tuple(sorted(set(answers) - set(full)))
    shape = (len(questions), len(full))
    r_arr = np.full(shape, np.nan)
    lg = np.zeros(shape)
    for j, p in enumerate(full):
        for qid, rec in answers[p].items():
            i = qpos[qid]
            r_arr[i, j] = float(rec["g"])
            lg[i, j] = questions[i].gen_logprob_sampled[int(rec["sample_index"])]
    return PairTable(
        tuple(q.question_id for q in questions),
        tuple(full),
        r_arr,
        lg,
        ~np.isnan(r_arr),
        dropped,
        tuple(problems),
    )
