"""The one language-model protocol every backend implements, with its request and result types.

Three batched calls, as lm-evaluation-harness names them:

- `loglikelihood(requests)`: for each `(context, continuation)`, `log p(continuation | context)`
  summed over the continuation's tokens and whether greedy decoding would produce it;
- `loglikelihood_rolling(texts)`: `log p(text)` of each whole text (from an end-of-text start),
  scored in windows of at most the model's context;
- `generate(requests)`: a sampled or greedy continuation of each `GenerateRequest`, cut at its
  first stop sequence.

A backend states its `Capabilities` up front; `require` refuses a task a backend cannot do (e.g. a
chat server asked for loglikelihoods) instead of letting it score every choice as 0.
"""

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "Capabilities",
    "CapabilityError",
    "GenerateRequest",
    "LanguageModel",
    "Loglikelihood",
    "require",
]


class CapabilityError(ValueError):
    """A backend was asked for something it declared it cannot do."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared before any request is sent.

    Attributes:
        loglikelihood: exact `loglikelihood` of arbitrary continuations.
        rolling: `loglikelihood_rolling` of whole texts.
        generate: `generate`.
        approximate: loglikelihoods are approximations (e.g. a chat endpoint's first-token
            `top_logprobs`), not exact sums of token log-probabilities.

    Example:
        >>> Capabilities(loglikelihood=True, rolling=True, generate=True)
        Capabilities(loglikelihood=True, rolling=True, generate=True, approximate=False)
    """

    loglikelihood: bool
    rolling: bool
    generate: bool
    approximate: bool = False


class Loglikelihood(NamedTuple):
    """The answer to one `(context, continuation)` request.

    Attributes:
        logprob: `log p(continuation | context)`, natural log, summed over the continuation.
        is_greedy: whether every continuation token is the model's argmax given what precedes it.
    """

    logprob: float
    is_greedy: bool


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """One generation request.

    Attributes:
        context: the prompt.
        stop: stop sequences; the output is cut before the first one found.
        max_tokens: the most tokens generated.
        temperature: 0 is greedy decoding; otherwise the softmax temperature.
        top_p: nucleus sampling mass in (0, 1].
        seed: the sampling seed (the same request with the same seed gives the same text).

    Example:
        >>> GenerateRequest("Hello", stop=("\\n",), max_tokens=8).temperature
        0.0
    """

    context: str
    stop: tuple[str, ...] = ()
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.context, str):
            raise TypeError(f"`context` must be a str, got {type(self.context).__name__}.")
        if isinstance(self.stop, str):
            raise TypeError("`stop` must be a tuple of strings, not a single string.")
        object.__setattr__(self, "stop", tuple(self.stop))
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"`stop` must hold non-empty strings, got {self.stop!r}.")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"`max_tokens` must be a positive int, got {self.max_tokens!r}.")
        if not self.temperature >= 0.0:
            raise ValueError(f"`temperature` must be >= 0, got {self.temperature!r}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}.")


@runtime_checkable
class LanguageModel(Protocol):
    """The protocol: `capabilities` plus the three batched calls (see the module docstring).

    Example:
        >>> from respax.evals import NGramLM
        >>> lm = NGramLM.fit("abababab", order=2)
        >>> isinstance(lm, LanguageModel)
        True
    """

    @property
    def capabilities(self) -> Capabilities: ...

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]: ...

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]: ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]: ...


def require(lm: LanguageModel, capability: str) -> None:
    """Raise `CapabilityError` unless `lm` declares `capability`.

    Args:
        lm: a backend.
        capability: "loglikelihood", "rolling" or "generate"; "exact_loglikelihood" also
            refuses approximate loglikelihoods.

    Example:
        >>> from respax.evals import NGramLM
        >>> require(NGramLM.fit("abab", order=2), "loglikelihood")
    """
    caps = lm.capabilities
    if capability == "exact_loglikelihood":
        if not caps.loglikelihood or caps.approximate:
            raise CapabilityError(
                f"{type(lm).__name__} cannot score exact loglikelihoods "
                f"(capabilities: {caps}); use a completions endpoint with echo + logprobs "
                "or an in-process model."
            )
        return
    if capability not in ("loglikelihood", "rolling", "generate"):
        raise ValueError(f"unknown capability {capability!r}")
    if not getattr(caps, capability):
        raise CapabilityError(
            f"{type(lm).__name__} cannot do {capability!r} (capabilities: {caps}); it refuses "
            "instead of returning placeholder scores."
        )


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop sequence."""
    end = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            end = min(end, i)
    return text[:end]
