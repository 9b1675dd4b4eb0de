"""`respax-evals serve`: any in-process backend as an OpenAI-compatible server (starlette +
uvicorn, the `respax-evals[http]` extra).

Routes: `GET /v1/models`; `POST /v1/completions` (a prompt or a list of prompts; `echo` with
`logprobs` and `max_tokens: 0` returns every prompt token's logprob scored from an end-of-text
start, with `tokens`, `text_offset` and the top-1 `top_logprobs`; otherwise it generates);
`POST /v1/chat/completions` (the last user message as the prompt; `logprobs` + `top_logprobs`
describe the first generated token). Model calls are serialised on one worker thread.
"""

import threading

import numpy as np

from ._protocol import GenerateRequest
from ._token_lm import TokenLM

__all__ = ["make_app", "serve"]


def _error(message: str, status: int = 400):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status)


def _echo_logprobs(lm: TokenLM, prompt: str) -> dict:
    (ids, lps, tops, top_lps) = lm.token_logprobs([prompt])[0]
    tok = lm.tokenizer
    tokens, offsets, top = [], [], []
    for i, t in enumerate(ids):
        offsets.append(len(tok.decode(ids[:i])))
        tokens.append(tok.decode([t]))
        top.append({tok.decode([int(tops[i])]): float(top_lps[i])})
    return {
        "tokens": tokens,
        "token_logprobs": [float(x) for x in lps],
        "text_offset": offsets,
        "top_logprobs": top,
    }


def make_app(lm: TokenLM, model_name: str = "respax"):
    """A starlette app serving `lm` with the OpenAI completions / chat wire format.

    Args:
        lm: an in-process backend (`NGramLM`, `JaxLM`, ...).
        model_name: the id listed by `/v1/models`.

    Example:
        >>> from starlette.testclient import TestClient
        >>> from respax.evals import NGramLM
        >>> app = make_app(NGramLM.fit("abab", order=2))
        >>> TestClient(app).get("/v1/models").json()["data"][0]["id"]
        'respax'
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if not isinstance(lm, TokenLM):
        raise TypeError(f"`lm` must be an in-process TokenLM backend, got {type(lm).__name__}.")
    lock = threading.Lock()

    def locked(fn, *args):
        with lock:
            return fn(*args)

    def gen_request(body: dict, prompt: str) -> GenerateRequest:
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        return GenerateRequest(
            prompt,
            stop=stop,
            max_tokens=int(body.get("max_tokens") or 16),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            seed=int(body.get("seed") or 0),
        )

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model"}]})

    async def completions(request):
        try:
            body = await request.json()
        except ValueError:
            return _error("the body is not JSON.")
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return _error("`prompt` must be a string or a list of strings.")
        echo, want_lp = bool(body.get("echo")), body.get("logprobs") is not None
        choices = []
        try:
            if body.get("max_tokens") == 0:
                if not echo:
                    return _error("max_tokens 0 needs echo (nothing to return otherwise).")
                for i, p in enumerate(prompts):
                    lp = await run_in_threadpool(locked, _echo_logprobs, lm, p) if want_lp else None
                    choices.append(
                        {"index": i, "text": p, "logprobs": lp, "finish_reason": "length"}
                    )
            else:
                reqs = [gen_request(body, p) for p in prompts]
                texts = await run_in_threadpool(locked, lm.generate, reqs)
                for i, (p, t) in enumerate(zip(prompts, texts, strict=True)):
                    lp = None
                    if echo and want_lp:
                        lp = await run_in_threadpool(locked, _echo_logprobs, lm, p)
                    choices.append(
                        {
                            "index": i,
                            "text": (p + t) if echo else t,
                            "logprobs": lp,
                            "finish_reason": "stop",
                        }
                    )
        except (ValueError, TypeError) as e:
            return _error(str(e))
        return JSONResponse(
            {
                "id": "cmpl-respax",
                "object": "text_completion",
                "model": model_name,
                "choices": choices,
            }
        )

    async def chat(request):
        try:
            body = await request.json()
            messages = body["messages"]
            prompt = [m["content"] for m in messages if m.get("role") == "user"][-1]
        except (ValueError, KeyError, IndexError, TypeError):
            return _error("`messages` must hold at least one user message.")
        try:
            text = (await run_in_threadpool(locked, lm.generate, [gen_request(body, prompt)]))[0]
        except (ValueError, TypeError) as e:
            return _error(str(e))
        logprobs = None
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 1)
            x = [lm.tokenizer.eot_id] + lm.tokenizer.encode(prompt)
            x = x[-lm.max_length :]
            logits = await run_in_threadpool(
                locked, lm.next_logits, np.array([x], np.int32), np.array([len(x)])
            )
            row = np.asarray(logits[0], np.float64)
            row = row - np.logaddexp.reduce(row)
            best = np.argsort(-row)[:k]
            tops = [
                {"token": lm.tokenizer.decode([int(i)]), "logprob": float(row[i])} for i in best
            ]
            logprobs = {"content": [{**tops[0], "top_logprobs": tops}]}
        return JSONResponse(
            {
                "id": "chatcmpl-respax",
                "object": "chat.completion",
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def serve(lm: TokenLM, host: str = "127.0.0.1", port: int = 8000, model_name: str = "respax"):
    """Run `make_app(lm)` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(make_app(lm, model_name), host=host, port=port, log_level="warning")
