"""Model-written evaluations (Perez et al. 2022, arXiv 2212.09251) end to end with small local
models that run offline on a CPU.

1. Reference LMs on the shipped corpus (5,120 model-written persona statements, CC-BY-4.0, a
   fixed 90/10 split): a unigram and an interpolated Witten-Bell n-gram model (uniform base) and
   character transformers (GPT-2 blocks) of several widths, with bits/char on the held-out 10%.
2. The generation pipeline on one persona: the largest transformer generates statements for each
   label with the paper's prompt and sampling settings (T 1.4, top-p 0.975, 48 tokens, stops "\\n",
   ".", " -"); the next-widest transformer discriminates with the paper's filter prompt as a
   2-way softmax over " agree" / " disagree"; `select` keeps a label-balanced file in the exact
   anthropics/evals schema. Choice (not in the paper): tiny models prefer the shorter " agree"
   reply whatever the statement, so their log-odds are centred on the candidate set's median
   (contextual calibration) before the softmax; without it one label's pool would be empty.
3. Held-out check: a third model (a transformer of another width, never used for selection)
   scores the kept statements the same way; its agreement with the labels is compared with chance.
4. The §5 few-shot advanced-AI-risk procedure end to end (`run_few_shot_pipeline`): 5 of the 10
   shipped gold questions of one behaviour per prompt, one run with (A) and one with (B) as the
   matching answer, block-quote parsing, ranking by the mean of the discriminator's label and
   relevance probabilities, a label-balanced file in the exact advanced-ai-risk schema. The
   generator is a character n-gram model fitted on the gold questions of the other 15 behaviours
   (as few-shot documents, each also with its choices flipped), so it writes new questions in
   the format without having seen the target behaviour's; the discriminator is stage 2's.
5. Every model is evaluated (Human/Assistant template) on both generated files and on released
   persona files whose statements were left out of the training corpus, with the scaling plot
   of matching rate against parameters.

Tiny character models do not show the paper's behaviours; the claims say what they can check
(the pipeline's invariants, the bits/char ordering, agreement above chance or not) and cite the
paper's 154-dataset figures without claiming them.
"""

import dataclasses
import json
import math
import os
import shutil

import equinox as eqx
import jax
import numpy as np

from experiments._api import Claim, Context, Experiment, Result
from respax.evals import (
    CORPUS_HELD_OUT_PERSONAS,
    DATA_ENV,
    CharTokenizer,
    FewShotPreset,
    GPT2Config,
    NGramLM,
    PersonaPreset,
    Scored,
    evaluate,
    few_shot_behaviours,
    few_shot_examples,
    flip_choices,
    generate_statements,
    load_corpus,
    load_task,
    load_textgenrnn,
    parse_statement,
    persona_rows,
    read_jsonl,
    run_few_shot_pipeline,
    select,
    task_from_jsonl,
    train_transformer,
)
from respax.evals._pipeline import filter_prompt


@dataclasses.dataclass(frozen=True)
class Config:
    ngram_order: int = 5
    # transformer widths (n_layer each): the widest generates, the next discriminates, the third
    # is the held-out scorer
    widths: tuple[int, ...] = (32, 64, 96)
    n_layer: int = 2
    context: int = 128  # n_positions of the transformers
    train_steps: int = 120
    batch_size: int = 16
    seq_len: int = 96
    description: str = "is agreeable"  # the persona the pipeline writes an eval for
    samples_per_label: int = 160
    keep_per_label: int = 500
    max_tokens: int = 48
    eval_limit: int = 80  # rows per released persona file
    data_root: str = ""  # an anthropics/evals copy; default the RESPAX_ANTHROPIC_EVALS folder
    bpc_chars: int = 20000  # held-out characters scored for bits/char
    train_chars: int = 0  # 0: the whole training split
    # the few-shot run (stage 4): a shipped gold behaviour, its description in the prompts, the
    # candidates sampled per matching answer, and the generator n-gram's order
    few_shot_behavior: str = "survival-instinct"
    few_shot_description: str = "wants to avoid being shut down"
    few_shot_candidates: int = 300
    few_shot_order: int = 6


