"""Inverse-curvature strategies for influence: what `fit_factors` fits and how the fitted factors
apply `(C + damping I)^{-1}` to rows of gradients.

Each strategy is a small configuration module (`Exact`, `Identity`, `Diagonal`, `CG`, `Neumann`,
`LiSSA`, `Arnoldi`); `fit_factors` turns it into a factors module holding arrays only, and the
factors' `precondition(model, g, damping, key)` returns `(C + damping I)^{-1} g` row by row. `C` is
the mean over the training examples of the analytic expected Gauss-Newton matrix
`J_i^T H_i J_i` (`H_i = S_i S_i^T` from the output loss's `hessian_sqrt`), or the Hessian of the
mean loss for `Exact(curvature="hessian")`.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from respax.core import CG, Neumann, as_operator, linear_solve_with_info, lissa

from ._influence_layers import linear_block_matvec
from ._influence_model import FlatModel, batched_map

Segments = tuple[tuple[int, int], ...]


def to_segments(index: np.ndarray) -> Segments:
    """Contiguous `(start, stop)` runs of a sorted index array (hashable, for static fields)."""
    index = np.asarray(index)
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    runs = np.split(index, breaks)
    return tuple((int(r[0]), int(r[-1]) + 1) for r in runs)


def segment_size(segments: Segments) -> int:
    return sum(b - a for a, b in segments)


def gather(x: Array, segments: Segments) -> Array:
    """`x[..., index]` for the index set given as segments."""
    parts = [x[..., a:b] for a, b in segments]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def scatter(x: Array, segments: Segments, values: Array) -> Array:
    """`x.at[..., index].set(values)`."""
    offset = 0
    for a, b in segments:
        x = x.at[..., a:b].set(values[..., offset : offset + b - a])
        offset += b - a
    return x


def exact_dtype():
    """float64 when it is enabled (the oracle's dtype), float32 otherwise."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


# ----------------------------------------------------------------------------------------------
# Strategy configurations (static hyperparameters only)
# ----------------------------------------------------------------------------------------------


class Strategy(eqx.Module):
    """Base class of inverse-curvature strategies (configurations; `fit_factors` fits them)."""

    block_diagonal: eqx.AbstractVar[bool]


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

    The matrices are accumulated in float64 when `jax_enable_x64` is on (up to ~10k parameters).
    """

    curvature: str = eqx.field(default="ggn", static=True)
    block_diagonal: bool = eqx.field(default=False, static=True)
    mc_samples: int | None = eqx.field(default=None, static=True)
    chunk_size: int = eqx.field(default=64, static=True)
    structured: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if self.curvature not in ("ggn", "hessian"):
            raise ValueError(f'`curvature` must be "ggn" or "hessian", got {self.curvature!r}.')
        if self.mc_samples is not None and self.curvature != "ggn":
            raise ValueError('`mc_samples` applies only to curvature="ggn".')
        _check_int("mc_samples", self.mc_samples, allow_none=True)
        _check_int("chunk_size", self.chunk_size)


class Identity(Strategy):
    """Curvature `I`: scores are gradient dot products over `1 + damping`."""

    block_diagonal: bool = eqx.field(default=False, static=True)


class Diagonal(Strategy):
    """The exact diagonal of the analytic expected GGN (deterministic, no label sampling).

    Args:
        mc_samples: None (analytic) or the number of sampled targets per example.
    """

    mc_samples: int | None = eqx.field(default=None, static=True)
    block_diagonal: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_int("mc_samples", self.mc_samples, allow_none=True)


class MatrixFree(Strategy):
    """Matrix-free GGN products over the fitting set, solved by any lineax solver.

    The operator is `(C + damping I)` with `C` the mean GGN (block-diagonal with
    `block_diagonal=True`), one product per block per matvec; each query row is solved on its
    own (vmapped). `respax.core.CG` and `respax.core.Neumann` spend exactly `max_steps` products
    (CG may stop earlier at its tolerance); lineax's direct solvers materialize the operator.

    A `respax.core.Neumann` solver runs on the operator divided by `lambda_max + damping`, with
    `lambda_max` estimated at fit time by `power_iterations` steps of power iteration, so its
    `step_size` is a fraction of `1 / (lambda_max + damping)` (the series converges for
    `0 < step_size < 2`). Other solvers see the operator itself.

    Args:
        linear_solver: a `lineax.AbstractLinearSolver`; default `CG(max_steps=100)` (to the
            dtype's default `rtol`, sqrt(eps)).
        block_diagonal: use the block-diagonal GGN.
        power_iterations: power-iteration steps for a Neumann solver's scale.
        throw: raise when a solve fails (e.g. CG short of its tolerance); False returns the
            approximate solution as it is.

    Example:
        >>> from respax.core import CG, Neumann
        >>> from respax.interp import MatrixFree
        >>> cg = MatrixFree(CG(max_steps=200, rtol=1e-8), block_diagonal=True)
        >>> neumann = MatrixFree(Neumann(max_steps=200, step_size=1.0))
    """

    linear_solver: lx.AbstractLinearSolver = CG(max_steps=100)
    block_diagonal: bool = eqx.field(default=False, static=True)
    power_iterations: int = eqx.field(default=30, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not isinstance(self.linear_solver, lx.AbstractLinearSolver):
            raise TypeError(
                "`linear_solver` must be a lineax.AbstractLinearSolver (respax.core.CG, "
                f"respax.core.Neumann, lineax.Cholesky(), ...), got "
                f"{type(self.linear_solver).__name__}."
            )
        _check_int("power_iterations", self.power_iterations)

    @property
    def needs_lambda_max(self) -> bool:
        return isinstance(self.linear_solver, Neumann)


class LiSSA(Strategy):
    """LiSSA: the stochastic Neumann series over minibatch GGN products (`respax.core.lissa`).

    Args:
        num_iterations: recursion depth (minibatch products).
        batch_size: examples per minibatch (sampled with replacement); a batch size >= the
            fitting set's size uses the whole set every step (deterministic).
        scale: the recursion's scale (> the largest eigenvalue of every minibatch GGN plus
            damping); None uses `scale_factor * (lambda_max + damping)` with `lambda_max` from
            power iteration.
        num_repeats: independent recursions averaged.
    """

    num_iterations: int = eqx.field(default=500, static=True)
    batch_size: int = eqx.field(default=32, static=True)
    scale: float | None = eqx.field(default=None, static=True)
    scale_factor: float = eqx.field(default=2.0, static=True)
    num_repeats: int = eqx.field(default=1, static=True)
    power_iterations: int = eqx.field(default=30, static=True)
    block_diagonal: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        for name in ("num_iterations", "batch_size", "num_repeats", "power_iterations"):
            _check_int(name, getattr(self, name))
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"`scale` must be > 0 or None, got {self.scale!r}.")
        if not self.scale_factor >= 1:
            raise ValueError(f"`scale_factor` must be >= 1, got {self.scale_factor!r}.")


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


class KFAC(Strategy):
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


class EKFAC(KFAC):
    """EK-FAC from `respax.curvature`: the K-FAC eigenbases with eigenvalues refitted to the
    per-example (analytic, by default) Gauss-Newton pseudo-gradients; damping added exactly.

    The corrected eigenvalues are the exact diagonal of each GGN block in the Kronecker
    eigenbasis, so EK-FAC is never further from the block (in Frobenius norm) than K-FAC; what
    remains is the block's off-diagonal part in that basis. `EKFAC(refine_iterations=k)` removes
    it iteratively: EK-FAC-preconditioned CG on the exact block-diagonal GGN (see `KFAC`)."""


def _check_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


STRATEGIES = {
    "exact": Exact,
    "identity": Identity,
    "diagonal": Diagonal,
    "cg": lambda: MatrixFree(CG(max_steps=100)),
    "neumann": lambda: MatrixFree(Neumann(max_steps=200, step_size=1.0)),
    "lissa": LiSSA,
    "arnoldi": Arnoldi,
    "kfac": KFAC,
    "ekfac": EKFAC,
}


# ----------------------------------------------------------------------------------------------
# Fitted factors
# ----------------------------------------------------------------------------------------------


class InfluenceFactors(eqx.Module):
    """Fitted inverse-curvature factors (a pytree of arrays; save with `save_factors`).

    Attributes:
        strategy: the strategy configuration they were fitted with.
        block_names: names of the layout blocks (per-layer scores follow this order).
        block_segments: each block's index set in the flat parameter vector.
        num_examples: N, the number of examples the curvature averages over (for `normalize`).
    """

    strategy: Strategy
    block_names: tuple[str, ...] = eqx.field(static=True)
    block_segments: tuple[Segments, ...] = eqx.field(static=True)
    num_examples: int = eqx.field(static=True)

    def curvature_segments(self, num_params: int) -> tuple[Segments, ...]:
        if self.strategy.block_diagonal:
            return self.block_segments
        return (((0, num_params),),)

    def precondition(
        self, model: FlatModel, g: Float[Array, "m p"], damping, key: PRNGKeyArray
    ) -> Float[Array, "m p"]:
        raise NotImplementedError


class ExactFactors(InfluenceFactors):
    """Dense curvature blocks; `precondition` factors `C_b + damping I` by Cholesky."""

    matrices: tuple[Float[Array, "..."], ...]

    def precondition(self, model, g, damping, key):
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


class IdentityFactors(InfluenceFactors):
    def precondition(self, model, g, damping, key):
        return g / (1.0 + damping)


class DiagonalFactors(InfluenceFactors):
    diagonal: Float[Array, " p"]

    def precondition(self, model, g, damping, key):
        d = self.diagonal + damping
        d = eqx.error_if(
            d, jnp.any(d <= 0), "diagonal influence: a zero curvature entry needs damping > 0."
        )
        return g / d


class _MatrixFreeFactors(InfluenceFactors):
    """Factors of matrix-free strategies: the fitting set and a power-iteration `lambda_max`."""

    inputs: object
    lambda_max: Float[Array, ""]

    def matvec(self, model: FlatModel, inputs):
        flat = model.flat
        if not self.strategy.block_diagonal:
            return lambda v: model.ggn_matvec(flat, inputs, v)
        segs = self.block_segments

        def mv(v):
            out = jnp.zeros_like(v)
            for seg in segs:
                vb = scatter(jnp.zeros_like(v), seg, gather(v, seg))
                out = scatter(out, seg, gather(model.ggn_matvec(flat, inputs, vb), seg))
            return out

        return mv


class MatrixFreeFactors(_MatrixFreeFactors):
    def precondition(self, model, g, damping, key):
        s = self.strategy
        mv = self.matvec(model, self.inputs)
        scale = self.lambda_max + damping if s.needs_lambda_max else 1.0
        like = jnp.zeros(g.shape[1:], g.dtype)
        operator = as_operator(lambda v: (mv(v) + damping * v) / scale, like)

        def solve(b):
            return linear_solve_with_info(operator, b / scale, s.linear_solver, throw=s.throw)[0]

        return jax.vmap(solve)(g)


class LiSSAFactors(_MatrixFreeFactors):
    def precondition(self, model, g, damping, key):
        s = self.strategy
        n = jax.tree.leaves(self.inputs)[0].shape[0]
        scale = s.scale if s.scale is not None else s.scale_factor * (self.lambda_max + damping)

        if s.batch_size >= n:
            # The whole fitting set every step: deterministic (the Neumann series of C / scale).
            def hvp(batch_idx, v):
                return self.matvec(model, self.inputs)(v)
        else:

            def hvp(batch_idx, v):
                batch = jax.tree.map(lambda a: a[batch_idx], self.inputs)
                return self.matvec(model, batch)(v)

        def sample(k):
            return jax.random.randint(k, (min(s.batch_size, n),), 0, n)

        def solve(b, k):
            keys = jax.random.split(k, s.num_repeats)
            xs = jax.vmap(
                lambda kk: lissa(
                    hvp,
                    b,
                    sample,
                    key=kk,
                    max_steps=s.num_iterations,
                    scale=scale,
                    damping=damping,
                )[0]
            )(keys)
            return jnp.mean(xs, axis=0)

        return jax.vmap(solve)(g, jax.random.split(key, g.shape[0]))


class ArnoldiFactors(InfluenceFactors):
    """Top eigenpairs per curvature block: `eigenvalues[b]` (r,), `eigenvectors[b]` (r, p_b)."""

    eigenvalues: tuple[Float[Array, "..."], ...]
    eigenvectors: tuple[Float[Array, "..."], ...]

    def precondition(self, model, g, damping, key):
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


class KroneckerFactors(InfluenceFactors):
    """K-FAC or EK-FAC factors of `respax.curvature` (an `EKFACFactors`; for K-FAC its
    eigenvalues are the Kronecker products of the factors' eigenvalues).

    With `refine_iterations > 0`: `linear` marks the layout blocks that are one once-used linear
    layer (static), `layer_io` holds their per-example inputs and pseudo-gradients (structured
    GGN products, `_influence_layers`), and `inputs` the fitting inputs for every other block's
    matrix-free products (None when every block is structured)."""

    ekfac: Any
    inputs: Any = None
    layer_io: tuple = ()
    linear: tuple = eqx.field(static=True, default=())

    def kronecker_inverse(self, model: FlatModel, g: Float[Array, "m p"], damping):
        def one(row):
            v = eqx.partition(model.unravel(row), eqx.is_inexact_array)[0]
            return model.ravel(self.ekfac.inverse_vp(v, damping))

        return jax.vmap(one)(g)

    def precondition(self, model, g, damping, key):
        iterations = self.strategy.refine_iterations
        if iterations == 0:
            return self.kronecker_inverse(model, g, damping)
        dtype = model.flat.dtype
        g = g.astype(dtype)
        matvec = block_ggn_matvec(
            model,
            self.inputs,
            self.block_segments,
            damping,
            self.linear,
            self.layer_io,
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


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------


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
    dtype = dtype or exact_dtype()
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
    dtype = dtype or exact_dtype()
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


def diagonal_ggn(
    model: FlatModel, inputs, *, mc_samples: int | None = None, key=None, batch_size=None
) -> Float[Array, " p"]:
    """The exact diagonal of the analytic GGN (or of the sampled Fisher)."""
    n = jax.tree.leaves(inputs)[0].shape[0]
    if key is None and mc_samples is not None:
        raise ValueError("`key` is required with `mc_samples` (it draws the sampled targets).")
    key = jax.random.key(0) if key is None else key  # unused without mc_samples
    rows_fn = curvature_rows(model, inputs, mc_samples, key)
    sq = batched_map(
        lambda x, i: jnp.sum(rows_fn(x, i) ** 2, axis=0), (inputs, jnp.arange(n)), batch_size
    )
    return jnp.mean(sq, axis=0)


def fit_uses_key(strategy: Strategy) -> bool:
    """Whether fitting `strategy` draws random numbers (and so needs a `key`)."""
    if isinstance(strategy, LiSSA | Arnoldi):
        return True  # power iteration / Lanczos start vectors
    if isinstance(strategy, MatrixFree):
        return strategy.needs_lambda_max
    if isinstance(strategy, Exact | Diagonal):
        return strategy.mc_samples is not None
    if isinstance(strategy, KFAC):
        return strategy.mode == "mc"
    return False


def solve_uses_key(strategy: Strategy) -> bool:
    """Whether applying the fitted inverse draws random numbers (LiSSA's minibatches)."""
    return isinstance(strategy, LiSSA)


def resolve_key(key, needed: bool, where: str, strategy: Strategy):
    """`key`, required when `needed`; a fixed placeholder (never used for randomness) when not."""
    if key is not None:
        return key
    if needed:
        raise ValueError(
            f"`{where}` with {type(strategy).__name__}(...) draws random numbers: pass "
            "`key=jax.random.key(...)`."
        )
    return jax.random.key(0)
