"""Humans vs language models at next-token prediction (Shlegeris et al. 2022, arXiv 2212.11281)
with simulated players, offline on a CPU.

1. Text and models: the shipped persona statements (CC-BY-4.0) tokenized with the GPT-2 BPE
   (the committed whisper ranks file); held-out statements are the game's documents. The "LMs of
   several sizes" are token n-gram models (orders 1-3, Witten-Bell) fitted on the training split;
   the trigram plays the paper's reference/generator (GPT-2 small there).
2. Top-1 game: simulated "human-like" players (the trigram's beliefs plus Gaussian noise on the
   logits, each player with their own noise level; choice, not from the paper) play the real
   `TopOneGame` through its log; the log is read back, the paper's filters are applied and
   per-player accuracy (> 50 guesses) is compared with every model's greedy top-1 on a random
   sample (seed 0) of the same (document, position) pairs.
3. Perplexity game: the same players play `PairGame` (10 training + scored comparisons against
   one of `num_samples` generator samples, answers rounded to the 11 buttons); the log is read
   back and the importance-sampling estimator gives their pooled loss relative to the reference,
   with the bootstrap over half the players. The LM players go through the same estimator on
   `prompts` prompts with exact and rounded ratios; the bias curve against samples per prompt is
   the paper's control.
4. A scripted fixture log replayed through the loader gives hand-computed accuracies exactly.

`models beat the simulated players` holds by construction (the players are noisy copies of the
trigram) and is not claimed; the paper's human-vs-model figures are cited beside ours.
"""

import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments._api import Claim, Context, Experiment, Result
from respax.evals import (
    GPT2Vocab,
    NGramLM,
    PairGame,
    TopOneGame,
    accuracy_per_player,
    estimator_bias_curve,
    exact_ratio,
    half_player_bootstrap,
    load_corpus,
    load_pair_log,
    load_top1_log,
    loss_gap,
    loss_gap_per_prompt,
    make_pair_questions,
    round_to_buttons,
    sample_tokens,
    target_filter,
)


@dataclasses.dataclass(frozen=True)
class Config:
    orders: tuple[int, ...] = (1, 2, 3)  # n-gram "sizes"; the last is the reference/generator
    train_chars: int = 0  # 0: the whole training split
    prompts: int = 1000  # prompts for the LM players' estimator check
    num_samples: int = 400  # generator samples per prompt
    batch: int = 50  # prompts per model evaluation batch
    players: int = 20  # simulated human-like players
    noise: tuple[float, float] = (1.0, 3.0)  # their logit-noise range
    guesses: int = 80  # top-1 guesses per player
    pair_questions: int = 40  # scored comparisons (the paper's first set: 40)
    n_training: int = 10
    model_pairs: int = 1000  # (doc, position) pairs the models are scored on
    bias_sizes: tuple[int, ...] = (1, 2, 5, 10, 25, 50, 100, 200, 400)
    bootstrap_draws: int = 100
    real_top1_log: str = ""  # a TopOneGame log over the same documents (optional)
    real_pair_log: str = ""  # a PairGame log over the same question set (optional)
    # a copy of the paper's released data (results_raw/, docs/, multi_comparisons/; optional)
    released_data: str = ""


SCALES = {
    "smoke": Config(
        orders=(1, 2),
        train_chars=20000,
        prompts=20,
        num_samples=20,
        batch=20,
        players=2,
        guesses=51,
        pair_questions=4,
        n_training=2,
        model_pairs=100,
        bias_sizes=(1, 20),
        bootstrap_draws=10,
    ),
    "quick": Config(),
    "paper": Config(players=60, guesses=300, pair_questions=80, prompts=1000),
}


def _logprobs(lm, prefixes):
    """`[B, V]` next-token log-probabilities after each prefix (from an end-of-text start)."""
    width = max(len(p) for p in prefixes) + 1
    x = np.zeros((len(prefixes), width), np.int32)
    for i, p in enumerate(prefixes):
        x[i, : len(p) + 1] = [lm.tokenizer.eot_id, *p]
    return lm.next_logits(x, np.array([len(p) + 1 for p in prefixes]))


