"""The terminal UI, driven as a person would: keys sent to a tmux pane, the screen read back."""

import shutil
import subprocess
import sys
import time
import uuid

import pytest

import respax.evals as ev
from respax.evals._tui import corpus_docs, pair_questions, play_pair, play_top1


@pytest.fixture(scope="module")
def vocab():
    return ev.GPT2Vocab()


def test_top1_scripted_input(tmp_path, vocab):
    docs = {"d": vocab.tokenizer.encode("Hello world and more")}
    game = ev.TopOneGame(docs, vocab, tmp_path / "l.jsonl", "ann")
    lines = iter(["Hello world", "", "␣world", " and", ":quit"])
    out = []
    play_top1(game, ask=lambda _: next(lines), say=out.append)
    text = "\n".join(out)
    assert "not one GPT-2 token" in text and "empty input" in text
    assert "RIGHT: you typed '␣world'" in text and "Score 2/2 (100.0%)" in text
    assert "Saved 2 guesses" in text


def test_pair_scripted_input_and_resume(tmp_path, vocab):
    docs = {"d": vocab.tokenizer.encode("The cat sat on the mat.")}
    qs = [
        ev.PairQuestion(i, "d", i + 1, tuple(docs["d"][: i + 1]), docs["d"][i + 1], (13,), -1.0,
                        (-2.0,))
        for i in range(3)
    ]  # fmt: skip
    log = tmp_path / "p.jsonl"
    out = []
    lines = iter(["95", "80", ":quit"])
    play_pair(ev.PairGame(qs, vocab, log, "ann", n_training=1), lambda _: next(lines), out.append)
    text = "\n".join(out)
    assert "[training 1/3]" in text and "not accepted" in text and "Resume" in text
    out = []
    lines = iter(["99", "1"])
    play_pair(ev.PairGame(qs, vocab, log, "ann", n_training=1), lambda _: next(lines), out.append)
    assert "[scored 2/3]" in out[3] and "Finished" in out[-1]


def _tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _wait_for(session, needle, timeout=90.0):
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", session, "-S", "-200")
        if needle in screen:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never appeared; screen:\n{screen}")


@pytest.fixture
def tmux_session():
    if shutil.which("tmux") is None:
        print("SKIP reason: tmux is not installed (apt-get install tmux)")
        pytest.skip("tmux is not installed")
    name = f"respax-tui-{uuid.uuid4().hex[:8]}"
    _tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "50")
    try:
        yield name
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def _start(session, args):
    env = f"JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 {sys.executable} -m respax.evals._tui"
    _tmux("send-keys", "-t", session, f"{env} {args}", "Enter")


def test_top1_in_tmux(tmp_path, vocab, tmux_session):
    log = tmp_path / "top1.jsonl"
    docs = corpus_docs(vocab)
    _start(tmux_session, f"top1 --player kim --log {log}")
    _wait_for(tmux_session, "guess>")
    target = ev.TopOneGame(docs, vocab, log, "kim").current()
    right = vocab.token_text(docs[target.doc_id][target.position]).replace(" ", "␣")
    _tmux("send-keys", "-t", tmux_session, "-l", "Hello world")
    _tmux("send-keys", "-t", tmux_session, "Enter")
    _wait_for(tmux_session, "not one GPT-2 token")
    _tmux("send-keys", "-t", tmux_session, "-l", right)
    _tmux("send-keys", "-t", tmux_session, "Enter")
    screen = _wait_for(tmux_session, "Score 1/1 (100.0%)")
    assert "RIGHT" in screen and "[score 1/1 (100.0%)]" in screen
    _tmux("send-keys", "-t", tmux_session, "-l", " qqqqzzzz")
    _tmux("send-keys", "-t", tmux_session, "Enter")
    _wait_for(tmux_session, "not accepted")
    _tmux("send-keys", "-t", tmux_session, "-l", "␣the")
    _tmux("send-keys", "-t", tmux_session, "Enter")
    _wait_for(tmux_session, "/2 (")
    _tmux("send-keys", "-t", tmux_session, "C-d")
    _wait_for(tmux_session, "Saved 2 guesses")
    records, problems = ev.read_log(log)
    assert len(records) == 2 and not problems and records[0]["correct"]
    assert records[0]["target_id"] == docs[target.doc_id][target.position]
    # (resuming an interrupted game is tested on the game itself, test_game.py)


def test_pair_questions_are_deterministic(vocab):
    docs = corpus_docs(vocab)
    a = pair_questions(vocab, docs, 3, order=1, num_samples=5, seed=4, train_chars=5000)
    b = pair_questions(vocab, docs, 3, order=1, num_samples=5, seed=4, train_chars=5000)
    assert a == b and len(a) == 3 and all(len(q.sampled_ids) == 5 for q in a)
    for q in a:
        assert q.true_id == docs[q.doc_id][q.position]
