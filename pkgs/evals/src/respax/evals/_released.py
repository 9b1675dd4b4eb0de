"""Loaders for the paper's released game data (Shlegeris et al. 2022, the lm-game-analysis
repository): the anonymised answers in `results_raw/` and the documents and comparisons of
its `data.zip`, read into the same tables as our own game logs.

Formats, as the released analysis scripts read them:

- `res_accuracy_anonym.json` (top-1 game): a JSON list of rows
  `[id, user hash, guess, logged answer, token index, doc id]`; `docs/doc{i}.json` is the
  document as a list of GPT-2 token strings. The target is `doc[token index - 1]` (the logged
  answer is wrong in the original app and is only counted as a mismatch), the prefix
  `doc[: token index - 1]`.
- `res_loss_anonym.json` (perplexity game): rows `[id, user hash, guess %, comparison id,
  sample index]`, where the guess is the stated probability (in %) that the true token is the
  original, as the analysis uses it; `multi_comparisons/doc{id}.json` holds `correct_logprobs`
  (per model: 2, 12, 24 layers) and `generated_logprobss` (per model, per sample).

Nothing is downloaded: pass the paths of a copy you have.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from ._bpe import GPT2Vocab
from ._humans import PairTable, TopOneTable

__all__ = [
    "PAPER_PAIR_SETS",
    "PAPER_TEST_USERS",
    "ReleasedPairData",
    "load_released_pair",
    "load_released_top1",
]

# The three test accounts the accuracy analysis drops (its "anon" account is hashed with a
# per-process string hash and cannot be identified; it stays in, as noted in the paper notes).
PAPER_TEST_USERS = (-6247052403041399844, 7513247084907933005, 3056584949900737159)
# The two question sets of the perplexity analysis: 40 questions from 10000, 80 from 20010.
PAPER_PAIR_SETS = (tuple(range(10_000, 10_040)), tuple(range(20_010, 20_090)))


def _rows(path, width: int, what: str) -> list:
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {os.fspath(path)!r}: cannot read a JSON list ({e}).") from e
    if not isinstance(data, list):
        raise ValueError(f"{what} {os.fspath(path)!r}: expected a JSON list of rows.")
    for n, row in enumerate(data):
        if not isinstance(row, list) or len(row) != width:
            raise ValueError(
                f"{what} {os.fspath(path)!r}: row {n} must be a list of {width} fields, got "
                f"{row!r:.80}."
            )
    return data


def load_released_top1(
    results_path: str | os.PathLike,
    docs_dir: str | os.PathLike,
    vocab: GPT2Vocab,
    *,
    drop_users: Sequence[int] = PAPER_TEST_USERS,
) -> TopOneTable:
    """The released top-1 answers as a `TopOneTable` (players named by their hash).

    Rows whose document file is missing or whose token index lies outside the document are
    skipped and listed in `problems`; guesses that are not one GPT-2 token get `guess_id` -1
    (never correct). `correct` compares the guessed and the true token text, as the analysis.

    Example:
        >>> t = load_released_top1("results_raw/res_accuracy_anonym.json", "docs",
        ...                        GPT2Vocab())  # doctest: +SKIP
    """
    rows = _rows(results_path, 6, "results_path")
    docs_dir = pathlib.Path(docs_dir)
    if not docs_dir.is_dir():
        raise ValueError(f"docs_dir {os.fspath(docs_dir)!r} is not a directory.")
    drop = {int(u) for u in drop_users}
    docs: dict[int, list[str] | None] = {}
    keep, problems, mism = [], [], 0
    for n, (_, user, guess, logged, idx, doc_id) in enumerate(rows):
        if int(user) in drop:
            continue
        if int(doc_id) not in docs:
            f = docs_dir / f"doc{int(doc_id)}.json"
            docs[int(doc_id)] = json.loads(f.read_text()) if f.exists() else None
        doc = docs[int(doc_id)]
        if doc is None or not 1 <= int(idx) <= len(doc):
            problems.append(f"row {n}: document {doc_id} has no token {idx}")
            continue
        target = doc[int(idx) - 1]
        mism += logged != target
        nxt = doc[int(idx)] if int(idx) < len(doc) else None
        keep.append((str(user), str(doc_id), int(idx) - 1, str(guess), target, nxt))

    def tid(text):
        try:
            return vocab.token_id(text)
        except ValueError:
            return -1

    players = tuple(sorted({k[0] for k in keep}))
    index = {p: i for i, p in enumerate(players)}
    return TopOneTable(
        players,
        np.array([index[k[0]] for k in keep], np.int32),
        tuple(k[1] for k in keep),
        np.array([k[2] for k in keep], np.int32),
        np.array([tid(k[3]) for k in keep], np.int32),
        np.array([tid(k[4]) for k in keep], np.int32),
        np.array([k[3] == k[4] for k in keep], bool),
        tuple(k[4] for k in keep),
        tuple(k[5] for k in keep),
        mism,
        tuple(problems),
    )


@dataclasses.dataclass(frozen=True)
class ReleasedPairData:
    """The released perplexity-game answers over the question sets.

    Attributes:
        table: a `PairTable` (rows: questions of all sets, in order; columns: players who
            answered every question of at least one set exactly once).
        log_ref_true: `log q(t*)` of the reference model per question (for `loss_gap`).
        correct_logprobs: `[questions, models]` log-probabilities of the true token.
        generated_logprobs: `[questions, models, samples]` log-probabilities of the samples.
    """

    table: PairTable
    log_ref_true: np.ndarray
    correct_logprobs: np.ndarray
    generated_logprobs: np.ndarray


def load_released_pair(
    results_path: str | os.PathLike,
    comparisons_dir: str | os.PathLike,
    *,
    sets: Sequence[Sequence[int]] = PAPER_PAIR_SETS,
    reference: int = 1,
) -> ReleasedPairData:
    """The released perplexity-game answers, with the analysis's player rule: per set, keep the
    players who answered each of its questions (here: each exactly once; the script counts
    answers, so it would also keep a player with one question twice and another missing, who
    is dropped here and named in `dropped_players`).

    Args:
        results_path: `res_loss_anonym.json`.
        comparisons_dir: the folder of `doc{question id}.json`.
        sets: the question sets (default: the paper's two).
        reference: the model index of the generator and reference q (1: the 12-layer GPT-2
            small, as the analysis).

    Example:
        >>> d = load_released_pair("results_raw/res_loss_anonym.json",
        ...                        "multi_comparisons")  # doctest: +SKIP
        >>> float(loss_gap(d.table.r, d.table.log_gen_sampled, d.log_ref_true,
        ...                d.table.mask))  # doctest: +SKIP
    """
    rows = _rows(results_path, 5, "results_path")
    cdir = pathlib.Path(comparisons_dir)
    qids = [int(q) for s in sets for q in s]
    if len(set(qids)) != len(qids) or not qids:
        raise ValueError("`sets` must be non-empty and must not share question ids.")
    docs = []
    for q in qids:
        f = cdir / f"doc{q}.json"
        if not f.exists():
            raise ValueError(f"comparisons_dir {os.fspath(cdir)!r} has no doc{q}.json.")
        docs.append(json.loads(f.read_text()))
    correct = np.array([d["correct_logprobs"] for d in docs], np.float64)
    generated = np.array([d["generated_logprobss"] for d in docs], np.float64)
    if not 0 <= reference < correct.shape[1]:
        raise ValueError(f"`reference` must be in 0..{correct.shape[1] - 1}, got {reference}.")
    qpos = {q: i for i, q in enumerate(qids)}
    answers: dict[str, dict[int, list]] = {}
    for _, user, guess, q, sample in rows:
        if int(q) in qpos:
            answers.setdefault(str(user), {}).setdefault(int(q), []).append(
                (float(guess), int(sample))
            )
    kept, dropped = [], []
    for user, by_q in sorted(answers.items()):
        complete = [s for s in sets if all(len(by_q.get(int(q), [])) == 1 for q in s)]
        counted = [s for s in sets if sum(len(by_q.get(int(q), [])) for q in s) == len(s)]
        if complete:
            kept.append((user, {int(q) for s in complete for q in s}))
        if len(counted) > len(complete):
            dropped.append(user)
    r = np.full((len(qids), len(kept)), np.nan)
    lg = np.zeros((len(qids), len(kept)))
    mask = np.zeros((len(qids), len(kept)), bool)
    problems = []
    for j, (user, qs) in enumerate(kept):
        for q in qs:
            guess, sample = answers[user][q][0]
            i = qpos[q]
            if not 0 < guess < 100 or not 0 <= sample < generated.shape[2]:
                problems.append(f"player {user} question {q}: guess {guess}, sample {sample}")
                continue
            r[i, j], lg[i, j], mask[i, j] = guess / 100.0, generated[i, reference, sample], True
    table = PairTable(
        tuple(qids), tuple(u for u, _ in kept), r, lg, mask, tuple(dropped), tuple(problems)
    )
    return ReleasedPairData(table, correct[:, reference], correct, generated)
