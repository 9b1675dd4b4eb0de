"""LM backends of respax.evals: in-process JAX scoring throughput against PyTorch/transformers,
KV-cache generation speed-up, and the HTTP backend under 64 concurrent requests.

1. Scoring: a GPT-2-shaped model (random weights; `--quick` keeps 2 of the 12 layers), float32,
   a batch of 8 x 512-token loglikelihoods (logits, log-softmax, gather of the targets), 2 threads
   on both sides. Ours is `eqx.filter_jit(gpt2_score)`; the peer is `GPT2LMHeadModel` under
   `torch.inference_mode()` in `.bench-envs/transformers` (torch 2.13.0, `make bench-env`), run
   as a subprocess between our repetitions (interleaved rounds), compilation and imports excluded.
   Key `jax_over_torch_tokens_per_s` = our tokens/s over the peer's (target >= 1.0).
2. Generation: 256 new tokens after a 32-token prompt with the KV cache vs rerunning the whole
   sequence every step (`gpt2_generate(use_cache=False)`); key `kv_cache_speedup_256`.
3. HTTP: `respax-evals serve`'s app on a loopback uvicorn server, 64 concurrent loglikelihood
   requests from `OpenAILM`; key `http_64_concurrent_lost` (target 0).

Usage: `python benchmarks/lm_backends.py [--quick] [--json PATH] [--ours-only]`.
"""

import os

_THREADS = "2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAGS = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={_THREADS}"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import respax.evals as ev  # noqa: E402

PEER_PY = _common.ROOT / ".bench-envs" / "transformers" / "bin" / "python"

_PEER_SCRIPT = r"""
import json, sys, time, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.set_num_threads(int(sys.argv[1]))
n_layer, batch, seq, reps = map(int, sys.argv[2:6])
cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=n_layer, n_head=12)
torch.manual_seed(0)
model = GPT2LMHeadModel(cfg).eval()
x = torch.randint(0, 50257, (batch, seq))
y = torch.randint(0, 50257, (batch, seq))
def score():
    with torch.inference_mode():
        logits = model(x).logits.float()
        lp = torch.log_softmax(logits, -1).gather(-1, y[..., None])[..., 0]
        return lp.sum().item()
score()
out = []
for _ in range(reps):
    t = time.perf_counter(); score(); out.append(time.perf_counter() - t)
print(json.dumps({"times": out, "torch": torch.__version__,
                  "transformers": __import__("transformers").__version__}))
"""


def _peer(n_layer, batch, seq, reps):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_PEER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(OMP_NUM_THREADS=_THREADS, MKL_NUM_THREADS=_THREADS)
    args = [str(PEER_PY), f.name, _THREADS, str(n_layer), str(batch), str(seq), str(reps)]
    res = subprocess.run(args, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"peer failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_scoring(n_layer, batch, seq, rounds, reps, ours_only):
    cfg = ev.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=n_layer, n_head=12)
    model = ev.GPT2.init(cfg, key=jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (batch, seq), 0, 50257)
    y = jax.random.randint(jax.random.key(2), (batch, seq), 0, 50257)
    score = eqx.filter_jit(ev.gpt2_score)

    def ours():
        jax.block_until_ready(score(model, x, y))

    ours()  # compile
    mine, theirs, peer_versions = [], [], {}
    for _ in range(rounds):
        mine += _common.time_calls(ours, reps)
        if not ours_only:
            p = _peer(n_layer, batch, seq, reps)
            theirs += p["times"]
            peer_versions = {"torch": p["torch"], "transformers": p["transformers"]}
    tokens = batch * seq
    out = {
        "ours_s": _common.median(mine),
        "ours_tokens_per_s": tokens / _common.median(mine),
        "n_layer": n_layer,
    }
    if theirs:
        out["torch_s"] = _common.median(theirs)
        out["torch_tokens_per_s"] = tokens / _common.median(theirs)
        out["jax_over_torch_tokens_per_s"] = out["ours_tokens_per_s"] / out["torch_tokens_per_s"]
        out["peer_versions"] = peer_versions
    return out


