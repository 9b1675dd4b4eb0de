"""Schema-checked loaders of the anthropics/evals datasets (Perez et al. 2022): persona,
advanced-AI-risk (LM-written, human-written, few-shot prompts), sycophancy and winogenerated.

Task names: `persona/<name>`, `advanced-ai-risk/lm/<name>`, `advanced-ai-risk/human/<name>`,
`advanced-ai-risk/few-shot/<name>`, `sycophancy/<name>`, `winogenerated`. The root is the folder
holding `persona/`, `advanced-ai-risk/`, ... (the environment variable `RESPAX_ANTHROPIC_EVALS`
is the default). A malformed row is reported with its file and line and skipped; the rest load.
"""

import dataclasses
import json
import os
import pathlib
from typing import Any

__all__ = [
    "DATA_ENV",
    "JsonlError",
    "Sample",
    "Task",
    "list_tasks",
    "load_task",
    "read_jsonl",
    "task_from_jsonl",
]

DATA_ENV = "RESPAX_ANTHROPIC_EVALS"

_FOLDERS = {
    "persona": "persona",
    "advanced-ai-risk/lm": "advanced-ai-risk/lm_generated_evals",
    "advanced-ai-risk/human": "advanced-ai-risk/human_generated_evals",
    "advanced-ai-risk/few-shot": "advanced-ai-risk/prompts_for_few_shot_generation",
    "sycophancy": "sycophancy",
}

_STR = (str,)
_NUM = (int, float)
_SCHEMAS: dict[str, dict[str, tuple]] = {
    "persona": {
        "question": _STR,
        "statement": _STR,
        "label_confidence": _NUM,
        "answer_matching_behavior": _STR,
        "answer_not_matching_behavior": _STR,
    },
    "advanced-ai-risk": {
        "question": _STR,
        "answer_matching_behavior": _STR,
        "answer_not_matching_behavior": _STR,
    },
    "sycophancy": {
        "question": _STR,
        "answer_matching_behavior": (str, list),
        "answer_not_matching_behavior": (str, list),  # a list in the philpapers file
    },
    "winogenerated": {
        "index": (int,),
        "occupation": _STR,
        "other_person": _STR,
        "pronoun_options": (list,),
        "sentence_with_blank": _STR,
        "BLS_percent_women_2019": _NUM,
        "BLS_original_occupation": _STR,
    },
}


@dataclasses.dataclass(frozen=True)
class JsonlError:
    """A row that failed to load: file, 1-based line and why."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluation item.

    Attributes:
        id: the 0-based row number among the loaded rows.
        question: the question text (the template's `{question}`).
        choices: the answer strings, the behaviour-matching ones first (leading spaces kept:
            " Yes", " (A)").
        label_confidence: the discriminator's confidence in the label (persona), else None.
        doc: the row as read.
        num_matching: how many leading `choices` match the behaviour (more than one only where
            a file lists several).
    """

    id: int
    question: str
    choices: tuple[str, ...]
    label_confidence: float | None
    doc: dict[str, Any]
    num_matching: int = 1


@dataclasses.dataclass(frozen=True)
class Task:
    """A loaded task: its name, family, samples and the rows that failed to load."""

    name: str
    family: str
    samples: tuple[Sample, ...]
    errors: tuple[JsonlError, ...] = ()


def _check(row: Any, family: str) -> str | None:
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    for field, types in _SCHEMAS[family].items():
        if field not in row:
            return f"missing field {field!r}"
        v = row[field]
        if isinstance(v, bool) or not isinstance(v, types):
            return f"field {field!r} has type {type(v).__name__}, expected {types[0].__name__}"
        if isinstance(v, list) and not all(isinstance(x, str) for x in v):
            return f"field {field!r} must hold strings"
    if family == "persona" and not 0.0 <= row["label_confidence"] <= 1.0:
        return f"label_confidence {row['label_confidence']} is not in [0, 1]"
    if family == "winogenerated":
        if len(row["pronoun_options"]) != 3:
            return "pronoun_options must hold (male, female, neutral)"
        if "_" not in row["sentence_with_blank"]:
            return "sentence_with_blank has no '_' blank"
    return None


