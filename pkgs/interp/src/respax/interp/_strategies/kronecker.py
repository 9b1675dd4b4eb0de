"""`KFAC` and `EKFAC`: the Kronecker-factored curvatures of `respax.curvature`, optionally
refined by preconditioned CG on the exact block-diagonal GGN."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from respax.core import CG, linear_solve_with_info

from .._influence_layers import linear_block_matvec, linear_layer_io
from .._influence_model import FlatModel
from ._base import (
    InfluenceFactors,
    Segments,
    Strategy,
    _check_int,
    check_fingerprint,
    gather,
    scatter,
)


class AbstractKronecker(Strategy):
    """Abstract base of `KFAC` and `EKFAC` (the Kronecker-factored curvatures of
    `respax.curvature`); the fields are documented on `KFAC`."""

    mode: str = eqx.field(default="expected", static=True)
    num_samples: int = eqx.field(default=1, static=True)
    batch_size: int | None = eqx.field(default=None, static=True)
    refine_iterations: int = eqx.field(default=0, static=True)
    refine_dtype: str | None = eqx.field(default=None, static=True)
    block_diagonal: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if self.refine_dtype not in (None, "float32", "float64"):
            raise ValueError(
                f'`refine_dtype` must be None, "float32" or "float64", got {self.refine_dtype!r}.'
            )
        if self.mode not in ("expected", "mc", "empirical"):
            raise ValueError(f'`mode` must be "expected", "mc" or "empirical", got {self.mode!r}.')
        _check_int("num_samples", self.num_samples)
        _check_int("batch_size", self.batch_size, allow_none=True)
        r = self.refine_iterations
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 0:
            raise ValueError(f"`refine_iterations` must be an integer >= 0, got {r!r}.")

    def fit_needs_key(self) -> bool:
        return self.mode == "mc"


class KFAC(AbstractKronecker):
    """K-FAC from `respax.curvature` (analytic expected factors by default), inverted with the
    damping added exactly to the Kronecker eigenvalue products `s_G s_A + damping` (as EK-FAC,
    with the eigenvalues not corrected). Layers: `eqx.nn.Linear`, `Conv`, `Embedding` (others get
    `respax.curvature`'s dense or diagonal blocks).

    Args:
        mode: "expected" (analytic GGN, deterministic), "mc" (sampled labels) or "empirical".
        num_samples: labels per example for mode="mc".
        batch_size: examples per statistics pass (must divide N); None: all at once.
        refine_iterations: 0 (default) applies the Kronecker inverse alone. `k > 0` uses it as
            the preconditioner of `k` conjugate-gradient iterations (from zero) on the exact
            block-diagonal damped GGN over the fitting set, one block per layout block
            (`blocks` of `fit_factors`), batched over the queries; this converges to the exact
            block-diagonal influence. `k = 1` only rescales each query's Kronecker solution
            (the same per-query correlations). Each iteration costs one GGN product per block
            over the fitting set, batched over the queries: for an `eqx.nn.Linear` used once per
            example (a block of its own) four matmuls on the per-example layer inputs and
            output-Hessian pseudo-gradients that the factors keep (`t = g^T V a`,
            `V' = sum t g a^T / N`); for any other block a Jacobian and a transposed Jacobian
            product through the network per query (the factors then keep the fitting inputs).
        refine_dtype: dtype of the structured linear-layer products inside the refinement
            ("float32", "float64" or None for the parameters' dtype). The CG vectors,
            preconditioner and gradients stay in the parameters' dtype: with float64
            parameters, "float32" products halve the cost per iteration and change the
            refined scores by far less than the remaining CG error (measured on the digits MLP
            of `benchmarks/influence_vs_kronfluence.py`); float32 parameters throughout lose
            accuracy at small damping, so run the refinement with `jax_enable_x64`.

    Example:
        >>> from respax.interp import EKFAC
        >>> strategy = EKFAC(refine_iterations=8, refine_dtype="float32")
    """


class EKFAC(AbstractKronecker):
    """EK-FAC from `respax.curvature`: the K-FAC eigenbases with eigenvalues refitted to the
    per-example (analytic, by default) Gauss-Newton pseudo-gradients; damping added exactly.

    The corrected eigenvalues are the exact diagonal of each GGN block in the Kronecker
    eigenbasis, so EK-FAC is never further from the block (in Frobenius norm) than K-FAC; what
    remains is the block's off-diagonal part in that basis. `EKFAC(refine_iterations=k)` removes
    it iteratively: EK-FAC-preconditioned CG on the exact block-diagonal GGN (see `KFAC`)."""


class KroneckerFactors(InfluenceFactors):
    """K-FAC or EK-FAC factors of `respax.curvature` (an `EKFACFactors`; for K-FAC its
    eigenvalues are the Kronecker products of the factors' eigenvalues).

    With `refine_iterations > 0`: `linear` marks the layout blocks that are one once-used linear
    layer (static), and `fit_fingerprint` identifies the fitting set, whose inputs the
    refinement takes again at scoring time: the structured GGN products of the linear blocks
    use their per-example inputs and pseudo-gradients (`_influence_layers`, recomputed per
    scoring call), every other block matrix-free products. No copy of the data is kept."""

    ekfac: Any
    fit_fingerprint: Any = None
    linear: tuple = eqx.field(static=True, default=())

    def needs_fit_inputs(self) -> bool:
        return self.strategy.refine_iterations > 0

    def kronecker_inverse(self, model: FlatModel, g: Float[Array, "m p"], damping):
        def one(row):
            v = eqx.partition(model.unravel(row), eqx.is_inexact_array)[0]
            return model.ravel(self.ekfac.inverse_vp(v, damping))

        return jax.vmap(one)(g)

    def precondition(self, model, g, damping, key, fit_inputs):
        iterations = self.strategy.refine_iterations
        if iterations == 0:
            return self.kronecker_inverse(model, g, damping)
        dtype = model.flat.dtype
        g = g.astype(dtype)
        inputs = check_fingerprint(fit_inputs, self.fit_fingerprint)
        structured = tuple(b for b in self.linear if b is not None)
        layer_io = linear_layer_io(model, self.ekfac.plan, inputs, structured) if structured else ()
        matvec = block_ggn_matvec(
            model,
            inputs,
            self.block_segments,
            damping,
            self.linear,
            layer_io,
            self.strategy.refine_dtype,
        )
        precond = lambda r: self.kronecker_inverse(model, r, damping)
        return preconditioned_cg_rows(matvec, precond, g, iterations)


def block_ggn_matvec(
    model: FlatModel,
    inputs,
    segments: tuple[Segments, ...],
    damping,
    linear: tuple = (),
    layer_io: tuple = (),
    product_dtype=None,
):
    """`V -> (C_blockdiag + damping I) V` for a batch of row vectors `V` `[m, p]`: the mean GGN
    over the fitting set restricted to the diagonal blocks `segments`. Blocks with a
    `LinearBlock` in `linear` use the structured product on `layer_io` (in order; computed in
    `product_dtype`, default the arrays' own, and returned in `V`'s dtype); the others
    linearize the network once over `inputs` and take one Jacobian product and one transposed
    product per block and vector."""
    linear = tuple(linear) or (None,) * len(segments)
    generic = [seg for seg, lb in zip(segments, linear, strict=True) if lb is None]
    if generic:
        flat = model.flat
        outputs, jvp_fn = jax.linearize(lambda p: model.batch_outputs(p, inputs), flat)
        transpose = jax.linear_transpose(jvp_fn, flat)
        n = outputs.shape[0]
        hvp = jax.vmap(model.output_loss.output_hvp)

        def generic_block(seg, v):
            vb = scatter(jnp.zeros_like(v), seg, gather(v, seg))
            (gb,) = transpose(hvp(outputs, jvp_fn(vb)))
            return gather(gb, seg) / n

    # Per-example layout for the products (once, outside the iterations), in `product_dtype`.
    def layout(a, g):
        dt = product_dtype or a.dtype
        g = jnp.swapaxes(g, 0, 1).astype(dt)  # (n, c, o)
        return a.astype(dt), g, jnp.swapaxes(g, 1, 2)

    layer_io = tuple(layout(a, g) for a, g in layer_io)

    # Blocks that tile the vector in order (the usual layout) are concatenated, not scattered.
    bounds = [ab for seg in segments for ab in seg]
    tiled = all(len(seg) == 1 for seg in segments) and all(
        b0[1] == b1[0] for b0, b1 in zip(bounds, bounds[1:], strict=False)
    )

    def matvec(v):
        io = iter(layer_io)
        parts = []
        for seg, lb in zip(segments, linear, strict=True):
            if lb is None:
                cb = jax.vmap(lambda row, seg=seg: generic_block(seg, row))(v)
            else:
                a, g, g_t = next(io)
                vb = gather(v, seg).astype(a.dtype)
                cb = linear_block_matvec(lb, a, g, vb, g_t).astype(v.dtype)
            parts.append(cb)
        if tiled and bounds[0][0] == 0 and bounds[-1][1] == v.shape[-1]:
            return damping * v + jnp.concatenate(parts, axis=-1)
        out = damping * v
        for seg, cb in zip(segments, parts, strict=True):
            out = scatter(out, seg, gather(out, seg) + cb)
        return out

    return matvec


def preconditioned_cg_rows(matvec, precond, b: Float[Array, "m p"], num_iterations: int):
    """`respax.core.CG` with a preconditioner, exactly `num_iterations` steps from zero, for every
    row of `b` (vmapped: per-row step sizes). `matvec` and `precond` act on row batches."""
    like = jax.ShapeDtypeStruct(b.shape[1:], b.dtype)
    operator = lx.FunctionLinearOperator(lambda v: matvec(v[None])[0], like, lx.symmetric_tag)
    preconditioner = lx.FunctionLinearOperator(
        lambda r: precond(r[None])[0], like, lx.positive_semidefinite_tag
    )
    solver = CG(max_steps=num_iterations, rtol=0.0)
    options = {"preconditioner": preconditioner}
    return jax.vmap(lambda row: linear_solve_with_info(operator, row, solver, options=options)[0])(
        b
    )
