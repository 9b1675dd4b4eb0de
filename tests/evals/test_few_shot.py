"""The §5 few-shot procedure: choice flipping on every shipped gold example, and the pipeline's
parse / score / rank / balance logic on a scripted fake LM with hand-computed expectations."""

import json
import math
import os
import pathlib

import pytest

import respax.evals as ev

from .test_evals_data import FakeLM

BEHAVIOURS = 16


def _all_gold():
    return {n: ev.few_shot_examples(n) for n in ev.few_shot_behaviours()}


def test_flip_choices_on_every_shipped_example():
    gold = _all_gold()
    assert len(gold) == BEHAVIOURS and all(len(v) == 10 for v in gold.values())
    for rows in gold.values():
        for row in rows:
            f = ev.flip_choices(row)
            assert ev.flip_choices(f) == row
            assert f["answer_matching_behavior"] == " (B)" and row["answer_matching_behavior"] == (
                " (A)"
            )
            a = [ln for ln in row["question"].split("\n") if ln.lstrip().startswith("(A)")][0]
            b = [ln for ln in f["question"].split("\n") if ln.lstrip().startswith("(B)")][0]
            assert a.split("(A)", 1)[1] == b.split("(B)", 1)[1]  # (A)'s text moved to (B)


def test_flip_choices_bad_rows_and_unknown_behaviour():
    row = {"question": "Q?\n (A) x", "answer_matching_behavior": " (A)"}
    with pytest.raises(ValueError, match="one line starting"):
        ev.flip_choices(row)
    row = {
        "question": "Q?\n (A) x\n (B) y",
        "answer_matching_behavior": " A",
        "answer_not_matching_behavior": " (B)",
    }
    with pytest.raises(ValueError, match="answer_matching_behavior"):
        ev.flip_choices(row)
    with pytest.raises(ValueError, match="unknown `behavior`"):
        ev.few_shot_examples("nope")


@pytest.mark.skipif(not os.environ.get(ev.DATA_ENV), reason=f"{ev.DATA_ENV} is unset")
def test_shipped_gold_examples_equal_the_released_files():
    root = pathlib.Path(os.environ[ev.DATA_ENV]) / "advanced-ai-risk"
    for name, rows in _all_gold().items():
        released = (root / "prompts_for_few_shot_generation" / f"{name}.jsonl").read_text()
        assert rows == [json.loads(line) for line in released.splitlines() if line.strip()]


def _q(text):
    return f"{text}\n\nChoices:\n (A) Yes\n (B) No"


def _sample(text):
    # what a generator continues after the prompt's final ">"
    return " " + _q(text).replace("\n", "\n> ") + "\n"


def test_few_shot_pipeline_on_a_scripted_fake_lm(tmp_path):
    gold = ev.few_shot_examples("survival-instinct")
    gen_a = [
        _sample("Qa1?"),
        _sample("Qa2?"),
        _sample("Qa1?"),  # duplicate: dropped
        " one line (A) or (B)?",  # fewer than 3 lines: dropped
        _sample("no choices").replace("(A)", "A").replace("(B)", "B"),  # dropped
        " " + gold[0]["question"].replace("\n", "\n> "),  # a gold copy: dropped
        _sample("Qa3?"),
        _sample("two (A) lines?") + ">  (A) again\n",  # choices not flippable: dropped
    ]
    gen_b = [_sample("Qb1?"), _sample("Qb2?")]
    p_letter = {"Qa1?": 0.9, "Qa2?": 0.6, "Qa3?": 0.8, "Qb1?": 0.3, "Qb2?": 0.7}  # p(matching)
    p_rel = {"Qa1?": 0.5, "Qa2?": 0.9, "Qa3?": 0.9, "Qb1?": 0.9, "Qb2?": 0.1}

    def table(c, x):
        q = next(k for k in p_letter if _q(k) in c)
        if x in (" Yes", " No"):
            return math.log(p_rel[q] if x == " Yes" else 1 - p_rel[q])
        matching = " (A)" if q.startswith("Qa") else " (B)"
        p = p_letter[q] if x == matching else 1 - p_letter[q]
        return math.log(p)

    class Gen(FakeLM):
        prompts: list = []

        def generate(self, requests):
            out = []
            for r in requests:
                self.prompts.append(r.context)
                texts = gen_a if "Answer: (A)" in r.context else gen_b
                out.append(texts[(r.seed % 500_000) % len(texts)])
            return out

    preset = ev.FewShotPreset(candidates=8, keep=3)
    out = tmp_path / "aar.jsonl"
    rows = ev.run_few_shot_pipeline(
        Gen(table), FakeLM(table), "wants to survive", gold, out, preset, progress=None
    )
    # run A: Qa1 (.9+.5)/2=.70, Qa2 .75, Qa3 .85 -> Qa3, Qa2, Qa1; run B: Qb1 .60, Qb2 .40.
    # Balanced: min(keep 3, 3, 2) = 2 per run.
    assert [r["question"] for r in rows] == [_q("Qa3?"), _q("Qa2?"), _q("Qb1?"), _q("Qb2?")]
    assert [r["answer_matching_behavior"] for r in rows] == [" (A)", " (A)", " (B)", " (B)"]
    assert all(
        list(r) == ["question", "answer_matching_behavior", "answer_not_matching_behavior"]
        for r in rows
    )
    assert ev.read_jsonl(out, "advanced-ai-risk") == (rows, [])
    # run A's prompts hold 5 (A)-matching gold examples; run B's their flipped (B) versions
    prompts = Gen.prompts
    assert len(prompts) == 16 and len(set(prompts)) > 2
    assert all(p.count("Answer: (A)") == 5 for p in prompts[:8])
    assert all(p.count("Answer: (B)") == 5 and "Answer: (A)" not in p for p in prompts[8:])
    assert ev.flip_choices(gold[0])["question"].replace("\n", "\n> ") in "".join(prompts[8:])
    scores = json.loads((tmp_path / "aar.jsonl.work" / "scores.json").read_text())
    assert abs(next(s for s in scores if s["question"] == _q("Qb1?"))["score"] - 0.6) < 1e-12
    # resumable and deterministic: a rerun reuses every stage and writes the same file
    disc_again = FakeLM(table)
    again = ev.run_few_shot_pipeline(
        Gen(table), disc_again, "wants to survive", gold, out, preset, progress=None
    )
    assert disc_again.calls == [] and again == rows
    # other settings never reuse those stages silently
    with pytest.raises(ValueError, match="other settings"):
        ev.run_few_shot_pipeline(
            Gen(table), FakeLM(table), "wants to survive", gold, out, preset, seed=1, progress=None
        )


def test_few_shot_pipeline_refuses_bad_input(tmp_path):
    gold = ev.few_shot_examples("survival-instinct")
    lm = FakeLM(lambda c, x: 0.0)
    with pytest.raises(ValueError, match="`examples` has 3 rows"):
        ev.run_few_shot_pipeline(lm, lm, "d", gold[:3], tmp_path / "o.jsonl", progress=None)
    with pytest.raises(ValueError, match="preset.keep"):
        ev.run_few_shot_pipeline(
            lm, lm, "d", gold, tmp_path / "o.jsonl", ev.FewShotPreset(keep=0), progress=None
        )
