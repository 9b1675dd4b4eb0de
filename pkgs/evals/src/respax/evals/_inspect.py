"""Export an `EvalResult` as an Inspect (inspect_ai) evaluation log in its JSON format, so that
`inspect view`, `inspect log dump` and `inspect_ai.log.read_eval_log` open our runs."""

import datetime
import json
import os
import pathlib
import uuid
from importlib.metadata import version

from ._pipeline import atomic_write_text
from ._runner import EvalResult

__all__ = ["write_inspect_log"]

SCORER = "matching_behavior"


def _sample(i: int, rec: dict) -> dict:
    prompts = {a[0] for a in rec["arguments"]}
    if len(prompts) != 1:
        raise ValueError(
            f"sample {rec['doc_id']!r}: its choices were scored after different prompts."
        )
    choices = [a[1] for a in rec["arguments"]]
    logprobs = [r[0] for r in rec["filtered_resps"]]
    best = max(range(len(choices)), key=lambda j: logprobs[j])
    matching = choices[: rec["num_matching"]]
    return {
        "id": rec["doc_id"] if isinstance(rec["doc_id"], int | str) else i,
        "epoch": 1,
        "input": prompts.pop(),
        "choices": choices,
        "target": matching[0] if len(matching) == 1 else matching,
        "scores": {
            SCORER: {
                "value": rec["acc"],
                "answer": choices[best],
                "explanation": "the highest-loglikelihood choice "
                + ("matches" if rec["acc"] else "does not match")
                + " the behaviour",
                "metadata": {"logprobs": logprobs},
            }
        },
        "metadata": {"doc": rec["doc"]},
    }


def write_inspect_log(
    result: EvalResult, path: str | os.PathLike, model: str = "respax"
) -> pathlib.Path:
    """Write `result` (from `evaluate`) as an Inspect JSON log (format version 2), atomically.

    Each sample's score `matching_behavior` is 1.0 when its highest-loglikelihood choice matches
    the behaviour; the metrics are the matching rate (`accuracy`), its bootstrap interval and,
    where the task has label confidences, the ceiling. The sample `target` is the matching
    answer (a list where a file lists several).

    Args:
        result: an `EvalResult`.
        path: the file to write (conventionally `*.json` under Inspect's `./logs`).
        model: the model name, in Inspect's `provider/model` style.

    Returns:
        The path written.
    """
    if not isinstance(result, EvalResult):
        raise TypeError(
            f"`result` must be an EvalResult from `evaluate`, got {type(result).__name__}."
        )
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    metrics = {
        "accuracy": result.matching_rate,
        "ci_lower": result.ci_lower,
        "ci_upper": result.ci_upper,
    }
    if result.ceiling is not None:
        metrics["ceiling"] = result.ceiling
    log = {
        "version": 2,
        "status": "success",
        "eval": {
            "eval_id": uuid.uuid4().hex,
            "run_id": uuid.uuid4().hex,
            "created": now,
            "task": result.task,
            "task_version": 0,
            "task_args": {"template": result.template},
            "solver": "respax.evals.evaluate",
            "dataset": {
                "name": result.task,
                "samples": result.n,
                "sample_ids": [s["doc_id"] for s in result.samples],
            },
            "model": model,
            "config": {},
            "packages": {"respax-evals": version("respax-evals")},
            "metadata": {"approximate_loglikelihoods": result.approximate},
        },
        "plan": {
            "name": "plan",
            "steps": [{"solver": "loglikelihood", "params": {"template": result.template}}],
        },
        "results": {
            "total_samples": result.n,
            "completed_samples": result.n,
            "scores": [
                {
                    "name": SCORER,
                    "scorer": SCORER,
                    "params": {},
                    "metrics": {
                        k: {"name": k, "value": v, "params": {}} for k, v in metrics.items()
                    },
                }
            ],
        },
        "stats": {"started_at": now, "completed_at": now, "model_usage": {}},
        "samples": [_sample(i, r) for i, r in enumerate(result.samples)],
    }
    path = pathlib.Path(path)
    atomic_write_text(path, json.dumps(log, indent=1))
    return path
