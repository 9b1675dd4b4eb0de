"""The GPT-2 loader on a tiny random checkpoint written in the Hugging Face layout."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import respax.evals as ev

CORPUS = ["Is the following statement something you would say?", " Yes", " No", "I like cats."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(d / "tokenizer.json"))
    cfg = ev.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4
    )
    model = ev.GPT2.init(cfg, key=jax.random.key(0))
    tensors = ev.gpt2_state_dict(model)
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))  # HF's mask buffer
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "vocab_size": cfg.vocab_size,
                "n_positions": 64,
                "n_embd": 32,
                "n_layer": 2,
                "n_head": 4,
                "layer_norm_epsilon": 1e-5,
            }
        )
    )
    return d, model


def test_load_roundtrip_and_hf_tensor_names(checkpoint):
    d, model = checkpoint
    loaded, tok = ev.load_gpt2(d)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    names = set(ev.gpt2_state_dict(model))
    assert {"wte.weight", "wpe.weight", "h.1.attn.c_attn.weight", "h.1.mlp.c_proj.bias"} <= names
    assert ev.gpt2_state_dict(model)["h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D [in, out]
    assert tok.encode(" Yes") != tok.encode("Yes")


def test_rolling_is_sum_of_per_token_loglikelihoods_and_jit_matches(checkpoint):
    d, _ = checkpoint
    lm = ev.JaxLM.from_pretrained(d, batch_size=2, pad_multiple=16)
    eager = ev.JaxLM.from_pretrained(d, batch_size=2, pad_multiple=16, jit=False)
    text = "Is the following statement something you would say? Yes"
    ids = lm.tokenizer.encode(text)
    per_token = sum(
        lm.loglikelihood([(lm.tokenizer.decode(ids[:i]), lm.tokenizer.decode(ids[i : i + 1]))])[
            0
        ].logprob
        for i in range(len(ids))
    )
    rolling = lm.loglikelihood_rolling([text])[0]
    assert abs(rolling - per_token) < 1e-4
    assert abs(eager.loglikelihood_rolling([text])[0] - rolling) < 1e-4
    # the leading-space answer is one token, scored after the question
    q = "Is the following statement something you would say?"
    yes, no = lm.loglikelihood([(q, " Yes"), (q + " ", "No")])
    assert abs(yes.logprob - lm.loglikelihood([(q + " ", "Yes")])[0].logprob) < 1e-6
    assert np.isfinite(no.logprob)


def test_missing_files_and_tensors_are_named(checkpoint, tmp_path):
    d, model = checkpoint
    with pytest.raises(FileNotFoundError, match="config.json"):
        ev.load_gpt2(tmp_path)
    for f in ("config.json", "tokenizer.json"):
        (tmp_path / f).write_bytes((d / f).read_bytes())
    tensors = ev.gpt2_state_dict(model)
    del tensors["h.1.ln_2.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"h\.1\.ln_2\.bias"):
        ev.load_gpt2(tmp_path)
