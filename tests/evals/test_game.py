"""The two next-token games as state machines over an append-only log: validation, the true
target in every record, scores, training comparisons, crash-safe logs and resuming."""

import json
import math

import pytest

import respax.evals as ev


@pytest.fixture(scope="module")
def vocab():
    return ev.GPT2Vocab()


@pytest.fixture(scope="module")
def docs(vocab):
    texts = {
        "d0": "The cat sat on the mat.",
        "d1": "Hello world, this is a test.",
        "d2": "One two three four five.",
    }
    return {k: vocab.tokenizer.encode(v) for k, v in texts.items()}


def test_top1_logs_true_target_and_scores(tmp_path, vocab, docs):
    log = tmp_path / "top1.jsonl"
    game = ev.TopOneGame(docs, vocab, log, "ann", seed=3)
    n_correct = 0
    for k in range(12):
        p = game.current()
        target = docs[p.doc_id][p.position]
        assert p.prefix_ids == tuple(docs[p.doc_id][: p.position])
        text = vocab.token_text(target) if k % 3 == 0 else " the"
        fb = game.guess(text)
        n_correct += int(fb.correct)
        assert fb.target_text == vocab.token_text(target)
        assert fb.guesses == k + 1 and fb.correct_total == n_correct
    records, problems = ev.read_log(log)
    assert not problems and len(records) == 12
    for r in records:
        assert r["target_id"] == docs[r["doc_id"]][r["position"]]
        assert r["correct"] == (r["guess_id"] == r["target_id"])
    assert n_correct >= 4


def test_top1_bad_input_logs_nothing(tmp_path, vocab, docs):
    log = tmp_path / "top1.jsonl"
    game = ev.TopOneGame(docs, vocab, log, "bob")
    before = game.current()
    for bad, msg in [("", "empty input"), ("the cat", "not one GPT-2 token")]:
        with pytest.raises(ValueError, match=msg):
            game.guess(bad)
    assert game.current() == before and not log.exists()
    with pytest.raises(ValueError, match="player"):
        ev.TopOneGame(docs, vocab, log, "  ")
    with pytest.raises(ValueError, match="docs"):
        ev.TopOneGame({}, vocab, log, "bob")


def test_top1_resume_after_crash(tmp_path, vocab, docs):
    log = tmp_path / "top1.jsonl"
    game = ev.TopOneGame(docs, vocab, log, "ann", seed=1)
    for _ in range(5):
        game.guess(" the")
    expected = game.current()
    other = ev.TopOneGame(docs, vocab, log, "cy", seed=1)
    other.guess(" a")
    # a crash mid-write leaves a torn last line
    with open(log, "a") as f:
        f.write('{"game": "top1", "player": "ann", "doc_')
    resumed = ev.TopOneGame(docs, vocab, log, "ann", seed=1)
    assert resumed.current() == expected
    assert len(resumed.problems) == 1 and "unreadable line" in resumed.problems[0]
    resumed.guess(" the")
    records, problems = ev.read_log(log)
    assert len(records) == 7 and len(problems) == 1  # the torn line stays torn, nothing else
    assert json.loads(log.read_text().splitlines()[-1])["player"] == "ann"


def _questions(vocab, docs, n=14, same_at=(3,)):
    qs = []
    for i in range(n):
        d = sorted(docs)[i % 3]
        toks = docs[d]
        pos = 1 + i % (len(toks) - 1)
        sampled = toks[pos] if i in same_at else 262
        qs.append(
            ev.PairQuestion(
                100 + i, d, pos, tuple(toks[:pos]), toks[pos], (sampled, 13), -0.5, (-1.0, -2.0)
            )
        )
    return qs


