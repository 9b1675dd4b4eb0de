"""Structured Gauss-Newton blocks of linear layers, for the refined EK-FAC and the exact oracle.

For an `eqx.nn.Linear` applied once per example, the per-example Gauss-Newton square-root rows
restricted to the layer are rank one: with the layer input `a_n` and the pseudo-gradient
`g_{n,c}` (the backpropagation of column `c` of the output Hessian square root to the layer's
output), the row is `vec(g_{n,c} [a_n; 1]^T)`. The layer's exact GGN block is then

    C_l = (1/N) sum_{n,c} vec(g_nc [a_n; 1]^T) vec(g_nc [a_n; 1]^T)^T,

so products with a batch of block vectors `V_q` are four matmuls (`t = g^T V a`, `V' = t g a^T`)
instead of a forward and a transposed Jacobian product through the whole network per vector, and
the dense block is one contraction over examples of `sum_c g g^T` with `a a^T`.

Layer inputs and pseudo-gradients come from `respax.curvature.tap_layers`: one forward pass and
one backward pass per Hessian square-root column. Which layers qualify (linear, used once per
example, weight and bias forming exactly one block of the influence layout) is read from
`respax.curvature.capture_layers`' plan; every other block keeps the generic matrix-free
product.
"""

import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._influence_model import FlatModel


class LinearBlock(NamedTuple):
    """Static description of a layout block that is one linear layer used once per example.

    `index` is the layer's position in the capture plan (`LayerInfo.index`); the block's flat
    layout is the weight `[out, in]` (row-major) followed by the bias `[out]` when `bias`."""

    index: int
    out_dim: int
    in_dim: int
    bias: bool


def _is_linear(x) -> bool:
    return isinstance(x, eqx.nn.Linear)


def _array_size(x) -> int:
    return int(np.prod(np.shape(x))) if eqx.is_inexact_array(x) else 0


def linear_blocks(params, plan, block_segments) -> tuple[LinearBlock | None, ...]:
    """For every layout block: a `LinearBlock` if it is exactly one once-used linear layer
    (`plan` from `respax.curvature.capture_layers`, None for no plan), else None."""
    out: list[LinearBlock | None] = [None] * len(block_segments)
    if plan is None:
        return tuple(out)
    once = {
        info.path: info.index
        for info in plan.layers
        if info.kind == "linear" and info.uses == 1 and info.sharing == "none"
    }
    diff, _ = eqx.partition(params, eqx.is_inexact_array)
    leaves, _ = jax.tree_util.tree_flatten_with_path(diff, is_leaf=_is_linear)
    where = {segs: b for b, segs in enumerate(block_segments)}
    offset = 0
    for path, leaf in leaves:
        if _is_linear(leaf):
            w, b = leaf.weight, leaf.bias
            size = _array_size(w) + _array_size(b)
            label = jax.tree_util.keystr(path) or "<root>"
            usable = (
                label in once
                and eqx.is_inexact_array(w)
                and w.ndim == 2
                and (b is None or (eqx.is_inexact_array(b) and b.shape == (w.shape[0],)))
            )
            block = where.get(((offset, offset + size),))
            if usable and block is not None:
                dims = int(w.shape[0]), int(w.shape[1])
                out[block] = LinearBlock(once[label], *dims, b is not None)
            offset += size
        else:
            offset += _array_size(leaf)
    return tuple(out)


def linear_layer_io(
    model: FlatModel, plan, inputs, blocks: tuple[LinearBlock, ...]
) -> tuple[tuple[Float[Array, "n i"], Float[Array, "c n o"]], ...]:
    """Per-example inputs `a` `[n, in]` and pseudo-gradients `g` `[c, n, out]` (one per column of
    the output Hessian square root) of every block in `blocks`, at `model.flat`, from
    `respax.curvature.tap_layers`."""
    from respax import curvature

    module = model.unravel(model.flat)
    outputs = jax.vmap(lambda x: model.apply(module, x))(inputs)
    s = jax.vmap(model.output_loss.hessian_sqrt)(outputs)  # (n, k, c)
    cts = jnp.moveaxis(s, 2, 0).astype(outputs.dtype)  # (c, n, k)
    taps, _ = curvature.tap_layers(plan, module, inputs, cts)
    # The tapped input ends with a 1 for the bias; the structured products keep the bias apart.
    return tuple((taps[b.index]["a"][:, : b.in_dim], taps[b.index]["g"]) for b in blocks)