SCALES = {
    "smoke": Config(
        widths=(16,),
        context=64,
        train_steps=2,
        batch_size=4,
        seq_len=32,
        samples_per_label=8,
        max_tokens=8,
        eval_limit=4,
        bpc_chars=600,
        train_chars=30000,
        few_shot_candidates=40,
    ),
    "quick": Config(),
    "paper": Config(
        widths=(64, 128, 256),
        n_layer=4,
        train_steps=3000,
        batch_size=32,
        seq_len=128,
        samples_per_label=5000,
        eval_limit=1000,
        bpc_chars=40000,
        few_shot_candidates=60000,
    ),
}


def _params(lm) -> int:
    if isinstance(lm, NGramLM):
        return int(sum(len(t[0]) for t in lm._tables))  # stored n-gram counts
    return int(sum(x.size for x in jax.tree.leaves(lm.model)))


def _bpc(lm, text: str) -> float:
    lines = [ln for ln in text.splitlines() if ln]
    nats = sum(lm.loglikelihood_rolling(lines))
    return -nats / math.log(2) / sum(len(ln) for ln in lines)


def _p_agree_logodds(lm, description, statements) -> np.ndarray:
    reqs = []
    for s in statements:
        p = filter_prompt(description, s)
        reqs += [(p, " agree"), (p, " disagree")]
    res = lm.loglikelihood(reqs)
    return np.array([res[2 * i].logprob - res[2 * i + 1].logprob for i in range(len(statements))])


def _calibrated(logodds: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(logodds - np.median(logodds))))


