"""A plain-terminal UI of the two next-token games (line input, works over ssh and in tmux).

    python -m respax.evals._tui top1 --player ann --log games.jsonl
    python -m respax.evals._tui pair --player ann --log games.jsonl

The documents are the held-out persona statements the package ships (document id = line
number), tokenized with the GPT-2 BPE; the perplexity game's candidates come from an n-gram
generator fitted on the training statements, built from `--seed` so that a resumed game sees the
same questions. Everything answered is in the log at once; quit any time (`:quit`, Ctrl-D or
Ctrl-C) and start again with the same name to resume.
"""

import argparse
import sys
from collections.abc import Callable

from ._bpe import GPT2Vocab, show_token
from ._game import PAIR_BUTTONS, PairGame, TopOneGame

__all__ = ["corpus_docs", "main", "pair_questions", "play_pair", "play_top1"]

_PREFIX_CHARS = 600


def corpus_docs(vocab: GPT2Vocab, min_tokens: int = 4) -> dict[str, list[int]]:
    """The shipped held-out persona statements as documents (id = line number), as the
    experiment `next_token_humans_vs_lms` uses them."""
    from ._corpus import load_corpus

    docs = {
        str(i): vocab.tokenizer.encode(line)
        for i, line in enumerate(load_corpus("heldout").splitlines())
        if line.strip()
    }
    return {k: v for k, v in docs.items() if len(v) >= min_tokens}


def pair_questions(vocab, docs, n: int, order: int, num_samples: int, seed: int, train_chars=0):
    """`n` perplexity-game questions over `docs`, candidates from an order-`order` n-gram
    generator fitted on the shipped training statements (deterministic given `seed`)."""
    import jax
    import numpy as np

    from ._corpus import load_corpus
    from ._humans import make_pair_questions, sample_tokens
    from ._ngram import NGramLM

    train = load_corpus("train")
    if train_chars:
        train = train[:train_chars]
    gen = NGramLM.fit(train.splitlines(), order=order, tokenizer=vocab.tokenizer)
    rng = np.random.default_rng(seed)
    all_pos = [(d, p) for d, t in docs.items() for p in range(1, len(t))]
    prompts = [all_pos[i] for i in rng.choice(len(all_pos), n, replace=False)]
    width = max(p for _, p in prompts) + 1
    x = np.zeros((n, width), np.int32)
    for i, (d, p) in enumerate(prompts):
        x[i, : p + 1] = [vocab.eot_id, *docs[d][:p]]
    lp = gen.next_logits(x, np.array([p + 1 for _, p in prompts]))
    s = sample_tokens(lp, num_samples, key=jax.random.key(seed))
    return make_pair_questions(prompts, docs, lp, s)


def _read(prompt: str, ask: Callable[[str], str]) -> str | None:
    try:
        return ask(prompt)
    except (EOFError, KeyboardInterrupt):
        return None


def _typed(text: str) -> str:
    # "␣" stands for a space, "\n" for a newline, so both can be typed and seen
    return text.replace("␣", " ").replace("\\n", "\n").replace("\\t", "\t")


def play_top1(game: TopOneGame, ask: Callable[[str], str] = input, say=print) -> None:
    """Run the top-1 game on the terminal until the player quits."""
    say(f"Top-1 game, player {game.player}. Type the next token exactly, with its leading")
    say("space (a space, or ␣); \\n is a newline. :new = new document, :quit = stop.")
    for p in game.problems:
        say(f"note: {p}")
    while True:
        p = game.current()
        acc = f"{p.correct}/{p.guesses}" + (f" ({p.correct / p.guesses:.1%})" if p.guesses else "")
        say("")
        say(f"[score {acc}] document {p.doc_id}, token {p.position}")
        text = p.prefix_text
        say(("…" + text[-_PREFIX_CHARS:]) if len(text) > _PREFIX_CHARS else text)
        line = _read("guess> ", ask)
        if line is None or line.strip() == ":quit":
            say(f"Saved {p.guesses} guesses to {game.log_path}. Resume with the same name.")
            return
        if line.strip() == ":new":
            game.new_document()
            continue
        try:
            fb = game.guess(_typed(line))
        except ValueError as e:
            say(f"not accepted: {e}")
            continue
        mark = "RIGHT" if fb.correct else "wrong"
        say(
            f"{mark}: you typed {show_token(fb.guess_text)}, the token was "
            f"{show_token(fb.target_text)}. Score {fb.correct_total}/{fb.guesses} "
            f"({fb.accuracy:.1%})"
        )


def play_pair(game: PairGame, ask: Callable[[str], str] = input, say=print) -> None:
    """Run the perplexity game on the terminal until it ends or the player quits."""
    buttons = " ".join(str(round(b * 100)) for b in PAIR_BUTTONS)
    say(f"Perplexity game, player {game.player}. Which token came next in the real text?")
    say(f"Answer how confident you are (in %) that A is the original: {buttons}. :quit = stop.")
    while not game.done:
        p = game.current()
        kind = "training" if p.training else "scored"
        say("")
        say(f"[{kind} {p.index + 1}/{p.total}] score {game.total_score:.1f}")
        text = p.prefix_text
        say(("…" + text[-_PREFIX_CHARS:]) if len(text) > _PREFIX_CHARS else text)
        say(f"A: {show_token(p.a_text)}    B: {show_token(p.b_text)}")
        if p.auto:
            say("A and B are the same token: 50% is recorded.")
            line = _read("press Enter> ", ask)
            if line is None or line.strip() == ":quit":
                break
            fb = game.answer(None)
        else:
            line = _read("A is the original, % > ", ask)
            if line is None or line.strip() == ":quit":
                break
            try:
                pct = float(line.strip().rstrip("%"))
                fb = game.answer(pct / 100.0)
            except ValueError as e:
                say(f"not accepted: {e}" if "choice" in str(e) else f"not accepted: {line!r}")
                continue
        truth = "A" if fb.a_is_true else "B"
        say(f"The original was {truth}. This answer: {fb.score:+.1f}; total {fb.total_score:.1f}")
    if game.done:
        say(f"Finished: total score {game.total_score:.1f}. Thank you!")
    else:
        say(f"Saved to {game.log_path}. Resume with the same name.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m respax.evals._tui", description=__doc__)
    ap.add_argument("game", choices=["top1", "pair"])
    ap.add_argument("--player", required=True)
    ap.add_argument("--log", required=True, help="the append-only JSONL log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", type=int, default=90, help="pair: 10 training + 80 scored")
    ap.add_argument("--training", type=int, default=10)
    ap.add_argument("--order", type=int, default=3, help="pair: the n-gram generator's order")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--train-chars", type=int, default=0)
    a = ap.parse_args(argv)
    vocab = GPT2Vocab()
    docs = corpus_docs(vocab)
    try:
        if a.game == "top1":
            play_top1(TopOneGame(docs, vocab, a.log, a.player, seed=a.seed))
        else:
            qs = pair_questions(vocab, docs, a.questions, a.order, a.samples, a.seed, a.train_chars)
            play_pair(PairGame(qs, vocab, a.log, a.player, n_training=a.training, seed=a.seed))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
