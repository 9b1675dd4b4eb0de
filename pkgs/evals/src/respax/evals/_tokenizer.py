"""Tokenizers behind the in-process backends: a character tokenizer built from a corpus and a
wrapper of a `tokenizers.Tokenizer` (a GPT-2-family `tokenizer.json`)."""

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["CharTokenizer", "HFTokenizer", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the in-process backends need from a tokenizer.

    Attributes:
        vocab_size: the number of token ids.
        eot_id: the end-of-text id, used as the start of every scored text and as a stop.
    """

    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CharTokenizer:
    """One token per character of a fixed alphabet, plus `<unk>` (id 0) and `<eot>` (id 1).

    Args:
        alphabet: the characters, in id order (ids start at 2); duplicates are refused.

    Example:
        >>> tok = CharTokenizer.from_text("hello")
        >>> tok.encode("hole"), tok.decode(tok.encode("hole"))
        ([3, 5, 4, 2], 'hole')
    """

    def __init__(self, alphabet: str):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError("`alphabet` must be a non-empty str.")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("`alphabet` must not repeat characters.")
        self.alphabet = alphabet
        self._ids = {c: i + 2 for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + 2
        self.unk_id = 0
        self.eot_id = 1
        # one token per character: a context's trailing space stays in the context
        self.merges_leading_space = False

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose alphabet is the sorted set of characters of `text`."""
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, 0) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i >= 2:
                out.append(self.alphabet[i - 2])
            elif i == 0:
                out.append("\ufffd")
        return "".join(out)


class HFTokenizer:
    """A `tokenizers.Tokenizer` (e.g. GPT-2's `tokenizer.json`) behind the `Tokenizer` protocol.

    Args:
        tokenizer: the `tokenizers.Tokenizer`.
        eot_token: the end-of-text token's string.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers, decoders
        >>> t = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[]))
        >>> HFTokenizer(t).encode("ab")
        [0, 1]
    """

    def __init__(self, tokenizer, eot_token: str = "<|endoftext|>"):
        eot = tokenizer.token_to_id(eot_token)
        if eot is None:
            raise ValueError(f"the tokenizer has no end-of-text token {eot_token!r}.")
        self._tok = tokenizer
        self.eot_id = int(eot)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def from_file(cls, path: str | os.PathLike, eot_token: str = "<|endoftext|>") -> "HFTokenizer":
        """Read a `tokenizer.json`."""
        from tokenizers import Tokenizer as _T

        return cls(_T.from_file(os.fspath(path)), eot_token)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