def run(cfg: Config, ctx: Context) -> Result:
    key = ctx.key
    train, heldout = load_corpus("train"), load_corpus("heldout")
    if cfg.train_chars:
        train = train[: cfg.train_chars]
    heldout_bpc = heldout[: cfg.bpc_chars].rsplit("\n", 1)[0]
    ctx.log("stage 1/5: reference models")
    tok = CharTokenizer.from_text(load_corpus("all"))
    models = {
        "unigram": NGramLM.fit(train.splitlines(), order=1, tokenizer=tok),
        f"ngram{cfg.ngram_order}": NGramLM.fit(
            train.splitlines(), order=cfg.ngram_order, tokenizer=tok
        ),
    }
    for i, w in enumerate(cfg.widths):
        config = GPT2Config(
            vocab_size=models["unigram"].tokenizer.vocab_size,
            n_positions=cfg.context,
            n_embd=w,
            n_layer=cfg.n_layer,
            n_head=4,
        )
        models[f"transformer{w}"] = train_transformer(
            train,
            config,
            key=jax.random.fold_in(key, i),
            steps=cfg.train_steps,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            tokenizer=models["unigram"].tokenizer,
        )
        # one padded length (the full context) for every batch: one compilation of the scorer
        models[f"transformer{w}"].pad_multiple = cfg.context
        models[f"transformer{w}"].batch_size = 32
    bpc = {name: _bpc(lm, heldout_bpc) for name, lm in models.items()}
    params = {name: _params(lm) for name, lm in models.items()}
    # textgenrnn's shipped character LM (pretrained on Reddit titles, not on this corpus): a
    # real English model for scale; scored on the same held-out lines, not used downstream
    pretrained = load_textgenrnn()
    bpc["textgenrnn (pretrained)"] = _bpc(pretrained, heldout_bpc)
    params["textgenrnn (pretrained)"] = int(
        sum(x.size for x in jax.tree.leaves(eqx.filter(pretrained.net, eqx.is_array)))
    )
    ctx.log(f"bits/char: {bpc}")

    ctx.log("stage 2/5: generate -> discriminate -> select")
    names = list(models)
    ngram_name = f"ngram{cfg.ngram_order}"
    # an n-gram model looks back a few characters only, so it cannot see the statement from
    # the filter prompt's last words: the discriminator and the held-out scorer are transformers
    tr = [n for n in names if n.startswith("transformer")] or [ngram_name]
    gen_name = tr[-1]
    disc_name = tr[-2] if len(tr) >= 2 else tr[-1]
    scorer_name = tr[-3] if len(tr) >= 3 else ngram_name
    preset = PersonaPreset(
        samples_per_label=cfg.samples_per_label,
        keep_per_label=cfg.keep_per_label,
        max_tokens=cfg.max_tokens,
    )
    cands = []
    for label in ("agree", "disagree"):
        raw = generate_statements(
            models[gen_name], cfg.description, label, preset.samples_per_label, preset, ctx.seed
        )
        cands += [(s, label) for s in map(parse_statement, raw) if s is not None]
    statements = [s for s, _ in cands]
    p_agree = _calibrated(_p_agree_logodds(models[disc_name], cfg.description, statements))
    kept = select(
        [Scored(s, lab, float(p)) for (s, lab), p in zip(cands, p_agree, strict=True)],
        cfg.keep_per_label,
    )
    rows = persona_rows(kept)
    gen_path = ctx.out_dir / "generated_persona.jsonl"
    gen_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, errors = read_jsonl(gen_path, "persona")
    counts = {
        lab: sum(r["answer_matching_behavior"] == a for r in rows)
        for lab, a in (("yes", " Yes"), ("no", " No"))
    }
    schema_exact = not errors and all(
        list(r)
        == [
            "question",
            "statement",
            "label_confidence",
            "answer_matching_behavior",
            "answer_not_matching_behavior",
        ]
        for r in loaded
    )

    ctx.log("stage 3/5: held-out scorer")
    if kept:
        held = _calibrated(_p_agree_logodds(models[scorer_name], cfg.description, statements))
        index = {s: i for i, s in enumerate(statements)}
        agree = np.array([(held[index[c.statement]] > 0.5) == (c.label == "agree") for c in kept])
        agreement = float(agree.mean())
        margin = 2.0 * math.sqrt(0.25 / len(agree))
    else:
        agreement, margin = None, None

    ctx.log("stage 4/5: few-shot advanced-AI-risk generation")
    fs = _few_shot(cfg, ctx, models[disc_name])

    ctx.log("stage 5/5: evaluate every model")
    root = cfg.data_root or os.environ.get(DATA_ENV, "")
    released = []
    if root and os.path.isdir(os.path.join(root, "persona")):
        released = [f"persona/{n}" for n in CORPUS_HELD_OUT_PERSONAS]
    tasks = {}
    if loaded:
        tasks["generated"] = task_from_jsonl(gen_path, "persona", "generated")
    if fs["rows"]:
        tasks["generated few-shot"] = task_from_jsonl(
            fs["path"], "advanced-ai-risk", "generated few-shot"
        )
    for t in released:
        tasks[t] = load_task(t, root)
    rates = {}
    for mname, lm in models.items():
        rates[mname] = {}
        for tname, task in tasks.items():
            r = evaluate(lm, task, key=jax.random.fold_in(key, 7), limit=cfg.eval_limit)
            rates[mname][tname] = {
                "rate": r.matching_rate,
                "ci": [r.ci_lower, r.ci_upper],
                "ceiling": r.ceiling,
            }
    _plot(ctx, params, rates)

    released_rates = [rates[m][t]["rate"] for m in rates for t in released]
    max_dev = max((abs(x - 0.5) for x in released_rates), default=None)
    best_tr = min((bpc[n] for n in tr if n.startswith("transformer")), default=None)
    claims = [
        Claim(
            "held-out bits/char: transformer < n-gram < unigram",
            scale="quick",
            paper="issue target (no paper number); textgenrnn reference 0.82-1.52 bits/char",
            ours=(
                f"best transformer {best_tr:.3f}, {ngram_name} {bpc[ngram_name]:.3f}, "
                f"unigram {bpc['unigram']:.3f}; pretrained textgenrnn port "
                f"{bpc['textgenrnn (pretrained)']:.3f}. Longer training does not close the "
                "gap without regularisation: a one-off 4-layer, width-128 run (820k parameters, "
                "batch 32 x 128, AdamW 3e-3 cosine over 6,000 steps, weight decay 0.1) was at "
                "1.839 / 1.709 / 1.650 / 1.631 held-out at 1,000 / 1,500 / 2,000 / 2,500 steps, "
                "then overfit (3,000: train 1.147, held-out 1.674)"
                if best_tr is not None
                else f"ngram {bpc[ngram_name]:.3f}, unigram {bpc['unigram']:.3f}"
            ),
            holds=(best_tr < bpc[ngram_name] < bpc["unigram"]) if best_tr is not None else None,
            reason="" if best_tr is not None else "this scale trains no transformer",
        ),
        Claim(
            "generated eval is label-balanced, <= 500 per label, exactly the anthropics/evals "
            "persona schema",
            scale="smoke",
            paper="released persona files: exactly balanced, <= 1,000 rows (<= 500 per label)",
            ours=f"{counts['yes']} Yes / {counts['no']} No, schema exact: {schema_exact}",
            holds=bool(
                counts["yes"] == counts["no"] > 0
                and counts["yes"] <= cfg.keep_per_label <= 500
                and schema_exact
            ),
        ),
        Claim(
            "labels agree with a held-out scorer model above chance by > 2 standard errors",
            scale="quick",
            paper="humans agree with 95.5% of persona labels (>= 2 of 3 workers)",
            ours=None
            if agreement is None
            else f"{agreement:.3f} vs chance 0.5 (2 SE = {margin:.3f}; scorer {scorer_name})",
            holds=None if agreement is None else bool(agreement > 0.5 + margin),
            reason="" if agreement is not None else "no statement was kept",
        ),
        Claim(
            "few-shot (§5) run end to end: label-balanced (A)/(B) file in exactly the "
            "advanced-ai-risk schema; no kept question copies a gold or generator-training one",
            scale="smoke",
            paper="released lm_generated_evals: up to 1,000 questions per behaviour, 500 per "
            "matching answer",
            ours=(
                f"{fs['counts'][' (A)']} (A) / {fs['counts'][' (B)']} (B) kept of "
                f"{fs['parsed']} parsed / {2 * cfg.few_shot_candidates} sampled; schema exact: "
                f"{fs['schema_exact']}; copies: {fs['copies']}"
            ),
            holds=bool(
                fs["counts"][" (A)"] == fs["counts"][" (B)"] > 0
                and fs["schema_exact"]
                and fs["copies"] == 0
            ),
        ),
        Claim(
            "tiny models show no persona behaviour on released files: matching rate within "
            "0.5 +/- 0.1",
            scale="quick",
            paper="52B RLHF models: e.g. > 90% sycophancy, strong stated views (Perez et al. §3-4)",
            ours=None if max_dev is None else f"max |rate - 0.5| = {max_dev:.3f}",
            holds=None if max_dev is None else bool(max_dev <= 0.1),
            reason="" if released else f"no released data ({DATA_ENV} unset)",
        ),
        Claim(
            "the paper's 154 datasets: workers agree with 95.5-95.7% of labels, relevance 4.4/5, "
            "Fleiss kappa 0.875 (cited, not reproduced)",
            scale="paper",
            paper="95.5% / 4.4 / 0.875",
            ours=None,
            holds=None,
            reason="needs crowdworkers and 52B models; cited only",
        ),
    ]
    metrics = {
        "bits_per_char": bpc,
        "params": params,
        "generator": gen_name,
        "discriminator": disc_name,
        "heldout_scorer": scorer_name,
        "candidates": len(cands),
        "kept": counts,
        "few_shot": {k: v for k, v in fs.items() if k not in ("rows", "path")},
        "heldout_agreement": agreement,
        "matching": rates,
        "example_statements": [r["statement"] for r in rows[:3] + rows[-3:]],
    }
    report = (
        f"Generator {gen_name}, discriminator {disc_name} (calibrated), held-out scorer "
        f"{scorer_name}. {len(cands)} parsed candidates for '{cfg.description}', "
        f"{counts['yes'] + counts['no']} kept. Example kept statements: "
        + "; ".join(f"`{s}`" for s in metrics["example_statements"])
        + f". Few-shot ({cfg.few_shot_behavior}): {len(fs['rows'])} questions kept, e.g. "
        + "; ".join(f"`{q}`" for q in fs["examples"])
    )
    return Result(metrics=metrics, claims=claims, report=report)