def _accuracy(player, correct, num_players):
    """`accuracy_per_player` on arrays padded to a multiple of 1,024 guesses (padding goes to
    an extra, dropped player), so that calls of different lengths share one compilation."""
    n = len(player)
    size = -(-max(n, 1) // 1024) * 1024
    p = np.full(size, num_players, np.int32)
    c = np.zeros(size, bool)
    p[:n], c[:n] = player, correct
    acc, count, kept = accuracy_per_player(p, c, num_players + 1)
    return acc[:num_players], count[:num_players], kept[:num_players]


def _believe(base_logprobs, sigma, rng):
    """A simulated player's next-token log-beliefs: the base model's logits plus noise."""
    z = base_logprobs + sigma * rng.standard_normal(base_logprobs.shape)
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def _sample_padded(sampler, cfg, lp, key):
    """`sampler` on `lp` padded to `cfg.batch` rows (one compiled shape)."""
    pad = np.concatenate([lp, np.repeat(lp[-1:], cfg.batch - len(lp), 0)])
    return np.asarray(sampler(jnp.asarray(pad), key))[: len(lp)]


def _jackknife_sizes(cfg) -> tuple[int, ...]:
    return tuple(m for m in cfg.bias_sizes if m >= 2)


def _lm_players(cfg, models, docs, positions, key, log, sampler):
    """Every LM player's exact and rounded-ratio estimate on `positions`, in fixed-size batches
    (one compilation of the sampler and one of the estimates)."""
    names = list(models)
    ref = names[-1]
    acc = {n: {"true": [], "s": []} for n in names}
    for start in range(0, len(positions), cfg.batch):
        chunk = positions[start : start + cfg.batch]
        n_real = len(chunk)
        chunk = chunk + [chunk[-1]] * (cfg.batch - n_real)  # pad to one shape
        prefixes = [docs[d][:p] for d, p in chunk]
        truth = np.array([docs[d][p] for d, p in chunk])
        lps = {n: _logprobs(models[n], prefixes) for n in names}
        s = np.asarray(sampler(jnp.asarray(lps[ref]), jax.random.fold_in(key, start)))
        for n in names:
            acc[n]["true"].append(np.take_along_axis(lps[n], truth[:, None], -1)[:n_real, 0])
            acc[n]["s"].append(np.take_along_axis(lps[n], s, -1)[:n_real])
        log(f"LM players: {start + n_real}/{len(positions)} prompts")
    arr = {n: {k: np.concatenate(v) for k, v in d.items()} for n, d in acc.items()}
    lq_true, lg_s = arr[ref]["true"], arr[ref]["s"]

    @jax.jit
    def estimates(lh_true, lh_s):
        true_gap = jnp.mean(lq_true - lh_true)
        # float32 saturates r at 1 when h(t_i) << h(t*); the clip keeps one-sample terms finite
        r = jnp.clip(exact_ratio(lh_true[:, None], lh_s), 1e-7, 1.0 - 1e-7)
        rr = round_to_buttons(r)
        # the log of a mean of n weights is biased by about -Var(w) / (2 n mean(w)^2) (delta
        # method, from the same samples): the estimator's own floor for this player
        w = jnp.exp(lq_true[:, None] + jnp.log(1.0 / r - 1.0) - lg_s)
        delta = -jnp.mean(jnp.var(w, axis=1) / (2 * w.shape[1] * jnp.mean(w, axis=1) ** 2))
        return {
            "delta_method_bias": delta,
            "true_loss": -lh_true.mean(),
            "true_gap": true_gap,
            "est_gap_exact": loss_gap(r, lg_s, lq_true),
            "est_gap_rounded": loss_gap(rr, lg_s, lq_true),
            "bias_exact": estimator_bias_curve(r, lg_s, lq_true, true_gap, cfg.bias_sizes),
            "bias_rounded": estimator_bias_curve(rr, lg_s, lq_true, true_gap, cfg.bias_sizes),
            # ours, not the paper's: the jackknife of the log of the mean (its first-order bias
            # removed); the curve starts at 2 samples, the fewest it needs
            "est_gap_jackknife": loss_gap(r, lg_s, lq_true, bias_correction="jackknife"),
            "bias_jackknife": estimator_bias_curve(
                r, lg_s, lq_true, true_gap, _jackknife_sizes(cfg), bias_correction="jackknife"
            ),
        }

    out = {}
    for n in names:
        est = estimates(arr[n]["true"], arr[n]["s"])
        out[n] = {k: np.asarray(v).tolist() for k, v in est.items()}
    return out, float(-lq_true.mean())


def _replay_fixture(vocab, path):
    """Scripted players with known hit rates play the top-1 game on an ASCII fixture document
    (every token typeable, the wrong guess never a target); accuracies are then known by hand."""
    docs = {"fixture": vocab.tokenizer.encode(" ".join(f"w{i} is {i % 7}." for i in range(80)))}
    wrong = " the"
    assert vocab.token_id(wrong) not in docs["fixture"]
    plan = {"fixture-a": (60, 3), "fixture-b": (51, 17), "fixture-c": (20, 2)}
    for name, (n, k) in plan.items():
        game = TopOneGame(docs, vocab, path, name, seed=11)
        for i in range(n):
            p = game.current()
            game.guess(vocab.token_text(docs[p.doc_id][p.position]) if i % k == 0 else wrong)
    table = load_top1_log(path, docs, vocab)
    acc, _, kept = _accuracy(table.player, table.correct, len(table.players))
    ours = {p: float(acc[i]) for i, p in enumerate(table.players)}
    hand = {p: math.ceil(n / k) / n for p, (n, k) in plan.items()}  # every k-th guess right
    exact = all(
        np.float32(ours[p]) == np.float32(math.ceil(n / k)) / np.float32(n)
        for p, (n, k) in plan.items()
    )
    return ours, hand, exact, {p: bool(kept[i]) for i, p in enumerate(table.players)}


def run(cfg: Config, ctx: Context) -> Result:
    vocab = GPT2Vocab()
    train = load_corpus("train")
    if cfg.train_chars:
        train = train[: cfg.train_chars]
    docs = {
        str(i): vocab.tokenizer.encode(line)
        for i, line in enumerate(load_corpus("heldout").splitlines())
        if line.strip()
    }
    docs = {k: v for k, v in docs.items() if len(v) >= 4}
    ctx.log(f"stage 1/4: n-gram models {cfg.orders} on {len(train)} chars; {len(docs)} docs")
    models = {
        f"{o}-gram": NGramLM.fit(train.splitlines(), order=o, tokenizer=vocab.tokenizer)
        for o in cfg.orders
    }
    names = list(models)
    ref = names[-1]
    rng = np.random.default_rng(ctx.seed)
    all_pos = [(d, p) for d, t in docs.items() for p in range(1, len(t))]
    pick = rng.choice(len(all_pos), size=min(cfg.prompts, len(all_pos)), replace=False)
    positions = [all_pos[i] for i in pick]

    ctx.log("stage 2/4: LM players through the estimator")
    sampler = jax.jit(lambda lp, k: sample_tokens(lp, cfg.num_samples, key=k))
    lm, ref_loss = _lm_players(cfg, models, docs, positions, ctx.key, ctx.log, sampler)

    ctx.log("stage 3/4: simulated players play both games")
    sigmas = np.linspace(*cfg.noise, cfg.players)
    players = [f"sim{j:02d}" for j in range(cfg.players)]
    top1_log = ctx.out_dir / "top1_log.jsonl"
    pair_log = ctx.out_dir / "pair_log.jsonl"
    for f in (top1_log, pair_log, ctx.out_dir / "fixture.jsonl"):
        f.unlink(missing_ok=True)
    for j, name in enumerate(players):
        game = TopOneGame(docs, vocab, top1_log, name, seed=ctx.seed)
        prng = np.random.default_rng([ctx.seed, j])
        for _ in range(cfg.guesses):
            p = game.current()
            belief = _believe(_logprobs(models[ref], [list(p.prefix_ids)])[0], sigmas[j], prng)
            for t in np.argsort(-belief)[:20]:
                if vocab.is_token(vocab.token_text(int(t))):
                    break
            game.guess(vocab.token_text(int(t)))
    table = load_top1_log(top1_log, docs, vocab)
    keep1 = target_filter(table.target_text)
    keepw = target_filter(table.target_text, table.next_text, word=True)
    top1 = {}
    for fname, keep in (("first", keep1), ("word", keepw)):
        acc, n, kept = _accuracy(table.player[keep], table.correct[keep], len(table.players))
        rows = np.flatnonzero(keep)
        sample = np.random.default_rng(0).choice(
            rows, size=min(cfg.model_pairs, len(rows)), replace=False
        )
        model_acc = {}
        for m, lmod in models.items():
            pred = []
            for s in range(0, len(sample), cfg.batch):
                idx = sample[s : s + cfg.batch]
                prefixes = [docs[table.doc_id[i]][: table.position[i]] for i in idx]
                pred.append(np.argmax(_logprobs(lmod, prefixes), -1))
            model_acc[m] = float(np.mean(np.concatenate(pred) == table.target_id[sample]))
        top1[fname] = {
            "players": np.asarray(acc)[np.asarray(kept)].tolist(),
            "guesses_kept": int(keep.sum()),
            "models": model_acc,
        }

    # perplexity game: prompts not used above, the reference model generates the candidates
    qpos = [all_pos[i] for i in rng.choice(len(all_pos), cfg.pair_questions + cfg.n_training)]
    q_lp = _logprobs(models[ref], [docs[d][:p] for d, p in qpos])
    q_s = np.concatenate(
        [
            _sample_padded(sampler, cfg, q_lp[i : i + cfg.batch], jax.random.fold_in(ctx.key, i))
            for i in range(0, len(q_lp), cfg.batch)
        ]
    )
    questions = make_pair_questions(qpos, docs, q_lp, q_s)
    true_h_loss = []
    for j, name in enumerate(players):
        game = PairGame(questions, vocab, pair_log, name, n_training=cfg.n_training)
        prng = np.random.default_rng([ctx.seed, j, 7])
        belief = _believe(q_lp, sigmas[j], prng)
        si = game.sample_index
        rows = np.arange(len(questions))
        t_true = np.array([q.true_id for q in questions])
        t_other = np.array([q.sampled_ids[si] for q in questions])
        # the player's exact ratio, rounded to the buttons as a person must
        r_all = np.round(
            np.asarray(round_to_buttons(exact_ratio(belief[rows, t_true], belief[rows, t_other]))),
            2,
        )
        while not game.done:
            q, r = questions[game.index], float(r_all[game.index])
            a_true = game.current().a_text == vocab.token_text(q.true_id)
            game.answer(r if a_true else round(1.0 - r, 2))
        true_h_loss.append(-np.mean([belief[i][q.true_id] for i, q in enumerate(questions)]))
    scored = questions[cfg.n_training :]
    ptab = load_pair_log(pair_log, scored)
    lq = jnp.asarray([q.gen_logprob_true for q in scored])

    def pooled(mask_players):
        m = jnp.asarray(ptab.mask) & mask_players[None, :]
        return loss_gap(jnp.asarray(np.nan_to_num(ptab.r, nan=0.5)), ptab.log_gen_sampled, lq, m)

    boot = jax.jit(
        lambda k: half_player_bootstrap(
            pooled, len(ptab.players), key=k, num_draws=cfg.bootstrap_draws
        )
    )
    ci = boot(jax.random.fold_in(ctx.key, 5))
    ref_loss_scored = float(-lq.mean())
    human = {
        "players_complete": len(ptab.players),
        "gap": float(ci.estimate),
        "gap_ci": [float(ci.lower), float(ci.upper)],
        "loss": float(ci.estimate) + ref_loss,
        "perplexity": math.exp(float(ci.estimate) + ref_loss),
        "perplexity_ci": [
            math.exp(float(ci.lower) + ref_loss),
            math.exp(float(ci.upper) + ref_loss),
        ],
        "mean_true_loss_of_players": float(np.mean(true_h_loss)),
        "ref_loss_on_scored": ref_loss_scored,
        "per_prompt_answers": int(np.asarray(ptab.mask).sum()),
    }

    ctx.log("stage 4/4: fixture log replay, real logs, plots")
    fx_ours, fx_hand, fx_exact, fx_kept = _replay_fixture(vocab, ctx.out_dir / "fixture.jsonl")
    real = _real_logs(cfg, vocab, docs, questions)
    if cfg.released_data:
        real["released"] = released_summary(pathlib.Path(cfg.released_data), vocab)
    _plots(ctx, cfg, lm, top1, human, ref_loss)

    errs = {n: d["est_gap_exact"] - d["true_gap"] for n, d in lm.items()}
    jack = {n: d["est_gap_jackknife"] - d["true_gap"] for n, d in lm.items()}
    rounded = {n: d["est_gap_rounded"] - d["true_gap"] for n, d in lm.items()}
    n_ok = len(positions) >= 1000 and cfg.num_samples >= 400
    claims = [
        Claim(
            "the estimator recovers every simulated LM player's true loss within 0.02 nats (exact "
            f"ratios, {cfg.num_samples} generator samples per prompt, {len(positions)} prompts)",
            scale="quick",
            paper="issue target: within 0.02 nats on >= 1,000 prompts with 400 samples per prompt",
            ours=", ".join(
                f"{n} {e:+.4f} (delta-method floor {lm[n]['delta_method_bias']:+.4f})"
                for n, e in errs.items()
            ),
            holds=bool(all(abs(e) < 0.02 for e in errs.values())) if n_ok else None,
            reason="a player far from the generator (the unigram vs the trigram generator) has "
            "heavy-tailed importance weights, and the log of their mean is biased low: its bias "
            "curve is still shrinking at the most samples ("
            + ", ".join(
                f"{n} {m}: {b:+.3f}"
                for n, d in lm.items()
                if abs(d["bias_exact"][-1]) >= 0.02
                for m, b in list(zip(cfg.bias_sizes, d["bias_exact"]))[-3:]
            )
            + "), so the 0.02 target sits below the estimator's floor at this sample count"
            if n_ok
            else "this scale has fewer than 1,000 prompts x 400 samples",
        ),
        Claim(
            "ours, beside the paper's estimator: its jackknife (bias_correction='jackknife') "
            "recovers every simulated LM player's true loss within 0.02 nats (exact ratios, "
            f"{cfg.num_samples} samples per prompt, {len(positions)} prompts)",
            scale="quick",
            paper="not in the paper (it reports the plain log-of-mean estimator and its bias)",
            ours=", ".join(
                f"{n} {e:+.4f} (paper's estimator {errs[n]:+.4f})" for n, e in jack.items()
            ),
            holds=bool(all(abs(e) < 0.02 for e in jack.values())) if n_ok else None,
            reason="" if n_ok else "this scale has fewer than 1,000 prompts x 400 samples",
        ),
        Claim(
            "with exact ratios the bias shrinks with samples per prompt (|bias at the most "
            "samples| < |bias at 1|), or stays below 0.005 nats (the generator as its own player)",
            scale="smoke",
            paper="the paper measures bias for n = 1..400 (figure not read)",
            ours=", ".join(
                f"{n} {d['bias_exact'][0]:+.3f} -> {d['bias_exact'][-1]:+.4f}"
                for n, d in lm.items()
            ),
            holds=bool(
                all(
                    abs(d["bias_exact"][-1]) < abs(d["bias_exact"][0])
                    or max(map(abs, d["bias_exact"])) < 0.005
                    for d in lm.values()
                )
            ),
        ),
        Claim(
            "ratios rounded to the buttons bias the estimate (reported, no target)",
            scale="quick",
            paper="the paper rounds model ratios to 0.1 (clamped 0.01-0.99) to mimic the buttons",
            ours=", ".join(f"{n} {e:+.3f}" for n, e in rounded.items()),
            holds=None,
            reason="a measurement to report, not a claim with a threshold",
        ),
        Claim(
            "a replayed fixture log gives the hand-computed per-player accuracies exactly",
            scale="smoke",
            paper="issue target: exact",
            ours=f"ours {fx_ours}, hand {fx_hand}, players with > 50 guesses {fx_kept}",
            holds=bool(
                fx_exact and fx_kept == {"fixture-a": True, "fixture-b": True, "fixture-c": False}
            ),
        ),
        Claim(
            "top-1 accuracy, humans vs models (cited; simulated players are not humans)",
            scale="paper",
            paper="humans ~29% [secondary]; on the human-played tokens (first filter) GPT-Neo-125M "
            ".380, GPT-Neo-1.3B .430, GPT-J-6B .461, davinci .560",
            ours=f"simulated players median {_median(top1['first']['players']):.3f}; "
            + ", ".join(f"{m} {a:.3f}" for m, a in top1["first"]["models"].items()),
            holds=None,
            reason="'models beat simulated players' holds by construction; not a claim",
        ),
        Claim(
            "perplexity, humans vs models (cited)",
            scale="paper",
            paper="human perplexity is worse than every model tested, the 2-layer one included",
            ours=f"simulated players {human['perplexity']:.1f} "
            f"[{human['perplexity_ci'][0]:.1f}, {human['perplexity_ci'][1]:.1f}]; "
            + ", ".join(f"{n} {math.exp(d['true_loss']):.1f}" for n, d in lm.items()),
            holds=None,
            reason="needs human players; simulated ones are noisy copies of the reference",
        ),
    ]
    metrics = {
        "lm_players": lm,
        "ref_loss": ref_loss,
        "top1": top1,
        "humans_pair": human,
        "fixture": {"ours": fx_ours, "hand": fx_hand},
        "real_logs": real,
        "bias_sizes": list(cfg.bias_sizes),
        "jackknife_sizes": list(_jackknife_sizes(cfg)),
    }
    report = (
        f"{len(docs)} held-out documents; reference/generator {ref}; {len(players)} simulated "
        f"players (logit noise {cfg.noise[0]}-{cfg.noise[1]}), {cfg.guesses} top-1 guesses and "
        f"{cfg.pair_questions} scored comparisons each. Pooled simulated-player loss "
        f"{human['loss']:.3f} (true mean over players {human['mean_true_loss_of_players']:.3f} on "
        "the question prompts; the pooled estimator is not their mean loss: it is the log of a "
        "mean over players of inverse probabilities)."
    )
    return Result(metrics=metrics, claims=claims, report=report)


def _median(x):
    return float(np.median(x)) if len(x) else float("nan")


def _real_logs(cfg, vocab, docs, questions):
    out = {}
    if cfg.real_top1_log:
        t = load_top1_log(pathlib.Path(cfg.real_top1_log), docs, vocab)
        keep = target_filter(t.target_text)
        acc, n, kept = _accuracy(t.player[keep], t.correct[keep], len(t.players))
        out["top1"] = {p: float(acc[i]) for i, p in enumerate(t.players) if bool(kept[i])} | {
            "_mismatched_targets": t.mismatched,
            "_problems": list(t.problems),
        }
    if cfg.real_pair_log:
        tab = load_pair_log(pathlib.Path(cfg.real_pair_log), questions[cfg.n_training :])
        lq = jnp.asarray([q.gen_logprob_true for q in questions[cfg.n_training :]])
        gap = loss_gap_per_prompt(np.nan_to_num(tab.r, nan=0.5), tab.log_gen_sampled, lq, tab.mask)
        out["pair"] = {"players": list(tab.players), "gap": float(jnp.nanmean(gap))}
    return out


def released_summary(root: pathlib.Path, vocab) -> dict:
    """The paper's released answers through our loaders and estimator: per-player top-1
    accuracy (first filter, players with > 50 guesses) and the human loss gap and perplexity
    against the 12-layer reference (its mean true loss over questions 10000-10999 where their
    files are there, as the analysis, else over the played questions)."""
    from respax.evals import load_released_pair, load_released_top1

    out: dict = {}
    acc_file, docs = root / "results_raw" / "res_accuracy_anonym.json", root / "docs"
    if acc_file.exists() and docs.is_dir():
        t = load_released_top1(acc_file, docs, vocab)
        keep = target_filter(t.target_text)
        acc, n, kept = _accuracy(t.player[keep], t.correct[keep], len(t.players))
        acc, kept = np.asarray(acc), np.asarray(kept)
        out["top1"] = {
            "rows": int(keep.sum()),
            "players_counted": int(kept.sum()),
            "accuracy_median": _median(acc[kept]),
            "accuracy_pooled": float(t.correct[keep].mean()) if keep.any() else float("nan"),
            "problems": len(t.problems),
        }
    loss_file, comps = root / "results_raw" / "res_loss_anonym.json", root / "multi_comparisons"
    if loss_file.exists() and comps.is_dir():
        d = load_released_pair(loss_file, comps)
        tab = d.table
        gap = float(jnp.nanmean(loss_gap_per_prompt(np.nan_to_num(tab.r, nan=0.5),
                                                    tab.log_gen_sampled, d.log_ref_true,
                                                    tab.mask)))  # fmt: skip
        more = [comps / f"doc{q}.json" for q in range(10_000, 11_000)]
        if all(f.exists() for f in more):
            import json

            ref = -float(np.mean([json.loads(f.read_text())["correct_logprobs"][1] for f in more]))
        else:
            ref = -float(np.mean(d.log_ref_true))
        out["pair"] = {
            "players": len(tab.players),
            "dropped_players": len(tab.dropped_players),
            "human_loss_gap": gap,
            "reference_loss": ref,
            "human_perplexity": math.exp(gap + ref),
            "model_loss": {
                m: -float(np.mean(d.correct_logprobs[:, i]))
                for i, m in enumerate(
                    ("2 layers", "12 layers", "24 layers")[: d.correct_logprobs.shape[1]]
                )
            },  # fmt: skip
        }
    if not out:
        raise ValueError(
            f"released_data {str(root)!r} has neither results_raw/res_accuracy_anonym.json with "
            "docs/ nor results_raw/res_loss_anonym.json with multi_comparisons/"
        )
    return out


def _plots(ctx, cfg, lm, top1, human, ref_loss):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=80)
    ax = axes[0]
    ax.hist(top1["first"]["players"], bins=10, color="tab:gray", label="simulated players")
    for m, a in top1["first"]["models"].items():
        ax.axvline(a, ls="--", label=m, color=f"C{list(top1['first']['models']).index(m)}")
    ax.set_xlabel("top-1 accuracy (first filter)")
    ax.set_ylabel("players")
    ax.legend(fontsize=7)
    ax = axes[1]
    labels = [*lm, "sim. players"]
    true_ppl = [math.exp(d["true_loss"]) for d in lm.values()]
    est = [math.exp(d["est_gap_exact"] + ref_loss) for d in lm.values()]
    rnd = [math.exp(d["est_gap_rounded"] + ref_loss) for d in lm.values()]
    x = np.arange(len(labels))
    ax.bar(x[:-1] - 0.25, true_ppl, 0.25, label="true")
    ax.bar(x[:-1], est, 0.25, label="estimated, exact ratios")
    ax.bar(x[:-1] + 0.25, rnd, 0.25, label="estimated, rounded ratios")
    lo, hi = human["perplexity_ci"]
    ax.bar(x[-1], human["perplexity"], 0.4, color="tab:gray", label="estimated (game log)")
    ax.plot([x[-1], x[-1]], [lo, hi], color="k", lw=2)  # half-player bootstrap 5-95%

    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("perplexity")
    ax.legend(fontsize=7)
    ax = axes[2]
    for i, (n, d) in enumerate(lm.items()):
        ax.plot(cfg.bias_sizes, d["bias_exact"], marker="o", color=f"C{i}", label=f"{n} exact")
        ax.plot(
            cfg.bias_sizes,
            d["bias_rounded"],
            marker="x",
            ls=":",
            color=f"C{i}",
            label=f"{n} rounded",
        )
        if _jackknife_sizes(cfg):
            ax.plot(
                _jackknife_sizes(cfg),
                d["bias_jackknife"],
                marker="s",
                ls="--",
                color=f"C{i}",
                label=f"{n} jackknife",
            )
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("generator samples per prompt")
    ax.set_ylabel("estimated - true loss gap (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure(fig, "humans_vs_lms.png")


def paper_probe(cfg: Config) -> Config:
    """The paper's player/question counts with one batch of prompts and a few guesses."""
    return dataclasses.replace(
        cfg,
        prompts=20,
        batch=20,
        players=2,
        guesses=3,
        pair_questions=2,
        n_training=1,
        model_pairs=10,
        bias_sizes=(1, 400),
        bootstrap_draws=4,
        num_samples=400,
    )


EXPERIMENT = Experiment(
    name="next_token_humans_vs_lms",
    title="LMs are better than humans at next-token prediction (Shlegeris et al. 2022)",
    config=Config,
    scales=SCALES,
    run=run,
    paper_probe=paper_probe,
)
