"""The in-process JAX backend: a `GPT2` (pretrained from a local folder, or trained here) behind
the LM protocol, plus the trainer of the small character transformer."""

import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from ._gpt2 import GPT2, GPT2Config, gpt2_generate, gpt2_score, load_gpt2
from ._protocol import GenerateRequest
from ._token_lm import TokenLM
from ._tokenizer import CharTokenizer, Tokenizer

__all__ = ["JaxLM", "train_transformer"]


class JaxLM(TokenLM):
    """A `GPT2` and its tokenizer as an LM-protocol backend.

    Scoring runs `gpt2_score` on fixed-shape batches (`batch_size` rows, lengths padded to a
    multiple of `pad_multiple`); generation runs `gpt2_generate` vmapped over a batch with the KV
    cache. With `jit=True` (the default) this backend compiles those two functions when it is
    created — the compiled functions belong to the instance, nothing global is cached.

    Args:
        model: the `GPT2`.
        tokenizer: its tokenizer.
        batch_size: rows per scoring / generation batch.
        jit: compile the scoring and sampling functions (False runs them op by op).
        use_cache: generate with the KV cache.

    Example:
        >>> import jax
        >>> from respax.evals import CharTokenizer, GPT2, GPT2Config
        >>> tok = CharTokenizer("ab")
        >>> cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=8, n_layer=1,
        ...                  n_head=2)
        >>> lm = JaxLM(GPT2.init(cfg, key=jax.random.key(0)), tok, batch_size=2)
        >>> len(lm.loglikelihood([("ab", "ba"), ("a", "b")]))
        2
    """

    def __init__(
        self,
        model: GPT2,
        tokenizer: Tokenizer,
        batch_size: int = 8,
        jit: bool = True,
        use_cache: bool = True,
        pad_multiple: int = 32,
    ):
        if not isinstance(model, GPT2):
            raise TypeError(f"`model` must be a GPT2, got {type(model).__name__}.")
        if tokenizer.vocab_size > model.wte.shape[0]:
            raise ValueError(
                f"the tokenizer's vocab_size {tokenizer.vocab_size} exceeds the model's "
                f"{model.wte.shape[0]}."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = model.wpe.shape[0]
        self.pad_multiple = pad_multiple
        self.use_cache = use_cache

        def gen_fn(model, prompt, valid, n, temp, top_p, keys, use_cache):
            def one(x, v, t, p, k):
                return gpt2_generate(model, x, v, n, t, p, key=k, use_cache=use_cache)

            return jax.vmap(one)(prompt, valid, temp, top_p, keys)

        if jit:
            self._score = eqx.filter_jit(gpt2_score)
            self._gen = eqx.filter_jit(gen_fn)
        else:
            self._score, self._gen = gpt2_score, gen_fn

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> "JaxLM":
        """A backend for the GPT-2-family checkpoint in a local folder (see `load_gpt2`)."""
        model, tok = load_gpt2(directory)
        return cls(model, tok, **kwargs)

    def score_tokens(self, inputs, targets):
        out = self._score(self.model, jnp.asarray(inputs), jnp.asarray(targets))
        return tuple(np.asarray(a) for a in out)

    def next_logits(self, inputs, lengths):
        from ._gpt2 import gpt2_logits

        out = []
        for x, n in zip(np.asarray(inputs), np.asarray(lengths), strict=True):
            out.append(np.asarray(gpt2_logits(self.model, jnp.asarray(x[:n])))[-1])
        return np.stack(out)

    def generate_tokens(self, prompts: list[list[int]], requests: Sequence[GenerateRequest]):
        outs: list = [None] * len(prompts)
        for start in range(0, len(prompts), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(prompts))))
            n_new = max(requests[i].max_tokens for i in idx)
            n_new = -(-n_new // 16) * 16
            room = self.max_length - n_new
            if room < 1:
                raise ValueError(
                    f"max_tokens {n_new} leaves no room for a prompt in n_positions "
                    f"{self.max_length}."
                )
            cut = [prompts[i][-room:] for i in idx]
            width = -(-max(len(p) for p in cut) // self.pad_multiple) * self.pad_multiple
            width = min(width, room)
            b = self.batch_size
            x = np.zeros((b, width), np.int32)
            valid = np.zeros((b, width), bool)
            valid[:, -1] = True
            temp = np.zeros((b,), np.float32)
            top_p = np.ones((b,), np.float32)
            keys = [jax.random.key(0)] * b
            for r, (i, p) in enumerate(zip(idx, cut, strict=True)):
                x[r, width - len(p) :] = p
                valid[r, width - len(p) :] = True
                temp[r] = requests[i].temperature
                top_p[r] = requests[i].top_p
                keys[r] = jax.random.key(requests[i].seed)
            toks = self._gen(
                self.model,
                jnp.asarray(x),
                jnp.asarray(valid),
                n_new,
                jnp.asarray(temp),
                jnp.asarray(top_p),
                jnp.stack(keys),
                self.use_cache,
            )
            toks = np.asarray(toks)
            for r, i in enumerate(idx):
                outs[i] = toks[r, : requests[i].max_tokens].tolist()
        return outs


def train_transformer(
    text: str,
    config: GPT2Config | None = None,
    *,
    key: PRNGKeyArray,
    steps: int = 500,
    batch_size: int = 32,
    seq_len: int = 128,
    learning_rate: float = 3e-3,
    tokenizer: Tokenizer | None = None,
) -> JaxLM:
    """Train a small GPT-2-style model on `text` (next-token cross-entropy, AdamW with a cosine
    schedule) and return it as a `JaxLM`.

    Each step draws `batch_size` random windows of `seq_len` tokens; the first token of each
    window is replaced by end-of-text half of the time so that scoring from a fresh start (as
    the protocol does) is in distribution.

    Args:
        text: the training text.
        config: the model shape; default 2 layers of width 128 over `tokenizer`'s vocabulary.
        key: PRNG key for the initialisation and the windows.
        steps: optimizer steps.
        batch_size: windows per step.
        seq_len: tokens per window (at most `config.n_positions`).
        learning_rate: peak AdamW learning rate.
        tokenizer: default a `CharTokenizer` of `text`'s characters.

    Example:
        >>> import jax
        >>> lm = train_transformer("abcabcabc" * 20, key=jax.random.key(0), steps=2,
        ...                        batch_size=2, seq_len=8)
        >>> lm.max_length
        128
    """
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    if config is None:
        config = GPT2Config(
            vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=128, n_layer=2, n_head=4
        )
    if seq_len > config.n_positions:
        raise ValueError(f"`seq_len`={seq_len} exceeds n_positions={config.n_positions}.")
    data = np.asarray(tokenizer.encode(text), np.int32)
    if len(data) <= seq_len + 1:
        raise ValueError(f"`text` has {len(data)} tokens; need more than seq_len + 1.")
    k_init, k_data = jax.random.split(key)
    model = GPT2.init(config, key=k_init)
    warmup = max(1, steps // 20)
    # optax needs decay steps beyond the warmup: a one- or two-step run (the paper probe) too.
    sched = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1))
    opt = optax.adamw(sched, weight_decay=0.01)
    state = opt.init(eqx.filter(model, eqx.is_array))
    data_j = jnp.asarray(data)
    eot = tokenizer.eot_id

    def loss_fn(model, x, y):
        return -gpt2_score(model, x, y).logprob.mean()

    @eqx.filter_jit
    def step(model, state, k):
        ks, kb = jax.random.split(k)
        starts = jax.random.randint(ks, (batch_size,), 0, len(data) - seq_len - 1)
        win = jax.vmap(lambda s: jax.lax.dynamic_slice(data_j, (s,), (seq_len + 1,)))(starts)
        reset = jax.random.bernoulli(kb, 0.5, (batch_size,))
        win = win.at[:, 0].set(jnp.where(reset, eot, win[:, 0]))
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, win[:, :-1], win[:, 1:])
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    for k in jax.random.split(k_data, steps):
        model, state, _ = step(model, state, k)
    return JaxLM(model, tokenizer)
