"""A GPT-2-style decoder in Equinox (layers stacked for `lax.scan`), its KV-cache sampler and a
loader of GPT-2-family checkpoints (Hugging Face `model.safetensors` + `config.json`)."""

import dataclasses
import json
import os
import pathlib
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

__all__ = [
    "GPT2",
    "GPT2Config",
    "TokenScores",
    "gpt2_generate",
    "gpt2_logits",
    "gpt2_score",
    "gpt2_state_dict",
    "load_gpt2",
]


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Shapes of a GPT-2-style model (the names of Hugging Face's `config.json`).

    Example:
        >>> GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4).n_embd
        32
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{f}` must be a positive int, got {v!r}.")
        if self.n_embd % self.n_head:
            raise ValueError(f"`n_embd`={self.n_embd} must be divisible by `n_head`={self.n_head}.")


class GPT2(eqx.Module):
    """GPT-2: token + position embeddings, pre-LayerNorm blocks (attention, GELU-tanh MLP), final
    LayerNorm, logits tied to the token embedding. Per-layer arrays carry a leading layer axis;
    linear weights are `[in, out]` as in the checkpoints' Conv1D.

    Example:
        >>> import jax
        >>> cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=2, n_head=2)
        >>> model = GPT2.init(cfg, key=jax.random.key(0))
        >>> gpt2_logits(model, jax.numpy.array([1, 2, 3])).shape
        (3, 50)
    """

    wte: Float[Array, "V D"]
    wpe: Float[Array, "P D"]
    ln_1_w: Float[Array, "L D"]
    ln_1_b: Float[Array, "L D"]
    attn_w: Float[Array, "L D QKV"]
    attn_b: Float[Array, "L QKV"]
    attn_proj_w: Float[Array, "L D D"]
    attn_proj_b: Float[Array, "L D"]
    ln_2_w: Float[Array, "L D"]
    ln_2_b: Float[Array, "L D"]
    fc_w: Float[Array, "L D F"]
    fc_b: Float[Array, "L F"]
    proj_w: Float[Array, "L F D"]
    proj_b: Float[Array, "L D"]
    ln_f_w: Float[Array, " D"]
    ln_f_b: Float[Array, " D"]
    n_head: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    @classmethod
    def init(cls, config: GPT2Config, *, key: PRNGKeyArray, dtype=jnp.float32) -> "GPT2":
        """Random weights as GPT-2 initialises them (normal 0.02; residual projections scaled by
        `1/sqrt(2 n_layer)`; LayerNorms at 1 and 0)."""
        c = config
        d, L, f = c.n_embd, c.n_layer, 4 * c.n_embd
        k = jax.random.split(key, 6)

        def n(key, shape, std=0.02):
            return (std * jax.random.normal(key, shape)).astype(dtype)

        res = 0.02 / np.sqrt(2 * L)
        return cls(
            wte=n(k[0], (c.vocab_size, d)),
            wpe=n(k[1], (c.n_positions, d), 0.01),
            ln_1_w=jnp.ones((L, d), dtype),
            ln_1_b=jnp.zeros((L, d), dtype),
            attn_w=n(k[2], (L, d, 3 * d)),
            attn_b=jnp.zeros((L, 3 * d), dtype),
            attn_proj_w=n(k[3], (L, d, d), res),
            attn_proj_b=jnp.zeros((L, d), dtype),
            ln_2_w=jnp.ones((L, d), dtype),
            ln_2_b=jnp.zeros((L, d), dtype),
            fc_w=n(k[4], (L, d, f)),
            fc_b=jnp.zeros((L, f), dtype),
            proj_w=n(k[5], (L, f, d), res),
            proj_b=jnp.zeros((L, d), dtype),
            ln_f_w=jnp.ones((d,), dtype),
            ln_f_b=jnp.zeros((d,), dtype),
            n_head=c.n_head,
            eps=c.layer_norm_epsilon,
        )

    @property
    def config(self) -> GPT2Config:
        return GPT2Config(
            vocab_size=self.wte.shape[0],
            n_positions=self.wpe.shape[0],
            n_embd=self.wte.shape[1],
            n_layer=self.ln_1_w.shape[0],
            n_head=self.n_head,
            layer_norm_epsilon=self.eps,
        )


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * w + b


def _layers(model: GPT2):
    return (
        model.ln_1_w,
        model.ln_1_b,
        model.attn_w,
        model.attn_b,
        model.attn_proj_w,
        model.attn_proj_b,
        model.ln_2_w,
        model.ln_2_b,
        model.fc_w,
        model.fc_b,
        model.proj_w,
        model.proj_b,
    )


def _block(model, p, h, keys_fn, mask):
    """One block on `h [T, D]`; `keys_fn(k, v) -> (k_all, v_all, carry)` supplies the keys and
    values attended to (the cache update), `mask [T, S]` which of them each query sees."""
    ln1w, ln1b, aw, ab, apw, apb, ln2w, ln2b, fw, fb, pw, pb = p
    t, d = h.shape
    nh = model.n_head
    x = _ln(h, ln1w, ln1b, model.eps)
    qkv = x @ aw + ab
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q, k, v = (a.reshape(t, nh, d // nh) for a in (q, k, v))
    k_all, v_all, carry = keys_fn(k, v)
    s = jnp.einsum("thd,shd->hts", q, k_all) / jnp.sqrt(jnp.asarray(d // nh, q.dtype))
    s = jnp.where(mask[None], s, jnp.finfo(s.dtype).min)
    a = jnp.einsum("hts,shd->thd", jax.nn.softmax(s, axis=-1), v_all).reshape(t, d)
    h = h + a @ apw + apb
    x = _ln(h, ln2w, ln2b, model.eps)
    h = h + jax.nn.gelu(x @ fw + fb, approximate=True) @ pw + pb
    return h, carry


def _hidden(model, tokens, positions, mask):
    h = model.wte[tokens] + model.wpe[positions]

    def step(h, p):
        h, _ = _block(model, p, h, lambda k, v: (k, v, None), mask)
        return h, None

    h, _ = jax.lax.scan(step, h, _layers(model))
    return _ln(h, model.ln_f_w, model.ln_f_b, model.eps)


def gpt2_logits(model: GPT2, tokens: Int[ArrayLike, " T"]) -> Float[Array, "T V"]:
    """Next-token logits at every position of one causal sequence (no padding inside)."""
    tokens = jnp.asarray(tokens)
    t = tokens.shape[0]
    if t > model.wpe.shape[0]:
        raise ValueError(f"{t} tokens exceed the model's n_positions={model.wpe.shape[0]}.")
    mask = jnp.tril(jnp.ones((t, t), bool))
    return _hidden(model, tokens, jnp.arange(t), mask) @ model.wte.T


class TokenScores(NamedTuple):
    """Per-position scores of a batch of target tokens."""

    logprob: Float[Array, "B T"]  # log p(target | inputs up to and including t)
    is_argmax: Bool[Array, "B T"]  # the target is the model's most likely token
    top_token: Int[Array, "B T"]  # the most likely token
    top_logprob: Float[Array, "B T"]  # its log-probability


def gpt2_score(
    model: GPT2, inputs: Int[ArrayLike, "B T"], targets: Int[ArrayLike, "B T"]
) -> TokenScores:
    """`log p(targets[b, t] | inputs[b, :t+1])`, whether each target is the argmax, and the argmax.

    Right padding is harmless: position t sees only positions <= t. Jit it yourself
    (`eqx.filter_jit(gpt2_score)`).
    """

    def one(x, y):
        logits = gpt2_logits(model, x).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        lp = jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        top = logp.max(-1)
        return TokenScores(lp, lp >= top, jnp.argmax(logp, -1).astype(jnp.int32), top)

    return jax.vmap(one)(jnp.asarray(inputs), jnp.asarray(targets))


def _sample(logits, temperature, top_p, key):
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits)
    z = logits / jnp.maximum(temperature, 1e-6)
    p = jax.nn.softmax(z)
    order = jnp.argsort(-p)
    ps = p[order]
    cum = jnp.cumsum(ps)
    keep_sorted = (cum - ps) < top_p
    keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
    sampled = jax.random.categorical(key, jnp.where(keep, z, -jnp.inf))
    return jnp.where(temperature == 0.0, greedy, sampled).astype(jnp.int32)


def decode_one(model: GPT2, ck, cv, token, position, slot, valid):
    """One token of cached decode: `token` at `position` writes its keys/values into cache slot
    `slot` and attends to the slots where `valid` is true. Returns the caches and the final
    layer-normed hidden state `[n_embd]`."""
    h = (model.wte[token] + model.wpe[position])[None]

    def layer(h, xs):
        p, k_l, v_l = xs

        def kv(k, v):
            k2 = jax.lax.dynamic_update_slice(k_l, k, (slot, 0, 0))
            v2 = jax.lax.dynamic_update_slice(v_l, v, (slot, 0, 0))
            return k2, v2, (k2, v2)

        return _block(model, p, h, kv, valid[None, :])

    h, (ck, cv) = jax.lax.scan(layer, h, (_layers(model), ck, cv))
    return ck, cv, _ln(h[0], model.ln_f_w, model.ln_f_b, model.eps)


def gpt2_generate(
    model: GPT2,
    prompt: Int[ArrayLike, " P"],
    prompt_valid: Bool[ArrayLike, " P"],
    num_tokens: int,
    temperature: Float[ArrayLike, ""],
    top_p: Float[ArrayLike, ""],
    *,
    key: PRNGKeyArray,
    use_cache: bool = True,
) -> Int[Array, " N"]:
    """`num_tokens` sampled after a left-padded prompt (`prompt_valid` marks its real tokens).

    With `use_cache`, keys and values of past positions are kept (one forward of the prompt,
    then one token per step); without it, every step reruns the whole sequence (the reference
    the benchmark compares against). `vmap` it over a batch; jit it yourself with
    `num_tokens`/`use_cache` static.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cfg = GPT2Config(vocab_size=20, n_positions=16, n_embd=8, n_layer=1, n_head=2)
        >>> m = GPT2.init(cfg, key=jax.random.key(0))
        >>> out = gpt2_generate(m, jnp.array([0, 3, 4]), jnp.array([False, True, True]), 4,
        ...                     jnp.float32(0.0), jnp.float32(1.0), key=jax.random.key(1))
        >>> out.shape
        (4,)
    """
    prompt, prompt_valid = jnp.asarray(prompt), jnp.asarray(prompt_valid)
    temperature, top_p = jnp.asarray(temperature), jnp.asarray(top_p)
    p_len = prompt.shape[0]
    s_len = p_len + num_tokens
    positions = jnp.clip(jnp.cumsum(prompt_valid) - 1, 0)
    n_valid = prompt_valid.sum()
    keys = jax.random.split(key, num_tokens)
    causal = jnp.tril(jnp.ones((p_len, p_len), bool)) & prompt_valid[None, :]
    causal = causal | jnp.eye(p_len, dtype=bool)
    nh, dh = model.n_head, model.wte.shape[1] // model.n_head
    n_layer = model.ln_1_w.shape[0]

    if not use_cache:
        buf = jnp.concatenate([prompt, jnp.zeros((num_tokens,), prompt.dtype)])
        valid = jnp.concatenate([prompt_valid, jnp.zeros((num_tokens,), bool)])
        pos_all = jnp.concatenate([positions, n_valid + jnp.arange(num_tokens)])

        def nocache_step(carry, i):
            buf, valid = carry
            mask = jnp.tril(jnp.ones((s_len, s_len), bool)) & valid[None, :]
            mask = mask | jnp.eye(s_len, dtype=bool)
            h = _hidden(model, buf, pos_all, mask)
            logits = h[p_len - 1 + i] @ model.wte.T
            tok = _sample(logits, temperature, top_p, keys[i])
            buf = buf.at[p_len + i].set(tok.astype(buf.dtype))
            valid = valid.at[p_len + i].set(True)
            return (buf, valid), tok

        _, toks = jax.lax.scan(nocache_step, (buf, valid), jnp.arange(num_tokens))
        return toks

    cache_k = jnp.zeros((n_layer, s_len, nh, dh), model.wte.dtype)
    cache_v = jnp.zeros_like(cache_k)

    def prefill_layer(h, xs):
        p, ck, cv = xs

        def kv(k, v):
            ck2 = jax.lax.dynamic_update_slice(ck, k, (0, 0, 0))
            cv2 = jax.lax.dynamic_update_slice(cv, v, (0, 0, 0))
            return k, v, (ck2, cv2)

        h, (ck, cv) = _block(model, p, h, kv, causal)
        return h, (ck, cv)

    h = model.wte[prompt] + model.wpe[positions]
    h, (cache_k, cache_v) = jax.lax.scan(prefill_layer, h, (_layers(model), cache_k, cache_v))
    h = _ln(h, model.ln_f_w, model.ln_f_b, model.eps)
    first = _sample(h[-1] @ model.wte.T, temperature, top_p, keys[0])
    valid0 = jnp.concatenate([prompt_valid, jnp.zeros((num_tokens,), bool)])

    def decode(carry, i):
        tok, ck_all, cv_all, valid = carry
        slot = p_len + i
        valid = valid.at[slot].set(True)
        ck_all, cv_all, h = decode_one(model, ck_all, cv_all, tok, n_valid + i, slot, valid)
        nxt = _sample(h @ model.wte.T, temperature, top_p, keys[i + 1])
        return (nxt, ck_all, cv_all, valid), tok

    if num_tokens == 1:
        return first[None]
    (last, _, _, _), toks = jax.lax.scan(
        decode, (first, cache_k, cache_v, valid0), jnp.arange(num_tokens - 1)
    )
    return jnp.concatenate([toks, last[None]])


# ---------------------------------------------------------------------------------------------
# Checkpoints in the Hugging Face GPT-2 layout.

_PER_LAYER = {
    "ln_1.weight": "ln_1_w",
    "ln_1.bias": "ln_1_b",
    "attn.c_attn.weight": "attn_w",
    "attn.c_attn.bias": "attn_b",
    "attn.c_proj.weight": "attn_proj_w",
    "attn.c_proj.bias": "attn_proj_b",
    "ln_2.weight": "ln_2_w",
    "ln_2.bias": "ln_2_b",
    "mlp.c_fc.weight": "fc_w",
    "mlp.c_fc.bias": "fc_b",
    "mlp.c_proj.weight": "proj_w",
    "mlp.c_proj.bias": "proj_b",
}
_GLOBAL = {"wte.weight": "wte", "wpe.weight": "wpe", "ln_f.weight": "ln_f_w", "ln_f.bias": "ln_f_b"}


def gpt2_state_dict(model: GPT2) -> dict[str, np.ndarray]:
    """The model's weights under the Hugging Face GPT-2 tensor names (`h.0.attn.c_attn.weight`,
    ...), e.g. to write with `safetensors.numpy.save_file`."""
    out = {name: np.asarray(getattr(model, f)) for name, f in _GLOBAL.items()}
    for i in range(model.ln_1_w.shape[0]):
        for name, f in _PER_LAYER.items():
            out[f"h.{i}.{name}"] = np.asarray(getattr(model, f)[i])
    return out


def load_gpt2(directory: str | os.PathLike, dtype=jnp.float32):
    """Load a GPT-2-family checkpoint from a local folder: `config.json`, `model.safetensors` and
    `tokenizer.json` (the Hugging Face layout; nothing is downloaded).

    Args:
        directory: the folder.
        dtype: the weights' dtype in memory.

    Returns:
        `(model, tokenizer)`: a `GPT2` and an `HFTokenizer`.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a tensor is missing or misshapen.
    """
    from safetensors.numpy import load_file

    from ._tokenizer import HFTokenizer

    d = pathlib.Path(directory)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"`directory` {d} has no {f} (a GPT-2 checkpoint folder).")
    raw = json.loads((d / "config.json").read_text())
    cfg = GPT2Config(
        vocab_size=raw["vocab_size"],
        n_positions=raw.get("n_positions", raw.get("n_ctx", 1024)),
        n_embd=raw["n_embd"],
        n_layer=raw["n_layer"],
        n_head=raw["n_head"],
        layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
    )
    tensors = load_file(d / "model.safetensors")
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    template = GPT2.init(cfg, key=jax.random.key(0), dtype=dtype)

    def get(name, shape):
        if name not in tensors:
            raise ValueError(f"{d / 'model.safetensors'} has no tensor {name!r}.")
        a = tensors[name]
        if a.shape != shape:
            raise ValueError(f"tensor {name!r} has shape {a.shape}, expected {shape}.")
        return jnp.asarray(a, dtype)

    fields = {f: get(name, getattr(template, f).shape) for name, f in _GLOBAL.items()}
    for name, f in _PER_LAYER.items():
        shape = getattr(template, f).shape[1:]
        fields[f] = jnp.stack([get(f"h.{i}.{name}", shape) for i in range(cfg.n_layer)])
    model = eqx.tree_at(lambda m: [getattr(m, f) for f in fields], template, list(fields.values()))
    return model, HFTokenizer.from_file(d / "tokenizer.json")
