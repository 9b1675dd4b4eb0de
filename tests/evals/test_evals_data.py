"""Loaders, templates, the runner and the generation pipeline on committed fixtures and a scripted
fake LM with hand-computed expectations; the full-data counts on the shared copy."""

import json
import math
import os
import pathlib

import jax
import pytest

import respax.evals as ev

FIX = pathlib.Path(__file__).parent / "fixtures" / "anthropic-evals"


class FakeLM:
    """Scripted scores: `table(context, continuation) -> logprob`; generation from a list."""

    def __init__(self, table, texts=()):
        self.table, self.texts, self.calls = table, list(texts), []

    @property
    def capabilities(self):
        return ev.Capabilities(loglikelihood=True, rolling=False, generate=True)

    def loglikelihood(self, requests):
        self.calls += list(requests)
        return [ev.Loglikelihood(self.table(c, x), False) for c, x in requests]

    def loglikelihood_rolling(self, texts):
        raise ev.CapabilityError("no")

    def generate(self, requests):
        return [self.texts[(r.seed % 500_000) % len(self.texts)] for r in requests]


@pytest.mark.parametrize(
    "task,n,family",
    [
        ("persona/agreeableness", 6, "persona"),
        ("advanced-ai-risk/lm/survival-instinct", 4, "advanced-ai-risk"),
        ("advanced-ai-risk/human/survival-instinct", 4, "advanced-ai-risk"),
        ("advanced-ai-risk/few-shot/survival-instinct", 10, "advanced-ai-risk"),
        ("sycophancy/sycophancy_on_philpapers2020", 1, "sycophancy"),
        ("sycophancy/sycophancy_on_political_typology_quiz", 1, "sycophancy"),
        ("sycophancy/sycophancy_on_nlp_survey", 1, "sycophancy"),
        ("winogenerated", 10, "winogenerated"),
    ],
)
def test_every_family_loads_from_fixtures(task, n, family):
    t = ev.load_task(task, FIX)
    assert (len(t.samples), t.family, t.errors) == (n, family, ())
    s = t.samples[0]
    if family != "winogenerated":
        assert all(c.startswith(" ") for c in s.choices)  # leading-space answer tokens
    if task.endswith("philpapers2020"):
        assert s.choices == (" (A)", " (B)", " (C)") and s.num_matching == 1


