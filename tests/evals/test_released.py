"""Loaders of the paper's released game data, on small generated files in its formats."""

import json
import math

import numpy as np
import pytest

import respax.evals as ev


@pytest.fixture(scope="module")
def vocab():
    return ev.GPT2Vocab()


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_top1_loader_rebuilds_targets_and_drops_test_users(tmp_path, vocab):
    docs = tmp_path / "docs"
    docs.mkdir()
    _write(docs / "doc0.json", ["The", " cat", " sat", " on", " the", " mat"])
    _write(docs / "doc1.json", ["Hello", " world"])
    test_user = ev.PAPER_TEST_USERS[0]
    rows = [
        [0, 11, " cat", " zzz", 2, 0],  # target doc0[1] = " cat": right (logged answer wrong)
        [1, 11, " dog", " sat", 3, 0],  # target " sat": wrong
        [2, 22, " world", " world", 2, 1],  # right
        [3, 22, "not a token!", " on", 4, 0],  # not one GPT-2 token: wrong, id -1
        [4, test_user, " cat", " cat", 2, 0],  # dropped
        [5, 22, " x", " x", 9, 0],  # beyond the document: skipped, reported
        [6, 22, " x", " x", 1, 7],  # no such document: skipped, reported
    ]
    t = ev.load_released_top1(_write(tmp_path / "acc.json", rows), docs, vocab)
    assert t.players == ("11", "22")
    assert t.correct.tolist() == [True, False, True, False]
    assert t.target_text == (" cat", " sat", " world", " on")
    assert t.next_text == (" sat", " on", None, " the")
    assert t.position.tolist() == [1, 2, 1, 3]
    assert t.guess_id[2] == 995 and t.guess_id[3] == -1 and t.target_id[2] == 995
    assert t.mismatched == 1 and len(t.problems) == 2
    acc, n, counted = ev.accuracy_per_player(t.player, t.correct, len(t.players), min_guesses=1)
    np.testing.assert_allclose(np.asarray(acc), [0.5, 0.5])
    assert np.asarray(n).tolist() == [2, 2] and np.asarray(counted).all()


def test_top1_loader_bad_files(tmp_path, vocab):
    bad = _write(tmp_path / "bad.json", [[1, 2, 3]])
    with pytest.raises(ValueError, match="row 0 must be a list of 6 fields"):
        ev.load_released_top1(bad, tmp_path, vocab)
    (tmp_path / "nojson.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read a JSON list"):
        ev.load_released_top1(tmp_path / "nojson.json", tmp_path, vocab)
    with pytest.raises(ValueError, match="docs_dir .* is not a directory"):
        ev.load_released_top1(_write(tmp_path / "ok.json", []), tmp_path / "missing", vocab)


def test_pair_loader_keeps_complete_players_and_feeds_the_estimator(tmp_path):
    comps = tmp_path / "multi_comparisons"
    comps.mkdir()
    sets = ((100, 101), (200,))
    lp = {100: (-1.0, -2.0), 101: (-0.5, -1.5), 200: (-3.0, -1.0)}  # (2-layer, 12-layer) true
    for q, (a, b) in lp.items():
        _write(comps / f"doc{q}.json", {
            "correct_logprobs": [a, b],
            "generated_logprobss": [[-4.0, -5.0, -6.0], [-2.5, -3.5, -4.5]],
            "generator_index": 1,
        })  # fmt: skip
    rows = [
        [0, 7, 80.0, 100, 0],
        [1, 7, 60.0, 101, 2],  # player 7 completes set 1
        [2, 8, 50.0, 100, 1],
        [3, 8, 50.0, 100, 1],  # player 8: question 100 twice, 101 missing: dropped
        [4, 8, 90.0, 200, 0],  # ... but completes set 2
        [5, 9, 30.0, 101, 1],  # player 9 completes nothing
        [6, 7, 1.0, 999, 0],  # a question outside the sets: ignored
    ]
    d = ev.load_released_pair(_write(tmp_path / "loss.json", rows), comps, sets=sets)
    t = d.table
    assert t.question_ids == (100, 101, 200) and t.players == ("7", "8")
    assert t.dropped_players == ("8",)
    assert t.mask.tolist() == [[True, False], [True, False], [False, True]]
    np.testing.assert_allclose(t.r[t.mask], [0.8, 0.6, 0.9])
    np.testing.assert_allclose(t.log_gen_sampled[t.mask], [-2.5, -4.5, -2.5])
    np.testing.assert_allclose(d.log_ref_true, [-2.0, -1.5, -1.0])
    assert d.generated_logprobs.shape == (3, 2, 3)
    # by hand: per question ln( q(t*) (1/r - 1) / g(t_i) ), averaged over questions
    hand = np.mean(
        [
            math.log(math.exp(-2.0) * (1 / 0.8 - 1) / math.exp(-2.5)),
            math.log(math.exp(-1.5) * (1 / 0.6 - 1) / math.exp(-4.5)),
            math.log(math.exp(-1.0) * (1 / 0.9 - 1) / math.exp(-2.5)),
        ]
    )
    got = float(ev.loss_gap(t.r, t.log_gen_sampled, d.log_ref_true, t.mask))
    assert got == pytest.approx(hand, rel=1e-6)


def test_pair_loader_bad_input(tmp_path):
    loss = _write(tmp_path / "loss.json", [[0, 1, 50.0, 5, 0]])
    with pytest.raises(ValueError, match="has no doc5.json"):
        ev.load_released_pair(loss, tmp_path, sets=((5,),))
    with pytest.raises(ValueError, match="must not share question ids"):
        ev.load_released_pair(loss, tmp_path, sets=((5,), (5,)))
    _write(tmp_path / "doc5.json", {"correct_logprobs": [-1.0], "generated_logprobss": [[-2.0]]})
    with pytest.raises(ValueError, match="`reference` must be in 0..0"):
        ev.load_released_pair(loss, tmp_path, sets=((5,),))
    d = ev.load_released_pair(loss, tmp_path, sets=((5,),), reference=0)
    assert d.table.players == ("1",) and d.table.r.tolist() == [[0.5]]