def _split(block: LinearBlock, v: Array) -> tuple[Array, Array | None]:
    """Block vectors `[..., p_l]` -> weight part `[..., out, in]` and bias part `[..., out]`."""
    o, i = block.out_dim, block.in_dim
    w = v[..., : o * i].reshape(v.shape[:-1] + (o, i))
    return w, (v[..., o * i :] if block.bias else None)


def linear_block_matvec(
    block: LinearBlock,
    a: Float[Array, "n i"],
    g: Float[Array, "n c o"],
    v: Float[Array, "q p"],
    g_t: Float[Array, "n o c"] | None = None,
) -> Float[Array, "q p"]:
    """`C_l v_q` for a batch of block vectors (flat layout of the block), `C_l` the layer's GGN
    block averaged over the n examples. `g` is example-major here (`[n, c, o]`; `g_t` its
    `[n, o, c]` transpose, precomputed by callers that iterate): every step is then a plain or
    example-batched matmul in its natural layout (about twice as fast on CPU as letting
    `einsum` pick the layouts)."""
    n, i = a.shape
    q, o = v.shape[0], block.out_dim
    g_t = jnp.swapaxes(g, 1, 2) if g_t is None else g_t
    vw, vb = _split(block, v)
    va = (a @ jnp.transpose(vw, (2, 0, 1)).reshape(i, q * o)).reshape(n, q, o)
    if vb is not None:
        va = va + vb[None]
    u = jnp.matmul(jnp.matmul(va, g_t), g) / n  # (n, q, o): sum_c (g_c . va) g_c
    out = (a.T @ u.reshape(n, q * o)).reshape(i, q, o)
    out = jnp.transpose(out, (1, 2, 0)).reshape(q, o * i)
    if vb is not None:
        out = jnp.concatenate([out, jnp.sum(u, axis=0)], axis=-1)
    return out


def linear_block_dense(
    block: LinearBlock, a: Float[Array, "n i"], g: Float[Array, "c n o"]
) -> Float[Array, "p p"]:
    """The layer's dense GGN block (flat layout):
    `(1/n) sum_n (sum_c g g^T) kron [a; 1][a; 1]^T`."""
    n = a.shape[0]
    o, i = block.out_dim, block.in_dim
    gg = jnp.einsum("cno,cnO->noO", g, g) / n
    aa = jnp.einsum("ni,nI->niI", a, a)
    ww = jnp.einsum("noO,niI->oiOI", gg, aa).reshape(o * i, o * i)
    if not block.bias:
        return ww
    wb = jnp.einsum("noO,ni->oiO", gg, a).reshape(o * i, o)
    bb = jnp.sum(gg, axis=0)
    top = jnp.concatenate([ww, wb], axis=1)
    bottom = jnp.concatenate([wb.T, bb], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def capture_plan(apply, output_loss, params, inputs) -> Any:
    """`respax.curvature.capture_layers`' plan for the model, or None (with a warning) where the
    model cannot be captured (`respax.curvature.CaptureError`, e.g. traced parameters): every
    block then keeps the generic product. Plans are hashable values, so the jitted fits that take
    one as a static argument compile once per model structure without a cache here."""
    from respax import curvature

    x0 = jax.tree.map(lambda x: x[0], inputs)
    try:
        return curvature.capture_layers(params, output_loss, x0, apply=apply, on_uncovered="ignore")
    except curvature.CaptureError as e:
        warnings.warn(
            f"respax.interp: layer capture failed ({e}); the structured (per-layer) curvature "
            "path is not used and every block takes the generic product.",
            stacklevel=3,
        )
        return None
