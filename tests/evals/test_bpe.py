"""The committed GPT-2 ranks file (openai-whisper's MIT-licensed asset) as a tokenizer."""

import hashlib
import importlib.resources

import pytest

import respax.evals as ev


@pytest.fixture(scope="module")
def vocab():
    return ev.GPT2Vocab()


def test_hello_world(vocab):
    assert vocab.tokenizer.encode("Hello world") == [15496, 995]
    assert vocab.vocab_size == 50257 and vocab.eot_id == 50256
    assert vocab.tokenizer.vocab_size == 50257


def test_known_gpt2_encodings_and_round_trip(vocab):
    # GPT-2's published encoding of the pangram; leading/trailing spaces, digits, unicode
    assert vocab.tokenizer.encode("The quick brown fox jumps over the lazy dog.") == [
        464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13,
    ]  # fmt: skip
    assert vocab.tokenizer.encode(" hello world  ") == [23748, 995, 220, 220]
    for text in ["I'm   here!! 123456 naïve 日本語\n\n\ttab", "<|endoftext|>x", "  a\u00a0b"]:
        assert vocab.tokenizer.decode(vocab.tokenizer.encode(text)) == text
    assert vocab.tokenizer.encode("<|endoftext|>") == [50256]


def test_token_lookup_and_messages(vocab):
    assert vocab.token_id(" world") == 995 and vocab.token_text(995) == " world"
    assert vocab.is_token(" the") and not vocab.is_token("Hello world")
    with pytest.raises(ValueError, match="empty input"):
        vocab.token_id("")
    with pytest.raises(ValueError, match=r"not one GPT-2 token.*'Hello' \+ '␣world'"):
        vocab.token_id("Hello world")
    assert vocab.is_token(" following") and not vocab.is_token("following")
    with pytest.raises(ValueError, match=r"did you mean '␣following' \(with a leading space\)"):
        vocab.token_id("following")
    with pytest.raises(TypeError):
        vocab.token_id(5)
    with pytest.raises(ValueError, match="token_id"):
        vocab.token_text(50257)
    # a partial UTF-8 byte token decodes to the replacement character (the paper's filter)
    assert [vocab.token_text(i) for i in vocab.tokenizer.encode("日")] == ["\ufffd", "\ufffd"]
    assert ev.show_token(" a\nb") == "'␣a\\nb'"


def test_committed_file_and_licence():
    data = importlib.resources.files("respax.evals").joinpath("_data")
    raw = data.joinpath("gpt2.tiktoken").read_bytes()
    assert len(raw) < 1_000_000  # 835,554 bytes
    assert hashlib.sha256(raw).hexdigest().startswith("306cd27f03c1a714")
    assert "MIT License" in data.joinpath("gpt2.tiktoken.LICENSE").read_text()


def test_bad_ranks_file(tmp_path):
    p = tmp_path / "bad.tiktoken"
    p.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match="without gaps"):
        ev.GPT2Vocab(p)
    p.write_text("IQ==\n")
    with pytest.raises(ValueError, match="expected 'base64 rank'"):
        ev.GPT2Vocab(p)
