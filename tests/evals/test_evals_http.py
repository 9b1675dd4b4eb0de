"""The HTTP backend against real loopback servers: ours (same logprobs as in-process), flaky ones
(retries), ones without logprobs (refusal) and one that dies mid-run (the cache resumes)."""

import json

import jax
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import respax.evals as ev
from tests.evals._servers import running

TEXT = "is the following statement something you would say? yes. no. i like cats. i am kind."


@pytest.fixture(scope="module")
def models():
    tok = ev.CharTokenizer.from_text(TEXT)
    cfg = ev.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    jax_lm = ev.JaxLM(ev.GPT2.init(cfg, key=jax.random.key(1)), tok, batch_size=4, pad_multiple=16)
    return {"ngram": ev.NGramLM.fit(TEXT, order=3), "jax": jax_lm}


REQS = [("i like cats. yes", " no."), ("i am", " kind."), ("", "i like")]


@pytest.mark.parametrize("name", ["ngram", "jax"])
def test_same_per_choice_logprobs_in_process_and_over_loopback(models, name):
    lm = models[name]
    with running(ev.make_app(lm)) as url:
        client = ev.OpenAILM(url)
        remote = client.loglikelihood(REQS)
        rolling = client.loglikelihood_rolling(["i am kind."])
        gen = client.generate([ev.GenerateRequest("i ", max_tokens=8, stop=(".",))])
    local = lm.loglikelihood(REQS)
    for a, b in zip(local, remote, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-5 and a.is_greedy == b.is_greedy
    assert abs(rolling[0] - lm.loglikelihood_rolling(["i am kind."])[0]) < 1e-5
    assert gen == lm.generate([ev.GenerateRequest("i ", max_tokens=8, stop=(".",))])


def test_64_concurrent_requests_lose_nothing(models):
    lm = models["ngram"]
    reqs = [(f"i am{' ' * (i % 5)}", " kind" + "." * (i % 3)) for i in range(64)]
    with running(ev.make_app(lm)) as url:
        remote = ev.OpenAILM(url, concurrency=64).loglikelihood(reqs)
    assert [round(r.logprob, 9) for r in remote] == [
        round(r.logprob, 9) for r in lm.loglikelihood(reqs)
    ]


def _proxy(lm, fail):
    """Our app behind a wrapper whose `fail(n)` decides the HTTP status of the n-th request."""
    inner = ev.make_app(lm)
    count = {"n": 0}

    async def app(scope, receive, send):
        if scope["type"] == "http":
            count["n"] += 1
            status = fail(count["n"])
            if status:
                await JSONResponse({"error": "down"}, status)(scope, receive, send)
                return
        await inner(scope, receive, send)

    return app, count


def test_retries_on_429_and_5xx(models):
    app, count = _proxy(models["ngram"], lambda n: {1: 429, 2: 503, 3: 500}.get(n))
    with running(app) as url:
        client = ev.OpenAILM(url, concurrency=1, backoff_initial=0.01)
        out = client.loglikelihood(REQS[:1])
    assert (
        out == models["ngram"].loglikelihood(REQS[:1])
        or abs(out[0].logprob - models["ngram"].loglikelihood(REQS[:1])[0].logprob) < 1e-9
    )
    assert client.requests_sent == 4


def test_a_server_without_logprobs_is_refused():
    async def completions(request):
        return JSONResponse({"choices": [{"text": "x", "logprobs": None}]})

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    with running(app) as url:
        with pytest.raises(ev.NoLogprobsError, match="no prompt logprobs"):
            ev.OpenAILM(url).loglikelihood(REQS[:1])
    chat = ev.OpenAILM("http://127.0.0.1:9", mode="chat")
    with pytest.raises(ev.CapabilityError, match="exact"):
        ev.require(chat, "exact_loglikelihood")


def test_a_server_dying_mid_run_loses_nothing_on_resume(models, tmp_path):
    lm = models["ngram"]
    reqs = [("i am", " kind" + "." * i) for i in range(10)]
    cache = tmp_path / "cache.jsonl"
    app, _ = _proxy(lm, lambda n: 500 if n > 4 else None)
    with running(app) as url:
        client = ev.OpenAILM(
            url, concurrency=1, max_attempts=2, cache_path=cache, backoff_initial=0.01
        )
        with pytest.raises(Exception, match="500"):
            client.loglikelihood(reqs)
    assert len(cache.read_text().splitlines()) == 4
    with running(ev.make_app(lm)) as url:  # a restarted server on another port
        resumed = ev.OpenAILM(url, cache_path=cache)
        out = resumed.loglikelihood(reqs)
    assert resumed.requests_sent == 6
    for a, b in zip(out, lm.loglikelihood(reqs), strict=True):
        assert abs(a.logprob - b.logprob) < 1e-9
    assert all(json.loads(line)["key"] for line in cache.read_text().splitlines())


def test_chat_mode_is_approximate_first_token(models):
    lm = models["ngram"]
    with running(ev.make_app(lm)) as url:
        chat = ev.OpenAILM(url, mode="chat", top_logprobs=50)
        out = chat.loglikelihood([("i am kind", ".")])[0]
        with pytest.raises(ev.CapabilityError):
            chat.loglikelihood_rolling(["x"])
    exact = lm.loglikelihood([("i am kind", ".")])[0]
    assert abs(out.logprob - exact.logprob) < 1e-6  # a one-token continuation: the same number
