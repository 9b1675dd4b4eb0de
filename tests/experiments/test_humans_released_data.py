"""next_token_humans_vs_lms on a generated copy of the paper's released-data layout."""

import json
import math

import pytest

import respax.evals as ev
from experiments.next_token_humans_vs_lms import released_summary


def test_released_summary_on_a_generated_copy(tmp_path):
    (tmp_path / "results_raw").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "multi_comparisons").mkdir()
    (tmp_path / "docs" / "doc0.json").write_text(json.dumps(["The", " cat", " sat", "\n"]))
    # player 5: 60 guesses, 30 right; player 6: 10 guesses (not counted); one newline target
    rows = [[i, 5, " cat" if i % 2 else " dog", "?", 2, 0] for i in range(60)]
    rows += [[100 + i, 6, " cat", "?", 2, 0] for i in range(10)] + [[200, 5, "\n", "?", 4, 0]]
    (tmp_path / "results_raw" / "res_accuracy_anonym.json").write_text(json.dumps(rows))
    for q in ev.PAPER_PAIR_SETS[0]:
        (tmp_path / "multi_comparisons" / f"doc{q}.json").write_text(
            json.dumps({"correct_logprobs": [-3.0, -2.0, -1.5],
                        "generated_logprobss": [[-2.0] * 4, [-2.0] * 4, [-2.0] * 4]})
        )  # fmt: skip
    pair = [[q, 9, 50.0, q, 0] for q in ev.PAPER_PAIR_SETS[0]]
    (tmp_path / "results_raw" / "res_loss_anonym.json").write_text(json.dumps(pair))
    with pytest.raises(ValueError, match="has no doc20010.json"):
        released_summary(tmp_path, ev.GPT2Vocab())
    for q in ev.PAPER_PAIR_SETS[1]:
        (tmp_path / "multi_comparisons" / f"doc{q}.json").write_text(
            (tmp_path / "multi_comparisons" / "doc10000.json").read_text()
        )
    out = released_summary(tmp_path, ev.GPT2Vocab())
    assert out["top1"]["rows"] == 70 and out["top1"]["players_counted"] == 1
    assert out["top1"]["accuracy_median"] == pytest.approx(0.5)
    # r = 1/2 everywhere: each term q(t*) / g(t_i) = e^-2 / e^-2, so the gap is 0
    assert out["pair"]["players"] == 1 and out["pair"]["human_loss_gap"] == pytest.approx(0.0)
    assert out["pair"]["human_perplexity"] == pytest.approx(math.exp(2.0))
    assert out["pair"]["model_loss"]["24 layers"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="has neither"):
        released_summary(tmp_path / "elsewhere", ev.GPT2Vocab())
