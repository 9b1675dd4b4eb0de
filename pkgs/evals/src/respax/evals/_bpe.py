"""The GPT-2 byte-level BPE vocabulary, offline: the MIT-licensed ranks file that ships in
openai-whisper's sdist (`_data/gpt2.tiktoken`, one `base64(token bytes) rank` per line) turned
into a `tokenizers` BPE model, plus the vocabulary look-ups the next-token games need (a typed
guess must be exactly one token's text, leading space included)."""

import base64
import importlib.resources
import os
from collections.abc import Sequence

from ._tokenizer import HFTokenizer

__all__ = ["GPT2Vocab", "gpt2_tokenizer", "show_token"]

EOT = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (`Ġ` is the space)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _read_ranks(path: str | os.PathLike | None) -> dict[bytes, int]:
    if path is None:
        text = importlib.resources.files("respax.evals").joinpath("_data/gpt2.tiktoken").read_text()
        where = "respax/evals/_data/gpt2.tiktoken"
    else:
        with open(path, encoding="ascii") as f:
            text = f.read()
        where = os.fspath(path)
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{where}:{n}: expected 'base64 rank', got {line[:40]!r}.")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{where}: the ranks are not 0..{len(ranks) - 1} without gaps.")
    return ranks


class GPT2Vocab:
    """The GPT-2 vocabulary (50,257 ids: 50,256 BPE tokens and `<|endoftext|>`), its tokenizer
    and the look-ups of typed tokens.

    Args:
        path: a ranks file in the tiktoken format; default the committed copy from
            openai-whisper 20250625 (MIT licence, `_data/gpt2.tiktoken.LICENSE`).

    Attributes:
        tokenizer: an `HFTokenizer` (GPT-2 pre-tokenisation, byte-level BPE) for the LM backends,
            built when first used (the look-ups and `decode` do not need it).
        token_bytes: the bytes of each id (`<|endoftext|>` as its text).

    Example:
        >>> vocab = GPT2Vocab()
        >>> vocab.tokenizer.encode("Hello world")
        [15496, 995]
        >>> vocab.token_id(" world"), vocab.token_text(995)
        (995, ' world')
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self._ranks = _read_ranks(path)
        self._tokenizer: HFTokenizer | None = None
        self.eot_id = len(self._ranks)
        self.vocab_size = self.eot_id + 1
        self.token_bytes: list[bytes] = [b""] * self.vocab_size
        for b, r in self._ranks.items():
            self.token_bytes[r] = b
        self.token_bytes[self.eot_id] = EOT.encode()
        self._by_text: dict[str, int] = {}
        for i, b in enumerate(self.token_bytes[: self.eot_id]):
            try:
                self._by_text[b.decode("utf-8")] = i
            except UnicodeDecodeError:
                pass  # a partial UTF-8 sequence cannot be typed

    @property
    def tokenizer(self) -> HFTokenizer:
        """The `HFTokenizer` (GPT-2 pre-tokenisation, byte-level BPE), built on first use."""
        if self._tokenizer is None:
            self._tokenizer = _build_tokenizer(self._ranks)
        return self._tokenizer

    def __len__(self) -> int:
        return self.vocab_size

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a token sequence (as the GPT-2 decoder: partial UTF-8 becomes U+FFFD).

        Example:
            >>> GPT2Vocab().decode([15496, 995])
            'Hello world'
        """
        return b"".join(self.token_bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """The text of one id (partial UTF-8 bytes decode to U+FFFD, as the paper's filter
        expects)."""
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise TypeError(f"`token_id` must be an int, got {type(token_id).__name__}.")
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"`token_id` must be in 0..{self.vocab_size - 1}, got {token_id}.")
        return self.token_bytes[token_id].decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int:
        """The id of the token whose text is exactly `text` (the leading space included).

        Raises:
            TypeError: `text` is not a str.
            ValueError: `text` is empty or not one GPT-2 token; the message shows how it
                tokenizes.
        """
        if not isinstance(text, str):
            raise TypeError(f"a token must be a str, got {type(text).__name__}.")
        if text == "":
            raise ValueError("empty input: type one GPT-2 token (e.g. ' the', with its space).")
        if text in self._by_text:
            return self._by_text[text]
        pieces = [show_token(self.token_text(i)) for i in self.tokenizer.encode(text)]
        hint = ""
        if not text.startswith(" ") and (" " + text) in self._by_text:
            hint = f"; did you mean {show_token(' ' + text)} (with a leading space)?"
        raise ValueError(
            f"{show_token(text)} is not one GPT-2 token: it tokenizes as {' + '.join(pieces)}{hint}"
        )

    def is_token(self, text: str) -> bool:
        """Whether `text` is exactly one token's text."""
        return isinstance(text, str) and text in self._by_text

    def texts(self, ids: Sequence[int]) -> list[str]:
        """`token_text` of each id."""
        return [self.token_text(int(i)) for i in ids]


def _build_tokenizer(ranks: dict[bytes, int]) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    table = {b: ord(u) for b, u in _bytes_to_unicode().items()}
    uni = {b: b.decode("latin-1").translate(table) for b in ranks}
    vocab = {uni[b]: r for b, r in ranks.items()}
    # merges recovered from the ranks: every split of a token into two lower-ranked tokens,
    # applied in the order of the merged token's rank (tiktoken merges the adjacent pair whose
    # concatenation has the lowest rank, which is what this order reproduces)
    merges = []
    for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        for i in range(1, len(b)):
            rl, rr = ranks.get(b[:i]), ranks.get(b[i:])
            if rl is not None and rr is not None and rl < r and rr < r:
                merges.append((uni[b[:i]], uni[b[i:]]))
    vocab[EOT] = len(ranks)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return HFTokenizer(tok, EOT)


def gpt2_tokenizer(path: str | os.PathLike | None = None) -> HFTokenizer:
    """The GPT-2 tokenizer from the committed ranks file (see `GPT2Vocab`).

    Example:
        >>> gpt2_tokenizer().encode("Hello world")
        [15496, 995]
    """
    return GPT2Vocab(path).tokenizer


def show_token(text: str) -> str:
    """A token's text as the games display it: spaces as `␣`, newlines and tabs escaped, quoted.

    Example:
        >>> show_token(" world"), show_token("\\n")
        ("'␣world'", "'\\\\n'")
    """
    return "'" + text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") + "'"