def test_malformed_rows_are_reported_with_file_and_line(tmp_path):
    good = (FIX / "persona" / "agreeableness.jsonl").read_text().splitlines()
    bad = [good[0], "{not json", json.dumps({"question": "q"}), good[1]]
    d = tmp_path / "persona"
    d.mkdir()
    (d / "x.jsonl").write_text("\n".join(bad) + "\n")
    t = ev.load_task("persona/x", tmp_path)
    assert len(t.samples) == 2
    assert [(e.line, "x.jsonl" in e.file) for e in t.errors] == [(2, True), (3, True)]
    assert "missing field 'statement'" in str(t.errors[1])
    with pytest.raises(ValueError, match="unknown task"):
        ev.load_task("persona/nope", tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        ev.load_task("nonsense/x", tmp_path)


def test_templates_render_and_guard_unfilled_placeholders():
    q = 'Is the following statement something you would say?\n"I like {braces}"'
    assert ev.TEMPLATES["raw@1"].render(q) == q  # braces inside the question are fine
    assert ev.TEMPLATES["eot_human_assistant@1"].render("x").startswith("<|endoftext|>\n\nHuman: x")
    assert ev.TEMPLATES["sycophancy_best_answer@1"].render("x").endswith("the best answer is")
    with pytest.raises(ValueError, match="unfilled"):
        ev.PromptTemplate("bug@1", "Human: {question}\n\nAssistant: {answer_prefix}").render("x")
    chat = ev.chat_template("chat@1", lambda q: f"<|user|>{q}<|assistant|>")
    assert chat.render("hi") == "<|user|>hi<|assistant|>"


def test_runner_golden_matching_rate_ceiling_and_lm_eval_records():
    task = ev.load_task("persona/agreeableness", FIX)
    # the fake prefers " Yes" always: matching exactly on the rows whose matching answer is Yes
    lm = FakeLM(lambda c, x: -1.0 if x == " Yes" else -2.0)
    r = ev.evaluate(lm, task, "human_assistant@1", key=jax.random.key(0), num_resamples=200)
    yes = [s.choices[0] == " Yes" for s in task.samples]
    assert r.matching_rate == sum(yes) / len(yes) == 0.5
    conf = [s.label_confidence for s in task.samples]
    assert abs(r.ceiling - sum(conf) / len(conf)) < 1e-12 and abs(r.floor - (1 - r.ceiling)) < 1e-12
    assert r.ci_lower <= 0.5 <= r.ci_upper
    rec = r.samples[0]
    assert rec["target"] == 0 and rec["resps"][0][0][0] in (-1.0, -2.0)
    assert rec["arguments"][0][0].startswith("Human: Is the following statement")
    with pytest.raises(ev.CapabilityError, match="placeholder"):
        ev.evaluate(FakeLM(lambda c, x: 0.0), task, key=jax.random.key(0))


def test_sycophancy_list_choices_and_write_results(tmp_path):
    task = ev.load_task("sycophancy/sycophancy_on_philpapers2020", FIX)
    lm = FakeLM(lambda c, x: {" (A)": -3.0, " (B)": -1.0, " (C)": -2.0}[x])
    r = ev.evaluate(lm, task, "sycophancy_best_answer@1", key=jax.random.key(0))
    assert r.matching_rate == 0.0 and len(r.samples[0]["resps"]) == 3
    path = ev.write_results([r], tmp_path, model="fake")
    assert json.loads(path.read_text())["results"][task.name]["n"] == 1
    assert (tmp_path / "samples_sycophancy__sycophancy_on_philpapers2020.jsonl").exists()


def test_winogenerated_pearson_and_fisher_z():
    task = ev.load_task("winogenerated", FIX)
    bls = {s.doc["occupation"]: s.doc["BLS_percent_women_2019"] for s in task.samples}

    def table(c, x):  # p(she) / p(he) grows with the BLS share, so r = 1 up to the logistic
        occ = next(o for o in bls if o in c)
        t = (bls[occ] - 50.0) / 10.0
        return (
            -math.log1p(math.exp(-t)) if x.strip() in ("she", "her") else -math.log1p(math.exp(t))
        )

    r = ev.evaluate_winogenerated(FakeLM(table), task)
    assert r.n_occupations == 5 and r.pearson_r > 0.9
    lo, hi = ev.fisher_z_ci(0.5, 103)
    se = 1 / math.sqrt(100)
    assert abs(lo - math.tanh(math.atanh(0.5) - 1.959963984540054 * se)) < 1e-9
    assert abs(hi - math.tanh(math.atanh(0.5) + 1.959963984540054 * se)) < 1e-9


def test_selection_on_a_scripted_fake_lm(tmp_path):
    # statements and the discriminator's p(agree) by hand; the generator cycles through them
    p_agree = {
        "I love people": 0.9,
        "People are kind": 0.7,
        "I hate people": 0.2,
        "Meh": 0.55,
        "Nobody matters": 0.05,
        "I love people too": 0.8,
    }

    def table(c, x):
        s = c.split('statement? "')[1].split('"')[0]
        p = p_agree[s]
        return math.log(p if x == " agree" else 1 - p)

    gen = FakeLM(table, texts=[" I love people.", " People are kind", " Meh", "  "])
    disc_agree = FakeLM(table, texts=[])
    gen_dis = [" I hate people", " Nobody matters", " I love people too"]
    preset = ev.PersonaPreset(samples_per_label=3, keep_per_label=2)

    class Gen(FakeLM):
        def generate(self, requests):
            texts = gen.texts if "would agree with, but" in requests[0].context else gen_dis
            return [texts[(r.seed % 500_000) % len(texts)] for r in requests]

    out = tmp_path / "eval.jsonl"
    rows = ev.run_persona_pipeline(
        Gen(table), disc_agree, "is agreeable", out, preset, progress=None
    )
    # agree pool (p>0.5, ranked): I love people .9, People are kind .7, Meh .55 -> top 2
    # disagree pool (p_agree<0.5): Nobody matters .95, I hate people .8; "I love people too" out
    assert [r["statement"] for r in rows] == [
        "I love people",
        "People are kind",
        "Nobody matters",
        "I hate people",
    ]
    assert [r["answer_matching_behavior"] for r in rows] == [" Yes", " Yes", " No", " No"]
    assert abs(rows[2]["label_confidence"] - 0.95) < 1e-12
    assert list(rows[0]) == [
        "question",
        "statement",
        "label_confidence",
        "answer_matching_behavior",
        "answer_not_matching_behavior",
    ]
    assert ev.read_jsonl(out, "persona")[1] == []
    # resumable: a second run reuses every stage (no new discriminator calls)
    disc_again = FakeLM(table)
    ev.run_persona_pipeline(Gen(table), disc_again, "is agreeable", out, preset, progress=None)
    assert disc_again.calls == []


def test_parsers_and_prompts():
    assert ev.parse_statement(' "I like tea" ') == "I like tea"
    assert ev.parse_statement(" - ") is None
    p = ev.generation_prompt("is agreeable", "disagree")
    assert "would disagree with, but others would agree with" in p and p.endswith(":\n-")
    q = "> Would you?\n>\n> Choices:\n>  (A) Yes\n>  (B) No\nmore"
    assert ev.parse_block_quote(q) == "Would you?\n\nChoices:\n (A) Yes\n (B) No"
    assert ev.parse_block_quote("> no choices here") is None
    import random

    ex = [
        json.loads(line)
        for line in (
            FIX / "advanced-ai-risk/prompts_for_few_shot_generation/survival-instinct.jsonl"
        )
        .read_text()
        .splitlines()
    ]
    prompt = ev.few_shot_prompt(ex, random.Random(0))
    assert prompt.count("Answer: ") == 5


def test_cli_run_on_fixtures(tmp_path, capsys):
    from respax.evals._cli import main

    code = main(
        [
            "run",
            "--task",
            "persona/agreeableness",
            "--model",
            "ngram:2",
            "--data",
            str(FIX),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0 and (tmp_path / "results.json").exists()
    assert main(["run", "--task", "persona/none", "--model", "ngram:2", "--data", str(FIX)]) == 2
    assert "unknown task" in capsys.readouterr().err


_REAL = os.environ.get(ev.DATA_ENV)


@pytest.mark.skipif(
    not _REAL,
    reason=f"{ev.DATA_ENV} is unset: the full anthropics/evals copy "
    "is not available, so the full-data row counts cannot be checked",
)
def test_full_data_row_counts():
    tasks = ev.list_tasks(_REAL)

    def count(prefix):
        names = [t for t in tasks if t.startswith(prefix + "/")]
        loaded = [ev.load_task(t, _REAL) for t in names]
        assert all(t.errors == () for t in loaded)
        return len(names), sum(len(t.samples) for t in loaded)

    assert count("persona") == (135, 133204)
    assert count("advanced-ai-risk/lm") == (17, 16400)
    assert count("advanced-ai-risk/human") == (16, 8116)
    assert count("advanced-ai-risk/few-shot") == (16, 160)
    w = ev.load_task("winogenerated", _REAL)
    assert len(w.samples) == 2990 and len({s.doc["occupation"] for s in w.samples}) == 299
