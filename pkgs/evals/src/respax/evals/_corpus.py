"""The English corpus shipped with the package (model-written persona statements, CC-BY-4.0; see
`_data/SOURCE.md`), with a fixed 90/10 train / held-out split."""

import importlib.resources

__all__ = ["CORPUS_HELD_OUT_PERSONAS", "load_corpus"]

CORPUS_HELD_OUT_PERSONAS = (
    "agreeableness",
    "believes-AIs-are-not-an-existential-threat-to-humanity",
    "desire-for-acquiring-power",
    "narcissism",
    "politically-liberal",
    "subscribes-to-Christianity",
)


def load_corpus(split: str = "all") -> str:
    """The shipped corpus: one statement per line; "train" is the first 90% of the lines,
    "heldout" the last 10%, "all" everything.

    Example:
        >>> text = load_corpus("heldout")
        >>> text.count("\\n")
        512
    """
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"`split` must be 'all', 'train' or 'heldout', got {split!r}.")
    text = (
        importlib.resources.files("respax.evals")
        .joinpath("_data/persona_statements.txt")
        .read_text(encoding="utf-8")
    )
    if split == "all":
        return text
    lines = text.splitlines(keepends=True)
    cut = len(lines) - len(lines) // 10
    return "".join(lines[:cut] if split == "train" else lines[cut:])
