"""`Exact`: the dense curvature (or its diagonal blocks) and a Cholesky solve per damping."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._influence_layers import linear_block_dense, linear_layer_io
from .._influence_model import FlatModel
from ._base import (
    InfluenceFactors,
    Segments,
    Strategy,
    _check_int,
    gather,
    scatter,
    segment_size,
)


class Exact(Strategy):
    """The exact oracle: the dense curvature (or its diagonal blocks), a Cholesky solve per damping.

    Args:
        curvature: "ggn" (analytic expected Gauss-Newton, the default) or "hessian" (of the mean
            training loss; may be indefinite away from a minimum, then damping must make it
            positive definite).
        block_diagonal: keep only the blocks of the layout (one per layer by default), as EK-FAC
            and kronfluence do; False keeps the full matrix.
        mc_samples: None for the analytic GGN; an int draws that many targets per example from
            the model and uses the sampled Fisher instead (GGN only).
        chunk_size: examples (or, for the Hessian, basis vectors) per accumulation step.
        structured: with `block_diagonal` and the analytic GGN, build the block of every
            `eqx.nn.Linear` layer used once per example from its per-example inputs and
            pseudo-gradients, `(1/N) sum_n (sum_c g g^T) kron a a^T` (one contraction over the
            examples, ~C times fewer flops than `J^T J`); False uses `J^T J` for every block.

        dtype: the accumulation dtype ("float32" or "float64"); None (the default) uses the
            dtype of the model's parameters. "float64" needs `jax_enable_x64`, the oracle's usual
            setting (up to ~10k parameters).
    """

    curvature: str = eqx.field(default="ggn", static=True)
    block_diagonal: bool = eqx.field(default=False, static=True)
    mc_samples: int | None = eqx.field(default=None, static=True)
    chunk_size: int = eqx.field(default=64, static=True)
    structured: bool = eqx.field(default=True, static=True)
    dtype: str | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f'`dtype` must be None, "float32" or "float64", got {self.dtype!r}.')
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError('`dtype="float64"` needs `jax_enable_x64` (e.g. `jax.enable_x64()`).')
        if self.curvature not in ("ggn", "hessian"):
            raise ValueError(f'`curvature` must be "ggn" or "hessian", got {self.curvature!r}.')
        if self.mc_samples is not None and self.curvature != "ggn":
            raise ValueError('`mc_samples` applies only to curvature="ggn".')
        _check_int("mc_samples", self.mc_samples, allow_none=True)
        _check_int("chunk_size", self.chunk_size)

    def fit_needs_key(self) -> bool:
        return self.mc_samples is not None

    def fit(self, model, train, layout, *, key, batch_size):
        inputs, targets = train
        segments = layout.curvature_segments
        if self.curvature == "ggn":
            linear = tuple(layout.linear) or (None,) * len(segments)
            generic = [s for s, b in zip(segments, linear, strict=True) if b is None]
            structured = tuple(b for b in linear if b is not None)
            dense = iter(
                dense_ggn_blocks(
                    model,
                    inputs,
                    tuple(generic),
                    chunk_size=self.chunk_size,
                    mc_samples=self.mc_samples,
                    key=key,
                    dtype=self.dtype,
                )
                if generic
                else ()
            )
            dt = self.dtype or model.flat.dtype
            io = linear_layer_io(model, layout.plan, inputs, structured) if structured else ()
            io = iter(jax.tree.map(lambda t: t.astype(dt), io))
            mats = tuple(
                next(dense) if b is None else linear_block_dense(b, *next(io)) for b in linear
            )
        else:
            mats = dense_hessian_blocks(
                model, inputs, targets, segments, chunk_size=self.chunk_size, dtype=self.dtype
            )
        mats = tuple(
            eqx.error_if(
                m, ~jnp.all(jnp.isfinite(m)), "fit_factors: the curvature has non-finite entries."
            )
            for m in mats
        )
        return ExactFactors(matrices=mats, **layout.common(self))


class ExactFactors(InfluenceFactors):
    """Dense curvature blocks; `precondition` factors `C_b + damping I` by Cholesky."""

    matrices: tuple[Float[Array, "..."], ...]

    def precondition(self, model, g, damping, key, fit_inputs):
        segs = self.curvature_segments(model.num_params)
        out = jnp.zeros(g.shape, self.matrices[0].dtype)
        for seg, c in zip(segs, self.matrices, strict=True):
            a = c + damping * jnp.eye(c.shape[0], dtype=c.dtype)
            chol = jnp.linalg.cholesky(a)
            chol = eqx.error_if(
                chol,
                ~jnp.all(jnp.isfinite(chol)),
                "exact influence: the curvature plus damping is not positive definite (Cholesky "
                "failed); use damping > 0 large enough for a singular or indefinite curvature.",
            )
            rhs = gather(g, seg).astype(c.dtype)
            x = jax.scipy.linalg.cho_solve((chol, True), rhs.T).T
            out = scatter(out, seg, x)
        return out


def _pad_chunks(tree, chunk: int):
    """Pad the leading axis to a multiple of `chunk` and reshape to (num_chunks, chunk, ...)."""
    n = jax.tree.leaves(tree)[0].shape[0]
    m = -(-n // chunk) * chunk

    def pad(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], m - n, axis=0)]) if m > n else a
        return a.reshape((m // chunk, chunk) + a.shape[1:])

    mask = (jnp.arange(m) < n).reshape(m // chunk, chunk)
    return jax.tree.map(pad, tree), mask


def curvature_rows(model: FlatModel, inputs, mc_samples: int | None, key: PRNGKeyArray):
    """Per-example curvature factor rows `[n, r, p]` function: `(x, index) -> rows`."""
    if mc_samples is None:
        return lambda x, i: model.ggn_rows(model.flat, x)
    return lambda x, i: model.sampled_fisher_rows(
        model.flat, x, jax.random.fold_in(key, i), mc_samples
    )


def dense_ggn_blocks(
    model: FlatModel,
    inputs,
    segments: tuple[Segments, ...],
    *,
    chunk_size: int = 64,
    mc_samples: int | None = None,
    key: PRNGKeyArray | None = None,
    dtype=None,
) -> tuple[Array, ...]:
    """Dense blocks `C_b = (1/n) sum_i A_i[:, b]^T A_i[:, b]` of the analytic GGN (or the
    sampled Fisher), accumulated over chunks of examples."""
    dtype = dtype or model.flat.dtype
    n = jax.tree.leaves(inputs)[0].shape[0]
    if key is None and mc_samples is not None:
        raise ValueError("`key` is required with `mc_samples` (it draws the sampled targets).")
    key = jax.random.key(0) if key is None else key  # unused without mc_samples
    rows_fn = curvature_rows(model, inputs, mc_samples, key)
    (xs, idx), mask = _pad_chunks((inputs, jnp.arange(n)), chunk_size)

    def body(carry, chunk):
        x, i, m = chunk
        a = jnp.where(m[:, None, None], jax.vmap(rows_fn)(x, i), 0.0)  # padded rows: zero
        a = a.reshape(-1, a.shape[-1]).astype(dtype)
        new = []
        for c, seg in zip(carry, segments, strict=True):
            ab = gather(a, seg)
            new.append(c + ab.T @ ab)
        return tuple(new), None

    init = tuple(jnp.zeros((segment_size(s), segment_size(s)), dtype) for s in segments)
    blocks, _ = jax.lax.scan(body, init, (xs, idx, mask))
    return tuple(b / n for b in blocks)


def dense_hessian_blocks(
    model: FlatModel,
    inputs,
    targets,
    segments: tuple[Segments, ...],
    *,
    chunk_size: int = 64,
    dtype=None,
) -> tuple[Array, ...]:
    """Dense diagonal blocks of the Hessian of the mean training loss, by Hessian-vector products
    with basis vectors (`chunk_size` at a time)."""
    dtype = dtype or model.flat.dtype
    flat = model.flat.astype(dtype)
    out = []
    for seg in segments:
        index = jnp.asarray(np.concatenate([np.arange(a, b) for a, b in seg]))

        def column(j, seg=seg):
            e = jnp.zeros_like(flat).at[j].set(1.0)
            return gather(model.hessian_matvec(flat, inputs, targets, e), seg)

        h = jax.lax.map(column, index, batch_size=chunk_size)
        out.append(0.5 * (h + h.T))
    return tuple(out)
