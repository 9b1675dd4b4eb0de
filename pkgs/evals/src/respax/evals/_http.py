"""The OpenAI-compatible HTTP backend (the `respax-evals[http]` extra: httpx + tenacity).

`/v1/completions` with `echo` + `logprobs` gives exact loglikelihoods; a chat endpoint gives only
the first generated token's `top_logprobs`, so `mode="chat"` declares its loglikelihoods
approximate (and `require(lm, "exact_loglikelihood")` refuses it). Requests run concurrently
(at most `concurrency` in flight), are retried with exponential backoff on 429, 5xx, timeouts and
connection errors, and every answer is appended to an optional JSONL cache so that a rerun after
an interruption sends only the requests that had not been answered.
"""

import asyncio
import hashlib
import json
import math
import os
import pathlib
import threading
from collections.abc import Sequence

from ._protocol import Capabilities, CapabilityError, GenerateRequest, Loglikelihood, cut_at_stop

__all__ = ["NoLogprobsError", "OpenAILM"]


class NoLogprobsError(CapabilityError):
    """The server answered without the token logprobs a loglikelihood needs."""


def _retryable(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class OpenAILM:
    """An OpenAI-compatible server (vLLM, llama.cpp, `respax-evals serve`, ...) as an LM backend.

    Args:
        base_url: the server root, e.g. "http://127.0.0.1:8000" (the `/v1/...` paths are added).
        model: the `model` field sent with every request.
        mode: "completions" (exact loglikelihoods through echo + logprobs) or "chat"
            (generation, and loglikelihoods approximated by the first token's top_logprobs).
        concurrency: requests in flight at once.
        timeout: seconds per request.
        max_attempts: attempts per request (retries on 429 / 5xx / timeouts / connection errors,
            exponential backoff with jitter).
        cache_path: a JSONL file of answered requests; read on creation, appended to as answers
            arrive.
        api_key: sent as a bearer token if given.
        top_logprobs: how many alternatives chat mode asks for.

    Example:
        >>> lm = OpenAILM("http://127.0.0.1:8000")
        >>> lm.capabilities.approximate
        False
    """

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        mode: str = "completions",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_attempts: int = 6,
        cache_path: str | os.PathLike | None = None,
        api_key: str | None = None,
        top_logprobs: int = 20,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
    ):
        if mode not in ("completions", "chat"):
            raise ValueError(f"`mode` must be 'completions' or 'chat', got {mode!r}.")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"`concurrency` must be a positive int, got {concurrency!r}.")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"`max_attempts` must be a positive int, got {max_attempts!r}.")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.mode = mode
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.api_key = api_key
        self.top_logprobs = top_logprobs
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.requests_sent = 0  # HTTP attempts made (for tests and progress reports)
        self._cache: dict[str, dict] = {}
        self._cache_path = pathlib.Path(cache_path) if cache_path is not None else None
        self._lock = threading.Lock()
        if self._cache_path is not None and self._cache_path.exists():
            for line in self._cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["response"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by an interruption; that request is asked again

    @property
    def capabilities(self) -> Capabilities:
        if self.mode == "chat":
            return Capabilities(loglikelihood=True, rolling=False, generate=True, approximate=True)
        return Capabilities(loglikelihood=True, rolling=True, generate=True)

    # -- wire -----------------------------------------------------------------------------------
    def _key(self, path: str, payload: dict) -> str:
        # the server address is not part of the key: a run resumes against a restarted server
        blob = json.dumps([path, payload], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    async def _post_all(self, path: str, payloads: list[dict]) -> list[dict]:
        import httpx
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        sem = asyncio.Semaphore(self.concurrency)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency)

        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, headers=headers, limits=limits
        ) as client:

            async def one(payload):
                key = self._key(path, payload)
                if key in self._cache:
                    return self._cache[key]
                async with sem:
                    async for attempt in AsyncRetrying(
                        stop=stop_after_attempt(self.max_attempts),
                        wait=wait_exponential_jitter(
                            multiplier=self.backoff_initial,
                            max=self.backoff_max,
                            jitter=self.backoff_initial,
                        ),
                        retry=retry_if_exception(_retryable),
                        reraise=True,
                    ):
                        with attempt:
                            self.requests_sent += 1
                            r = await client.post(path, json=payload)
                            r.raise_for_status()
                            body = r.json()
                self._remember(key, body)
                return body

            results = await asyncio.gather(*(one(p) for p in payloads), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return results

    def _remember(self, key: str, body: dict) -> None:
        with self._lock:
            self._cache[key] = body
            if self._cache_path is not None:
                with self._cache_path.open("a") as f:
                    f.write(json.dumps({"key": key, "response": body}) + "\n")

    def _run(self, path: str, payloads: list[dict]) -> list[dict]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._post_all(path, payloads))
        # called from inside an event loop (a notebook): run the requests on a fresh thread
        box: list = []
        t = threading.Thread(target=lambda: box.append(asyncio.run(self._post_all(path, payloads))))
        t.start()
        t.join()
        return box[0]

    # -- protocol -------------------------------------------------------------------------------
    def _echo(self, prompts: list[str]) -> list[dict]:
        payloads = [
            {
                "model": self.model,
                "prompt": p,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 1,
                "temperature": 0.0,
            }
            for p in prompts
        ]
        out = []
        for p, body in zip(prompts, self._run("/v1/completions", payloads), strict=True):
            try:
                lp = body["choices"][0]["logprobs"]
                if lp is None or lp.get("token_logprobs") is None:
                    raise KeyError
            except (KeyError, IndexError, TypeError):
                raise NoLogprobsError(
                    f"the server at {self.base_url} returned no prompt logprobs for {p[:60]!r}; "
                    "it cannot score loglikelihood tasks (it needs echo=True with logprobs on "
                    "/v1/completions). Refusing instead of scoring every choice as 0."
                ) from None
            out.append(lp)
        return out

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]:
        """`log p(continuation | context)`: the echoed logprobs of the tokens that start at or
        after the end of the context (exact in completions mode; the first-token top_logprobs
        in chat mode)."""
        for req in requests:
            if not (isinstance(req, tuple | list) and len(req) == 2):
                raise TypeError(f"each request must be a (context, continuation) pair, got {req!r}")
        if self.mode == "chat":
            return self._chat_loglikelihood(requests)
        out = []
        for (ctx, cont), lp in zip(requests, self._echo([c + x for c, x in requests]), strict=True):
            start = len(ctx)
            total, greedy, n = 0.0, True, 0
            for tok, tlp, off, top in zip(
                lp["tokens"],
                lp["token_logprobs"],
                lp["text_offset"],
                lp.get("top_logprobs") or [None] * len(lp["tokens"]),
                strict=True,
            ):
                if off + len(tok) <= start:
                    continue
                if tlp is None:
                    raise NoLogprobsError(f"the server gave no logprob for token {tok!r}.")
                total += tlp
                n += 1
                if top:
                    greedy = greedy and tlp >= max(top.values()) - 1e-9
            if n == 0:
                raise ValueError(f"the continuation {cont!r} covers no echoed token.")
            out.append(Loglikelihood(total, greedy))
        return out

    def _chat_loglikelihood(self, requests):
        payloads = [
            {
                "model": self.model,
                "messages": [{"role": "user", "content": ctx}],
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
            for ctx, _ in requests
        ]
        out = []
        for (_, cont), body in zip(
            requests, self._run("/v1/chat/completions", payloads), strict=True
        ):
            try:
                first = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise NoLogprobsError(
                    f"the chat server at {self.base_url} returned no top_logprobs."
                ) from None
            table = {d["token"].strip(): d["logprob"] for d in first}
            want = cont.strip()
            # approximate: the continuation's first token alone; unseen -> below every listed one
            lp = table.get(want, min(table.values(), default=0.0) - math.log(2.0))
            greedy = bool(first) and first[0]["token"].strip() == want
            out.append(Loglikelihood(float(lp), greedy))
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """`log p(text)`: the sum of the echoed token logprobs (the server decides the start;
        a first token without a logprob is skipped)."""
        if self.mode == "chat":
            raise CapabilityError("a chat endpoint cannot score rolling loglikelihoods.")
        return [sum(x for x in lp["token_logprobs"] if x is not None) for lp in self._echo(texts)]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Completions (or chat replies) of each request, cut at its stop sequences."""
        for r in requests:
            if not isinstance(r, GenerateRequest):
                raise TypeError(f"each request must be a GenerateRequest, got {type(r).__name__}")
        common = [
            {
                "model": self.model,
                "max_tokens": r.max_tokens,
                "temperature": r.temperature,
                "top_p": r.top_p,
                "seed": r.seed,
                **({"stop": list(r.stop)} if r.stop else {}),
            }
            for r in requests
        ]
        if self.mode == "chat":
            payloads = [
                {**c, "messages": [{"role": "user", "content": r.context}]}
                for c, r in zip(common, requests, strict=True)
            ]
            bodies = self._run("/v1/chat/completions", payloads)
            texts = [b["choices"][0]["message"]["content"] for b in bodies]
        else:
            payloads = [{**c, "prompt": r.context} for c, r in zip(common, requests, strict=True)]
            texts = [b["choices"][0]["text"] for b in self._run("/v1/completions", payloads)]
        return [cut_at_stop(t, r.stop) for t, r in zip(texts, requests, strict=True)]