def bench_generation(n_layer, new_tokens, reps):
    cfg = ev.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=n_layer, n_head=12)
    model = ev.GPT2.init(cfg, key=jax.random.key(0))
    prompt = jnp.arange(32) % 50257
    valid = jnp.ones((32,), bool)
    res = {}
    for use_cache in (True, False):
        fn = eqx.filter_jit(
            lambda m, p, v, k, c=use_cache: ev.gpt2_generate(
                m, p, v, new_tokens, jnp.float32(0.0), jnp.float32(1.0), key=k, use_cache=c
            )
        )
        jax.block_until_ready(fn(model, prompt, valid, jax.random.key(0)))
        res[use_cache] = _common.time_calls(
            lambda fn=fn: jax.block_until_ready(fn(model, prompt, valid, jax.random.key(0))), reps
        )
    cache, nocache = _common.median(res[True]), _common.median(res[False])
    return {
        "cache_ms_per_token": 1e3 * cache / new_tokens,
        "nocache_ms_per_token": 1e3 * nocache / new_tokens,
        "kv_cache_speedup_256": nocache / cache,
        "n_layer": n_layer,
        "new_tokens": new_tokens,
    }


def bench_http(n=64):
    sys.path.insert(0, str(_common.ROOT))
    from tests.evals._servers import running

    lm = ev.NGramLM.fit(ev.load_corpus("train").splitlines(), order=5)
    reqs = [(f"Human: statement {i}?\n\nAssistant:", " Yes" if i % 2 else " No") for i in range(n)]
    local = lm.loglikelihood(reqs)
    with running(ev.make_app(lm)) as url:
        client = ev.OpenAILM(url, concurrency=n)
        t = time.perf_counter()
        remote = client.loglikelihood(reqs)
        wall = time.perf_counter() - t
    lost = sum(
        r is None or abs(r.logprob - a.logprob) > 1e-6 for r, a in zip(remote, local, strict=True)
    ) + (n - len(remote))
    return {"http_64_concurrent_lost": int(lost), "http_64_wall_s": wall, "requests": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--ours-only", action="store_true")
    a = ap.parse_args()
    if not a.ours_only:
        _common.require_python("PyTorch/transformers", PEER_PY)
    n_layer = 2 if a.quick else 12
    scoring = bench_scoring(
        n_layer, 8, 512, rounds=2 if a.quick else 3, reps=2, ours_only=a.ours_only
    )
    print("scoring", scoring, flush=True)
    gen = bench_generation(2 if a.quick else 12, 256, reps=2 if a.quick else 3)
    print("generation", gen, flush=True)
    http = bench_http()
    print("http", http, flush=True)
    result = {
        "jax_over_torch_tokens_per_s": scoring.get("jax_over_torch_tokens_per_s"),
        "kv_cache_speedup_256": gen["kv_cache_speedup_256"],
        "http_64_concurrent_lost": http["http_64_concurrent_lost"],
        "scoring": scoring,
        "generation": gen,
        "http": http,
        "quick": a.quick,
        "machine": _common.machine(),
        "versions": _common.versions("jax", "equinox", "respax-evals"),
    }
    if a.json:
        _common.write_json(a.json, result)
    ratio = result["jax_over_torch_tokens_per_s"]
    body = (
        "Machine shared with other jobs (loaded 2 cores): medians of interleaved rounds.\n\n"
        "| metric | value | target |\n|---|---|---|\n"
        f"| scoring 8x512 tokens/s, ours (n_layer={n_layer}) | "
        f"{scoring['ours_tokens_per_s']:.0f} | |\n"
        f"| scoring tokens/s, PyTorch/transformers | "
        f"{scoring.get('torch_tokens_per_s', float('nan')):.0f} | |\n"
        f"| `jax_over_torch_tokens_per_s` | "
        f"{'n/a (peer not run)' if ratio is None else f'{ratio:.2f}'} | >= 1.0 |\n"
        f"| generation ms/token with / without KV cache (256 new) | "
        f"{gen['cache_ms_per_token']:.1f} / {gen['nocache_ms_per_token']:.1f} | |\n"
        f"| `kv_cache_speedup_256` | {gen['kv_cache_speedup_256']:.1f} | >= 5 |\n"
        f"| `http_64_concurrent_lost` | {http['http_64_concurrent_lost']} | 0 |\n"
        + ("\n`--quick`: 2 of GPT-2 small's 12 layers.\n" if a.quick else "")
    )
    _common.update_results_section("lm_backends (respax.evals)", body)
    print(json.dumps({k: result[k] for k in list(result)[:3]}))


if __name__ == "__main__":
    main()