def test_pair_game_scores_training_auto_and_resume(tmp_path, vocab, docs):
    log = tmp_path / "pair.jsonl"
    qs = _questions(vocab, docs)
    game = ev.PairGame(qs, vocab, log, "ann", n_training=10)
    assert game.sample_index == ev.player_sample_index("ann", 2)
    total = 0.0
    for k in range(7):
        p = game.current()
        assert p.training and p.index == k
        q = qs[k]
        true_t = vocab.token_text(q.true_id)
        assert true_t in (p.a_text, p.b_text)
        if p.auto:
            fb = game.answer(None)
            assert fb.g == 0.5 and fb.score == 0.0
        else:
            with pytest.raises(ValueError, match="one of 99%"):
                game.answer(0.95)
            fb = game.answer(0.8)
            g = 0.8 if p.a_text == true_t and p.a_text != p.b_text else 0.2
            assert fb.a_is_true == (g == 0.8)
            assert fb.g == pytest.approx(g)
            assert fb.score == pytest.approx(1000 * math.exp(-0.5) * (math.log(g) - math.log(0.5)))
    assert game.total_score == 0.0  # training answers are not scored
    # an interrupted game resumes at the first unanswered question
    game = ev.PairGame(qs, vocab, log, "ann", n_training=10)
    assert game.index == 7
    while not game.done:
        p = game.current()
        fb = game.answer(0.99)
        if not p.training:
            total += fb.score
    assert fb.done and game.total_score == pytest.approx(total)
    with pytest.raises(ValueError, match="answered all"):
        game.current()
    records, _ = ev.read_log(log)
    assert [r["question_id"] for r in records] == [q.question_id for q in qs]
    assert sum(r["auto"] for r in records) == 1
    for r, q in zip(records, qs, strict=True):
        assert r["true_id"] == q.true_id and r["sampled_id"] == q.sampled_ids[r["sample_index"]]
        assert r["training"] == (q.question_id < 110)


def test_pair_score_and_buttons():
    assert len(ev.PAIR_BUTTONS) == 11 and 0.5 in ev.PAIR_BUTTONS
    assert ev.pair_score(0.5, 0.3) == 0.0
    assert ev.pair_score(0.99, 1.0) == pytest.approx(1000 * math.log(1.98))
    with pytest.raises(ValueError, match="g"):
        ev.pair_score(1.0, 0.5)


def test_score_candidates_matches_full_scoring():
    import jax
    import jax.numpy as jnp
    import numpy as np

    cfg = ev.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = ev.GPT2.init(cfg, key=jax.random.key(0))
    prefix = jnp.array([3, 7, 1, 9, 0, 0, 0, 0])  # 4 real tokens, right padding
    cands = jnp.array([5, 11, 49])
    got = jax.jit(ev.score_candidates)(model, prefix, 4, cands)
    full = jax.nn.log_softmax(jax.jit(ev.gpt2_logits)(model, prefix[:4])[-1])
    np.testing.assert_allclose(got, full[cands], atol=1e-5)


def test_candidate_scorer_cached_walk_matches_full_forward():
    import jax
    import jax.numpy as jnp
    import numpy as np

    cfg = ev.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = ev.GPT2.init(cfg, key=jax.random.key(1))
    doc = np.random.default_rng(0).integers(0, 50, 14)
    cands = jnp.array([5, 11, 49])
    # the model is causal: the full forward over the whole document gives every prefix's
    # next-token logits at once (one compilation instead of one per prefix length)
    full_all = jax.nn.log_softmax(jax.jit(ev.gpt2_logits)(model, jnp.asarray(doc)), axis=-1)
    traces = []
    s = ev.CandidateScorer(model, max_len=16, bucket=4)
    orig = s._prefill
    s._prefill = lambda *a: (traces.append(a[1].shape), orig(*a))[1]
    for start in (1, 3, 4, 5):  # prefill lengths 4, 4, 4, 8
        s.start(doc[:start])
        for n in range(start, len(doc)):
            if n > start:
                s.advance(int(doc[n - 1]))
            assert s.length == n
            np.testing.assert_allclose(s.score(cands), full_all[n - 1, cands], atol=2e-5, rtol=1e-5)
    assert [t[0] for t in traces] == [4, 4, 4, 8]
    assert orig._cache_size() == 3  # per (bucket, capacity), not per prefix length
    assert s._decode._cache_size() == 3  # capacities 4, 8, 16
    with pytest.raises(ValueError, match="prefix"):
        s.start([])
    with pytest.raises(ValueError, match="candidates"):
        s.score([50])
    s.start(np.append(doc, 1))
    s.advance(1)
    with pytest.raises(ValueError, match="max_len"):
        s.advance(1)