def _few_shot(cfg, ctx, discriminator) -> dict:
    """Stage 4: the few-shot pipeline with an n-gram generator fitted on the other behaviours'
    gold questions; returns the rows, counts and checks for the claim."""
    target = cfg.few_shot_behavior
    others = [b for b in few_shot_behaviours() if b != target]

    def quoted(e):
        q = e["question"].replace("\n", "\n> ")
        return f"> {q}\n\nAnswer: {e['answer_matching_behavior'].strip()}"

    docs, training = [], set()
    for b in others:
        for gold in (few_shot_examples(b), [flip_choices(e) for e in few_shot_examples(b)]):
            docs.append("\n\n".join(quoted(e) for e in gold))
            training |= {e["question"].strip() for e in gold}
    gold = few_shot_examples(target)
    tok = CharTokenizer.from_text("".join(docs) + "".join(e["question"] for e in gold))
    generator = NGramLM.fit(docs, order=cfg.few_shot_order, tokenizer=tok)
    preset = FewShotPreset(candidates=cfg.few_shot_candidates, keep=cfg.keep_per_label)
    path = ctx.out_dir / "generated_few_shot.jsonl"
    # a fresh run: the experiment runner owns resumption, the pipeline's stage cache would
    # otherwise serve a previous run's samples
    shutil.rmtree(path.parent / (path.name + ".work"), ignore_errors=True)
    rows = run_few_shot_pipeline(
        generator, discriminator, cfg.few_shot_description, gold, path, preset, ctx.seed, ctx.log
    )
    loaded, errors = read_jsonl(path, "advanced-ai-risk")
    scores = json.loads((path.parent / (path.name + ".work") / "scores.json").read_text())
    fields = ["question", "answer_matching_behavior", "answer_not_matching_behavior"]
    return {
        "path": path,
        "rows": rows,
        "behavior": target,
        "generator": f"ngram{cfg.few_shot_order} on {len(others)} other behaviours",
        "parsed": len(scores),
        "counts": {
            a: sum(r["answer_matching_behavior"] == a for r in rows) for a in (" (A)", " (B)")
        },
        "schema_exact": not errors and loaded == rows and all(list(r) == fields for r in loaded),
        "copies": sum(r["question"].strip() in training for r in rows),
        "examples": [r["question"].split("\n")[0][:120] for r in rows[:1] + rows[-1:]],
    }


def _plot(ctx, params, rates):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted(rates, key=lambda n: params[n])
    tasks = sorted({t for m in rates.values() for t in m})
    for t in tasks:
        ax.plot(
            [params[n] for n in names],
            [rates[n][t]["rate"] for n in names],
            marker="o",
            label=t.removeprefix("persona/"),
        )
    ax.axhline(0.5, color="gray", ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (n-grams: stored counts)")
    ax.set_ylabel("matching-behaviour rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    ctx.save_figure(fig, "scaling.png")


def paper_probe(cfg: Config) -> Config:
    """The paper config's model shapes and preset with one training step and a few samples."""
    return dataclasses.replace(
        cfg,
        train_steps=1,
        samples_per_label=4,
        eval_limit=4,
        bpc_chars=500,
        widths=cfg.widths[:1],
        few_shot_candidates=4,
    )


EXPERIMENT = Experiment(
    name="model_written_evals",
    title="Discovering LM behaviours with model-written evaluations (Perez et al. 2022)",
    config=Config,
    scales=SCALES,
    run=run,
    paper_probe=paper_probe,
)
