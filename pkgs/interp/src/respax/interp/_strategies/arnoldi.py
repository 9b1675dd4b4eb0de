"""`Arnoldi`: the top eigenpairs of the GGN by Lanczos (Schioppa et al. 2022)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from respax.core import lanczos_top_k

from ._base import InfluenceFactors, Strategy, _check_int, gather, scatter, segment_size


class Arnoldi(Strategy):
    """Top-`rank` eigenpairs of the GGN by Lanczos (the symmetric Arnoldi iteration, with full
    reorthogonalization), as in Schioppa et al. 2022: `sum_k (g.v_k) v_k / (lambda_k + damping)`.

    Args:
        rank: eigenpairs kept.
        num_iterations: Lanczos steps (None: `min(p, 2 rank + 10)`).
        complement: also apply `1 / damping` on the complement of the kept subspace (exact when
            the GGN has rank <= `rank`); False keeps only the subspace, as the paper does.
    """

    rank: int = eqx.field(default=64, static=True)
    num_iterations: int | None = eqx.field(default=None, static=True)
    complement: bool = eqx.field(default=False, static=True)
    block_diagonal: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        _check_int("rank", self.rank)
        _check_int("num_iterations", self.num_iterations, allow_none=True)

    def fit_needs_key(self) -> bool:
        return True  # Lanczos start vectors

    def fit(self, model, train, layout, *, key, batch_size):
        inputs = train[0]
        mv_full = lambda v: model.ggn_matvec(model.flat, inputs, v)
        evals, evecs = [], []
        for b, seg in enumerate(layout.curvature_segments):
            size = segment_size(seg)
            zeros = jnp.zeros((model.num_params,), model.flat.dtype)
            mv = lambda vb, seg=seg: gather(mv_full(scatter(zeros, seg, vb)), seg)
            rank = min(self.rank, size)
            iters = self.num_iterations or min(size, 2 * rank + 10)
            iters = max(min(iters, size), rank)
            like = jnp.zeros((size,), model.flat.dtype)
            eig = lanczos_top_k(
                mv, key=jax.random.fold_in(key, b), k=rank, num_iterations=iters, like=like
            )
            evals.append(jnp.maximum(eig.eigenvalues, 0.0))
            evecs.append(eig.eigenvectors)
        return ArnoldiFactors(
            eigenvalues=tuple(evals), eigenvectors=tuple(evecs), **layout.common(self)
        )


class ArnoldiFactors(InfluenceFactors):
    """Top eigenpairs per curvature block: `eigenvalues[b]` (r,), `eigenvectors[b]` (r, p_b)."""

    eigenvalues: tuple[Float[Array, "..."], ...]
    eigenvectors: tuple[Float[Array, "..."], ...]

    def precondition(self, model, g, damping, key, fit_inputs):
        segs = self.curvature_segments(model.num_params)
        out = jnp.zeros_like(g)
        for seg, lam, vecs in zip(segs, self.eigenvalues, self.eigenvectors, strict=True):
            gb = gather(g, seg)
            coef = gb @ vecs.T
            x = (coef / (lam + damping)) @ vecs
            if self.strategy.complement:
                x = x + (gb - coef @ vecs) / damping
            out = scatter(out, seg, x)
        return out