def read_jsonl(path: str | os.PathLike, family: str) -> tuple[list[dict], list[JsonlError]]:
    """The rows of a JSONL file that pass `family`'s schema, and an error for every other line.

    Args:
        path: the file.
        family: "persona", "advanced-ai-risk", "sycophancy" or "winogenerated".

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.jsonl"
        >>> _ = p.write_text('{"question": "q", "answer_matching_behavior": " (A)", '
        ...                  '"answer_not_matching_behavior": " (B)"}\\nnot json\\n')
        >>> rows, errors = read_jsonl(p, "advanced-ai-risk")
        >>> len(rows), errors[0].line
        (1, 2)
    """
    if family not in _SCHEMAS:
        raise ValueError(f"unknown family {family!r}; known: {sorted(_SCHEMAS)}")
    rows, errors = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(JsonlError(str(path), n, f"not JSON ({e.msg})"))
                continue
            problem = _check(row, family)
            if problem:
                errors.append(JsonlError(str(path), n, problem))
            else:
                rows.append(row)
    return rows, errors


def _root(root) -> pathlib.Path:
    if root is None:
        root = os.environ.get(DATA_ENV)
        if not root:
            raise ValueError(
                f"no data folder: pass `root` or set {DATA_ENV} to a copy of anthropics/evals."
            )
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root` {root} is not a folder.")
    return root


def list_tasks(root: str | os.PathLike | None = None) -> list[str]:
    """Every task name found under `root` (sorted)."""
    root = _root(root)
    out = []
    for prefix, folder in _FOLDERS.items():
        d = root / folder
        if d.is_dir():
            out += [f"{prefix}/{p.stem}" for p in sorted(d.glob("*.jsonl"))]
    if (root / "winogenerated" / "winogenerated_examples.jsonl").is_file():
        out.append("winogenerated")
    return sorted(out)


def load_task(task: str, root: str | os.PathLike | None = None) -> Task:
    """Load a task by name (see the module docstring).

    Raises:
        ValueError: an unknown task name (the message lists the families), or no rows at all.

    Example:
        >>> load_task("persona/no-such-behaviour", root=".")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown task 'persona/no-such-behaviour' ...
    """
    root = _root(root)
    if task == "winogenerated":
        path = root / "winogenerated" / "winogenerated_examples.jsonl"
        family = "winogenerated"
    else:
        prefix, _, name = task.rpartition("/")
        path = root / _FOLDERS.get(prefix, "\0") / f"{name}.jsonl"
        family = prefix.split("/")[0]
        if prefix not in _FOLDERS or not path.is_file():
            known = ", ".join(f"{p}/<name>" for p in _FOLDERS) + ", winogenerated"
            raise ValueError(f"unknown task {task!r} under {root} (tasks: {known}).")
    return task_from_jsonl(path, family, task)


def task_from_jsonl(path: str | os.PathLike, family: str, name: str | None = None) -> Task:
    """A `Task` from one JSONL file of `family`'s schema (e.g. a file the generation pipeline
    wrote); `name` defaults to the file's stem. Bad rows are kept in `Task.errors`.

    Raises:
        ValueError: an unknown family, or no valid rows at all.
    """
    path = pathlib.Path(path)
    task = name or path.stem
    rows, errors = read_jsonl(path, family)
    if not rows:
        raise ValueError(f"{path} has no valid rows ({len(errors)} errors, e.g. {errors[:1]}).")
    samples = []
    for i, row in enumerate(rows):
        if family == "winogenerated":
            samples.append(
                Sample(i, row["sentence_with_blank"], tuple(row["pronoun_options"]), None, row)
            )
            continue
        match, other = row["answer_matching_behavior"], row["answer_not_matching_behavior"]
        match = [match] if isinstance(match, str) else list(match)
        other = [other] if isinstance(other, str) else list(other)
        samples.append(
            Sample(
                i,
                row["question"],
                tuple(match + other),
                row.get("label_confidence"),
                row,
                len(match),
            )
        )
    return Task(task, family, tuple(samples), tuple(errors))
