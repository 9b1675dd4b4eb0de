"""Kronecker-factored curvature as pytrees: K-FAC factors, damped inverses and EK-FAC.

`KFACFactors` holds, for every parameter group of a `CapturePlan`, either two Kronecker factors
`A` (inputs) and `G` (output cotangents) with `F_block ≈ G ⊗ A` on the layer's `[out, in(+1)]`
matrix
(`layer_to_matrix`), or a dense (`[p, p]`) or diagonal (`[p]`) block. `EKFACFactors` holds the
eigenbases of those factors and the eigenvalue corrections: the exact second moments of the
per-example (pseudo-)gradients in the Kronecker eigenbasis (George et al., 2018).
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from respax.core import Params, Vector, check_positive, check_positive_int

from ._capture import (
    CapturePlan,
    _item_arrays,
    _items,
    _rebuild,
    kfac_stats,
    layer_to_matrix,
    matrix_to_layer,
    tap_layers,
)

__all__ = [
    "EKFACFactors",
    "KFACFactors",
    "damped_inverse",
    "fit_ekfac",
    "fit_kfac_factors",
    "kfac_eigendecomposition",
]


# ----------------------------------------------------------------------------------------------
# Item <-> flat vector helpers for dense blocks.


def _flat(item: Any) -> Array:
    return jnp.concatenate([jnp.ravel(x) for x in _item_arrays(item)])


def _unflat(item: Any, vec: Array) -> Any:
    arrays = _item_arrays(item)
    out, start = [], 0
    for x in arrays:
        n = int(np.prod(x.shape))
        out.append(vec[start : start + n].reshape(x.shape).astype(x.dtype))
        start += n
    if eqx.is_array(item):
        return out[0]
    leaves, treedef = jax.tree.flatten(item)
    it = iter(out)
    return treedef.unflatten([next(it) if eqx.is_inexact_array(x) else x for x in leaves])


def _check_vector(plan: CapturePlan, v: Any, name: str) -> list[Any]:
    items = _items(v)
    if len(items) != len(plan.layers):
        raise ValueError(
            f"`{name}` must have the structure of the model's float parameters "
            f"({len(plan.layers)} groups), got {len(items)} groups."
        )
    return items


# ----------------------------------------------------------------------------------------------
# Kronecker eigenbases (shared by EK-FAC and SOAP).


def _sym_eigh(m: Array) -> tuple[Array, Array]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric part of a square matrix."""
    return jnp.linalg.eigh(0.5 * (m + m.T))


def _to_eigenbasis(m: Array, ug: Array, ua: Array | None) -> Array:
    """`UG^T M UA`: a layer matrix's coordinates in the Kronecker eigenbasis `UA (x) UG` (`ua`
    None: the identity on the input side)."""
    r = ug.T @ m
    return r if ua is None else r @ ua


def _from_eigenbasis(r: Array, ug: Array, ua: Array | None) -> Array:
    """`UG R UA^T`, the inverse of `_to_eigenbasis` (the bases are orthogonal)."""
    r = ug @ r
    return r if ua is None else r @ ua.T


# ----------------------------------------------------------------------------------------------
# Damped inverses.


def damped_inverse(
    matrix: Float[Array, "n n"],
    damping: Float[Array, ""] | float,
    method: Literal["cholesky", "eigh"] = "cholesky",
) -> tuple[Float[Array, "n n"], Int[Array, ""], Int[Array, ""]]:
    """`(matrix + damping I)^{-1}` of a symmetric PSD matrix, robustly.

    `method="cholesky"` (default, what `kfac` uses): a Cholesky factorisation, with the damping
    floored at `eps * ||matrix||_F` (an upper bound of `eps * max eigenvalue`); when it fails
    (not positive definite in floating point, or non-finite) the eigendecomposition path below is
    used instead, and that is counted as a fallback.

    `method="eigh"`: an eigendecomposition. Negative eigenvalues (rounding) are clipped to zero
    and counted; the damping is floored at `eps * max eigenvalue` so float32 never divides by ~0
    even for damping 1e-12; when `eigh` returns non-finite values the inverse falls back to the
    damped diagonal, and that is counted as a fallback.

    Args:
        matrix: a symmetric PSD matrix.
        damping: >= 0.
        method: `"cholesky"` (with the eigh path as fallback) or `"eigh"`.

    Returns:
        `(inverse, fallbacks, num_clipped)`: the inverse, the number of fallbacks taken
        (Cholesky -> eigh, eigh -> diagonal: 0, 1 or 2) and the number of clipped eigenvalues.

    Example:
        >>> import jax.numpy as jnp
        >>> inv, fallbacks, clipped = damped_inverse(jnp.eye(2) * 3.0, 1.0)
        >>> inv, int(fallbacks), int(clipped)
        (Array([[0.25, 0.  ],
               [0.  , 0.25]], dtype=float32), 0, 0)
    """
    if method not in ("cholesky", "eigh"):
        raise ValueError(f"`method` must be 'cholesky' or 'eigh', got {method!r}.")
    if method == "eigh":
        return _eigh_inverse(matrix, damping)
    invs, fbs, cls = _grouped_inverses([matrix], [jnp.asarray(damping)])
    return invs[0], fbs, cls


def _eigh_inverse(matrix: Array, damping) -> tuple[Array, Array, Array]:
    m = 0.5 * (matrix + matrix.T)
    s, u = jnp.linalg.eigh(m, symmetrize_input=False)
    ok = jnp.all(jnp.isfinite(s)) & jnp.all(jnp.isfinite(u))
    eps = jnp.finfo(m.dtype).eps
    clipped = jnp.sum(s < 0).astype(jnp.int32)
    s = jnp.maximum(s, 0.0)
    smax = jnp.max(jnp.where(jnp.isfinite(s), s, 0.0))
    d = jnp.maximum(jnp.asarray(damping, m.dtype), eps * smax)
    d = jnp.maximum(d, jnp.finfo(m.dtype).tiny)
    inv = (u / (s + d)) @ u.T
    diag = jnp.diagonal(m)
    diag = jnp.where(jnp.isfinite(diag), jnp.maximum(diag, 0.0), 0.0)
    d_diag = jnp.maximum(
        jnp.maximum(jnp.asarray(damping, m.dtype), eps * jnp.max(diag)), jnp.finfo(m.dtype).tiny
    )
    fallback = jnp.diag(1.0 / (diag + d_diag))
    inv = jnp.where(ok, inv, fallback)
    return inv, (~ok).astype(jnp.int32), jnp.where(ok, clipped, 0)


def _cholesky_inverses(stack: Array, damp: Array) -> tuple[Array, Array]:
    """Batched `(M_i + d_i I)^{-1}` by Cholesky; returns (inverses, failed[i])."""
    dtype = stack.dtype
    eps, tiny = jnp.finfo(dtype).eps, jnp.finfo(dtype).tiny
    m = 0.5 * (stack + jnp.swapaxes(stack, -1, -2))
    fro = jnp.sqrt(jnp.sum(m * m, axis=(-2, -1)))
    d = jnp.maximum(jnp.maximum(damp, eps * jnp.where(jnp.isfinite(fro), fro, 0.0)), tiny)
    eye = jnp.eye(m.shape[-1], dtype=dtype)

    def one(args):
        mat, di = args
        chol = jnp.linalg.cholesky(mat + di * eye, symmetrize_input=False)
        return jax.scipy.linalg.cho_solve((chol, True), eye)

    # lax.map, not a batched call: batched LAPACK runs on XLA's parallel thread pool on CPU,
    # which deadlocks when the refresh sits inside a `lax.cond` within a `lax.scan` (as in a
    # jitted training loop) under XLA's default multi-threaded CPU runtime.
    inv = jax.lax.map(one, (m, d))
    failed = ~jnp.all(jnp.isfinite(inv), axis=(-2, -1))
    return inv, failed


def _pi(a: Array, g: Array) -> Array:
    """Factored Tikhonov damping's pi = sqrt((tr A / dim A) / (tr G / dim G)) (1 when
    degenerate)."""
    ta = jnp.trace(a) / a.shape[0] if a.ndim == 2 else jnp.mean(a)
    tg = jnp.trace(g) / g.shape[0]
    tiny = jnp.finfo(ta.dtype).tiny
    ok = (ta > tiny) & (tg > tiny) & jnp.isfinite(ta) & jnp.isfinite(tg)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, ta / jnp.where(ok, tg, 1.0), 1.0)), 1.0)


def _size_classes(sizes: list[int]) -> list[list[int]]:
    """Group matrix indices into size classes, largest first: a matrix joins the current class
    (and is zero-padded to its largest size) while the padded class costs at most 1.5x the
    unpadded one, counting `max(n, 64)^3` per matrix (small LAPACK calls cost their overhead, not
    their flops). Few classes keep the compiled program small; the bound keeps padding cheap."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    cost = lambda n: max(n, 64) ** 3
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups:
            lead = sizes[groups[-1][0]]
            if (len(groups[-1]) + 1) * cost(lead) <= 1.5 * (real + cost(sizes[i])):
                groups[-1].append(i)
                real += cost(sizes[i])
                continue
        groups.append([i])
        real = cost(sizes[i])
    return groups


def _grouped_inverses(
    mats: list[Array], dampings: list[Array], method: Literal["cholesky", "eigh"] = "cholesky"
) -> tuple[list[Array], Array, Array]:
    """`damped_inverse` of many matrices, batched per size class (`_size_classes`): the matrices
    of a class are zero-padded to a common size. The padding is an exact block of zeros, so each
    matrix's inverse is the top-left block of its padded one.

    `"cholesky"`: a Cholesky per matrix (`lax.map` over the class); if any matrix fails, the whole
    class is redone by the eigh path (under `lax.cond`, so it costs nothing when unused), and each
    failed matrix is counted as a fallback. `"eigh"`: the eigh path directly."""
    groups = _size_classes([int(m.shape[0]) for m in mats])
    out: list[Array | None] = [None] * len(mats)
    fallbacks = jnp.zeros((), jnp.int32)
    clips = jnp.zeros((), jnp.int32)
    for group in groups:
        n = max(mats[i].shape[0] for i in group)
        dtype = jnp.result_type(*[mats[i].dtype for i in group])
        stack = jnp.stack(
            [jnp.pad(mats[i].astype(dtype), (0, n - mats[i].shape[0])) for i in group]
        )
        damp = jnp.stack([jnp.asarray(dampings[i], dtype) for i in group])

        def eigh_path(stack=stack, damp=damp):
            # lax.map, not vmap: a batched eigh runs LAPACK on a parallel thread pool on CPU,
            # which deadlocked inside cond/scan.
            return jax.lax.map(lambda args: _eigh_inverse(*args), (stack, damp))

        if method == "eigh":
            inv, fb, cl = eigh_path()
            fb, cl = jnp.sum(fb).astype(jnp.int32), jnp.sum(cl).astype(jnp.int32)
        else:
            inv, failed = _cholesky_inverses(stack, damp)
            n_failed = jnp.sum(failed.astype(jnp.int32)).astype(jnp.int32)

            def redo(_, eigh_path=eigh_path, n_failed=n_failed):
                inv_e, fb_e, cl_e = eigh_path()
                i32 = lambda x: jnp.sum(x).astype(jnp.int32)
                return inv_e, n_failed + i32(fb_e), i32(cl_e)

            def keep(_, inv=inv, n_failed=n_failed):
                return inv, n_failed, jnp.zeros((), jnp.int32)

            inv, fb, cl = jax.lax.cond(n_failed > 0, redo, keep, None)
        fallbacks = fallbacks + fb.astype(jnp.int32)
        clips = clips + cl.astype(jnp.int32)
        for j, i in enumerate(group):
            k = mats[i].shape[0]
            out[i] = inv[j, :k, :k].astype(mats[i].dtype)
    return out, fallbacks, clips


def _block_inverses(
    plan: CapturePlan, blocks: tuple, damping, method: Literal["cholesky", "eigh"] = "cholesky"
) -> tuple[tuple, Array, Array]:
    """Factored-Tikhonov (pi) damped inverses of every block; returns (inverses, fallbacks,
    clips)."""
    mats, damps, where = [], [], []
    out: list[dict] = []
    clips = jnp.zeros((), jnp.int32)
    sq = jnp.sqrt(jnp.asarray(damping))

    def add(mat, d, slot):
        mats.append(mat)
        damps.append(d)
        where.append(slot)

    for idx, (info, blk) in enumerate(zip(plan.layers, blocks, strict=True)):
        if info.is_kronecker:
            a, g = blk["A"], blk["G"]
            pi = _pi(a, g)
            entry = {}
            add(g, sq / pi, (idx, "G"))
            if a.ndim == 1:  # Embedding: diagonal input factor
                a_pos = jnp.maximum(a, 0.0)
                da = jnp.maximum((sq * pi).astype(a.dtype), jnp.finfo(a.dtype).eps * jnp.max(a_pos))
                entry["A"] = 1.0 / (a_pos + jnp.maximum(da, jnp.finfo(a.dtype).tiny))
                clips = clips + jnp.sum(a < 0).astype(jnp.int32)
            else:
                add(a, sq * pi, (idx, "A"))
            out.append(entry)
        elif blk["F"].ndim == 2:
            add(blk["F"], jnp.asarray(damping), (idx, "F"))
            out.append({})
        else:
            f = blk["F"]
            d = jnp.maximum(jnp.asarray(damping, f.dtype), jnp.finfo(f.dtype).tiny)
            out.append({"F": 1.0 / (jnp.maximum(f, 0.0) + d)})
            clips = clips + jnp.sum(f < 0).astype(jnp.int32)
    invs, fallbacks, more_clips = _grouped_inverses(mats, damps, method) if mats else ([], 0, 0)
    for (idx, name), inv in zip(where, invs, strict=True):
        out[idx][name] = inv
    out = [{k: e[k] for k in sorted(e, key=lambda k: "AGF".index(k))} for e in out]
    return (
        tuple(out),
        jnp.asarray(fallbacks, jnp.int32),
        jnp.asarray(clips + more_clips, jnp.int32),
    )


def _apply_blocks(plan: CapturePlan, mats: tuple, v: Any, name: str = "v") -> Any:
    """Apply per-group matrices (`G @ M @ A` on Kronecker groups, `F @ vec` on dense groups)."""
    items = _check_vector(plan, v, name)
    new = []
    for info, blk, item in zip(plan.layers, mats, items, strict=True):
        if info.is_kronecker:
            m = layer_to_matrix(info.kind, item)
            a, g = blk["A"], blk["G"]
            m = g @ m
            m = m * a[None, :] if a.ndim == 1 else m @ a
            new.append(matrix_to_layer(info.kind, item, m))
        else:
            f = blk["F"]
            vec = _flat(item)
            new.append(_unflat(item, f @ vec if f.ndim == 2 else f * vec))
    return _rebuild(v, new)


# ----------------------------------------------------------------------------------------------
# K-FAC factors as a pytree.


class KFACFactors(eqx.Module):
    """Kronecker factors of a curvature matrix, one block per parameter group of `plan`.

    `blocks[i]` is `{"A": [a, a] or [a], "G": [g, g]}` for Kronecker groups and `{"F": [p, p] or
    [p]}` for dense/diagonal groups; the block of a Kronecker group is `G ⊗ A` acting on
    `layer_to_matrix(...)` (row-major), i.e. `M -> G M A`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.curvature import capture_layers, fit_kfac_factors
        >>> lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
        >>> plan = capture_layers(lin, GaussianLoss(), jnp.zeros(2))
        >>> factors = fit_kfac_factors(plan, lin, jnp.eye(2) * 2.0)
        >>> factors.blocks[0]["A"]  # E[a a^T] with a = (x, 1)
        Array([[2., 0., 1.],
               [0., 2., 1.],
               [1., 1., 1.]], dtype=float32)
    """

    plan: CapturePlan = eqx.field(static=True)
    blocks: tuple

    def mv(self, v: Vector) -> Vector:
        """The block-diagonal K-FAC matrix times `v` (a pytree of the float parameters)."""
        return _apply_blocks(self.plan, self.blocks, v)

    def inverse_vp(self, v: Vector, damping: float | Float[Array, ""]) -> Vector:
        """`(K-FAC with factored pi-Tikhonov damping)^{-1} v`: `(G + sqrt(d)/pi I)^{-1} M
        (A + pi sqrt(d) I)^{-1}` per Kronecker group, `(F + d I)^{-1}` on dense groups (the
        inverses by `damped_inverse`'s Cholesky path, eigh where it fails)."""
        check_positive("damping", damping, allow_zero=True)
        inv, _, _ = _block_inverses(self.plan, self.blocks, damping)
        return _apply_blocks(self.plan, inv, v)

    def as_operator(self, like: Vector) -> lx.FunctionLinearOperator:
        """The K-FAC matrix as a symmetric PSD lineax operator over pytrees shaped like `like`."""
        structure = jax.eval_shape(lambda: like)
        return lx.FunctionLinearOperator(
            self.mv, structure, (lx.symmetric_tag, lx.positive_semidefinite_tag)
        )


def _batches(inputs, targets, batch_size):
    n = jax.tree.leaves(inputs)[0].shape[0]
    bs = n if batch_size is None else batch_size
    check_positive_int("batch_size", bs)
    if n % bs:
        raise ValueError(f"`batch_size` must divide the number of examples {n}, got {bs}.")
    nb = n // bs
    split = lambda t: (
        None if t is None else jax.tree.map(lambda x: x.reshape((nb, bs) + x.shape[1:]), t)
    )
    return nb, split(inputs), split(targets)


def _dummy_targets(plan: CapturePlan, params, inputs):
    """Targets for modes that do not read them (only the loss value uses them)."""
    diff, _ = eqx.partition(params, eqx.is_inexact_array)
    model = eqx.combine(diff, plan.static)
    x0 = jax.tree.map(lambda x: x[0], inputs)
    # Only the shape and dtype of one example's targets matter: no random draw.
    t = jax.eval_shape(plan.output_loss.sample_targets, jax.random.key(0), plan.apply(model, x0))
    n = jax.tree.leaves(inputs)[0].shape[0]
    return jax.tree.map(lambda x: jnp.zeros((n,) + tuple(x.shape), x.dtype), t)


def _batch_keys(mode: str, key: PRNGKeyArray | None, nb: int):
    """One key per batch for `mode="mc"` (where `key` is required), zeros otherwise (unused)."""
    if mode == "mc":
        if key is None:
            raise ValueError("`key` is required for mode='mc' (a PRNG key for the sampled labels).")
        return jax.random.split(key, nb)
    return jnp.zeros((nb,))


def fit_kfac_factors(
    plan: CapturePlan,
    params: Params,
    inputs: Any,
    targets: Any = None,
    *,
    mode: Literal["expected", "mc", "empirical"] = "expected",
    key: PRNGKeyArray | None = None,
    num_samples: int = 1,
    batch_size: int | None = None,
) -> KFACFactors:
    """K-FAC factors averaged over a dataset (for influence functions and analysis).

    Args:
        plan: from `capture_layers`.
        params: the model (or its float part).
        inputs: the dataset's inputs (leading axis = examples).
        targets: the targets; needed only for `mode="empirical"`.
        mode: `"expected"` (analytic GGN/Fisher, default), `"mc"` or `"empirical"`.
        key: PRNG key, required for `mode="mc"` and used by no other mode.
        num_samples: labels per example for `mode="mc"`.
        batch_size: examples per pass (must divide the dataset size); default all at once.

    Returns:
        `KFACFactors`, the mean of the per-batch factors.
    """
    if mode not in ("expected", "mc", "empirical"):
        raise ValueError(f"`mode` must be 'expected', 'mc' or 'empirical', got {mode!r}.")
    if mode == "empirical" and targets is None:
        raise ValueError("`targets` are required for mode='empirical'.")
    if mode == "mc" and key is None:
        raise ValueError("`key` is required for mode='mc' (a PRNG key for the sampled labels).")
    if targets is None:
        targets = _dummy_targets(plan, params, inputs)
    nb, xs, ys = _batches(inputs, targets, batch_size)
    keys = _batch_keys(mode, key, nb)

    def one(args):
        x, y, k = args
        k = k if mode == "mc" else None
        return kfac_stats(plan, params, x, y, mode=mode, key=k, num_samples=num_samples)[2]

    stats = jax.lax.map(one, (xs, ys, keys))
    return KFACFactors(plan, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats))


# ----------------------------------------------------------------------------------------------
# EK-FAC.


class EKFACFactors(eqx.Module):
    """Eigenvalue-corrected K-FAC (George et al. 2018): Kronecker eigenbases plus per-coordinate
    eigenvalues fitted to the per-example (pseudo-)gradients.

    `blocks[i]` is `{"UA": [a, a] or None, "UG": [g, g], "D": [g, a]}` for Kronecker groups (for
    Embedding the input eigenbasis is the identity and `UA` is None), `{"U": [p, p], "D": [p]}` for
    full dense groups and `{"D": [p]}` for diagonal ones. On a Kronecker group the curvature is
    `M -> UG ((UG^T M UA) * D) UA^T`.

    Use `inverse_vp(v, damping)` for damped inverse-curvature-vector products, e.g. on per-example
    gradients for influence functions (vmap it over a leading example axis).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.curvature import capture_layers, fit_ekfac
        >>> lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
        >>> plan = capture_layers(lin, GaussianLoss(), jnp.zeros(2))
        >>> ek = fit_ekfac(plan, lin, jax.random.normal(jax.random.key(1), (8, 2)))
        >>> g = eqx.filter(lin, eqx.is_inexact_array)
        >>> x = ek.inverse_vp(ek.mv(g), damping=0.0)
        >>> bool(jnp.allclose(x.weight, g.weight, atol=1e-4))
        True
    """

    plan: CapturePlan = eqx.field(static=True)
    blocks: tuple

    def _apply(self, v: Vector, fn: Callable[[Array], Array]) -> Vector:
        items = _check_vector(self.plan, v, "v")
        new = []
        for info, blk, item in zip(self.plan.layers, self.blocks, items, strict=True):
            d = fn(blk["D"])
            if info.is_kronecker:
                m = layer_to_matrix(info.kind, item)
                ug, ua = blk["UG"], blk.get("UA")
                r = _from_eigenbasis(_to_eigenbasis(m, ug, ua) * d, ug, ua)
                new.append(matrix_to_layer(info.kind, item, r))
            elif "U" in blk:
                u = blk["U"]
                new.append(_unflat(item, u @ (d * (u.T @ _flat(item)))))
            else:
                new.append(_unflat(item, d * _flat(item)))
        return _rebuild(v, new)

    def mv(self, v: Vector) -> Vector:
        """The EK-FAC curvature times `v`."""
        return self._apply(v, lambda d: d)

    def inverse_vp(self, v: Vector, damping: float | Float[Array, ""]) -> Vector:
        """`(EK-FAC + damping I)^{-1} v`, with the damping added exactly to the eigenvalues.

        `damping` may be 0 only if every corrected eigenvalue is positive; it is floored at the
        smallest positive normal number to avoid division by zero.
        """
        check_positive("damping", damping, allow_zero=True)

        def inv(d):
            dd = jnp.maximum(jnp.asarray(damping, d.dtype), jnp.finfo(d.dtype).tiny)
            return 1.0 / (jnp.maximum(d, 0.0) + dd)

        return self._apply(v, inv)

    def as_operator(self, like: Vector) -> lx.FunctionLinearOperator:
        """The EK-FAC matrix as a symmetric PSD lineax operator over pytrees shaped like `like`."""
        structure = jax.eval_shape(lambda: like)
        return lx.FunctionLinearOperator(
            self.mv, structure, (lx.symmetric_tag, lx.positive_semidefinite_tag)
        )


def kfac_eigendecomposition(factors: KFACFactors) -> EKFACFactors:
    """K-FAC factors in eigen form: the eigenbases of every factor, as `EKFACFactors` whose
    eigenvalues are those of K-FAC itself (no correction).

    On a Kronecker group `A (x) G = (UA (x) UG) diag(outer(s_G, s_A)) (UA (x) UG)^T`, so `D` is
    `outer(max(s_G, 0), max(s_A, 0))`; dense groups get `U` and `max(s, 0)`, diagonal groups keep
    their diagonal. Damping added to the result (`inverse_vp(v, damping)`) goes exactly onto the
    Kronecker product's eigenvalues, which is how "K-FAC with eigenvalue damping" is applied; the
    bases are also what `fit_ekfac` corrects.

    Args:
        factors: from `fit_kfac_factors` (or `kfac_factors_from_state`).

    Returns:
        `EKFACFactors` equal to the K-FAC curvature, up to clipping negative factor eigenvalues.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.curvature import capture_layers, fit_kfac_factors, kfac_eigendecomposition
        >>> lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
        >>> plan = capture_layers(lin, GaussianLoss(), jnp.zeros(2))
        >>> kf = fit_kfac_factors(plan, lin, jax.random.normal(jax.random.key(1), (8, 2)))
        >>> eig = kfac_eigendecomposition(kf)
        >>> g = eqx.filter(lin, eqx.is_inexact_array)
        >>> bool(jnp.allclose(eig.mv(g).weight, kf.mv(g).weight, atol=1e-5))
        True
    """
    if not isinstance(factors, KFACFactors):
        raise TypeError(
            f"`factors` must be KFACFactors (from fit_kfac_factors), got {type(factors).__name__}."
        )
    blocks = []
    for info, blk in zip(factors.plan.layers, factors.blocks, strict=True):
        if info.is_kronecker:
            sg, ug = _sym_eigh(blk["G"])
            if blk["A"].ndim == 1:
                sa, ua = blk["A"], None
            else:
                sa, ua = _sym_eigh(blk["A"])
            d = jnp.outer(jnp.maximum(sg, 0.0), jnp.maximum(sa, 0.0))
            blocks.append({"UA": ua, "UG": ug, "D": d})
        elif blk["F"].ndim == 2:
            s, u = _sym_eigh(blk["F"])
            blocks.append({"U": u, "D": jnp.maximum(s, 0.0)})
        else:
            blocks.append({"D": blk["F"]})
    return EKFACFactors(factors.plan, tuple(blocks))


def fit_ekfac(
    plan: CapturePlan,
    params: Params,
    inputs: Any,
    targets: Any = None,
    *,
    factors: KFACFactors | None = None,
    mode: Literal["expected", "mc", "empirical"] = "expected",
    key: PRNGKeyArray | None = None,
    num_samples: int = 1,
    batch_size: int | None = None,
) -> EKFACFactors:
    """Fit EK-FAC on a dataset: eigenbases of the K-FAC factors, then eigenvalue corrections.

    The corrections are `D = E[(UG^T G_n UA)^2]` over the per-example pseudo-gradients `G_n` of the
    chosen mode: for `"expected"`, `G_n = J_n^T s_{n,r}` for every column `s_{n,r}` of the output
    Hessian square root (so `E` over `n` of the sum over `r` is the exact GGN's diagonal in the
    eigenbasis); for `"mc"` sampled-label gradients; for `"empirical"` true-label gradients.
    This is the best diagonal (in Frobenius norm) of the block-diagonal curvature in the Kronecker
    eigenbasis, so EK-FAC is never further from the curvature than K-FAC on the same data.

    Args:
        plan: from `capture_layers`.
        params: the model (or its float part).
        inputs: the dataset's inputs (leading axis = examples).
        targets: needed only for `mode="empirical"`.
        factors: K-FAC factors to take the eigenbases from; default `fit_kfac_factors` with the
            same arguments.
        mode: `"expected"`, `"mc"` or `"empirical"`.
        key: PRNG key, required for `mode="mc"` and used by no other mode.
        num_samples: labels per example for `mode="mc"`.
        batch_size: examples per pass (must divide the dataset size); default all at once.

    Returns:
        `EKFACFactors`.
    """
    if mode not in ("expected", "mc", "empirical"):
        raise ValueError(f"`mode` must be 'expected', 'mc' or 'empirical', got {mode!r}.")
    if mode == "empirical" and targets is None:
        raise ValueError("`targets` are required for mode='empirical'.")
    if mode == "mc" and key is None:
        raise ValueError("`key` is required for mode='mc'.")
    if factors is None:
        factors = fit_kfac_factors(
            plan,
            params,
            inputs,
            targets,
            mode=mode,
            key=key,
            num_samples=num_samples,
            batch_size=batch_size,
        )
    # The eigenbases of K-FAC; their eigenvalues `D` are replaced by the corrections below.
    bases = kfac_eigendecomposition(factors).blocks
    diff, _ = eqx.partition(params, eqx.is_inexact_array)
    if targets is None:
        targets = _dummy_targets(plan, params, inputs)
    nb, xs, ys = _batches(inputs, targets, batch_size)
    n_total = jax.tree.leaves(inputs)[0].shape[0]
    keys = _batch_keys(mode, key, nb)
    loss_obj = plan.output_loss

    def per_example(x, ct):
        f = lambda d: plan.apply(eqx.combine(d, plan.static), x)
        _, vjp = jax.vjp(f, diff)
        return vjp(ct)[0]

    # Kronecker layers used once per example have rank-one per-example pseudo-gradients
    # `g a^T`, whose squared eigenbasis coordinates are `(UG^T g)^2 (UA^T a)^2^T`: one tapped
    # backward pass per cotangent set gives every `a` and `g` (and the per-example gradients of
    # dense and diagonal groups) without forming a per-example weight gradient. Shared layers
    # (several uses per example) keep the per-example gradients below.
    fast = tuple(not info.is_kronecker or info.sharing == "none" for info in plan.layers)

    def fast_squares(x, cts):
        """Summed squared coordinates over the batch and the cotangent sets (fast groups)."""
        taps, pe_s = tap_layers(plan, diff, x, cts)
        out = []
        for info, basis, item, ok in zip(plan.layers, bases, _items(pe_s), fast, strict=True):
            if not ok:
                out.append(None)
            elif info.is_kronecker:
                a = taps[info.index]["a"]  # (b, a_dim)
                ga = taps[info.index]["g"] @ basis["UG"]  # (sets, b, g_dim)
                aa = a if basis["UA"] is None else a @ basis["UA"]
                out.append(jnp.einsum("sbo,bi->oi", ga**2, aa**2))
            else:
                arrays = _item_arrays(item)  # each (sets, b, ...)
                flat = jnp.concatenate([t.reshape(t.shape[:2] + (-1,)) for t in arrays], -1)
                coords = flat @ basis["U"] if "U" in basis else flat
                out.append(jnp.sum(coords**2, axis=(0, 1)))
        return out

    def squares(g):
        """Squared coordinates of one pseudo-gradient pytree in the eigenbases."""
        out = []
        for info, basis, item in zip(plan.layers, bases, _items(g), strict=True):
            if info.is_kronecker:
                m = layer_to_matrix(info.kind, item)
                out.append(_to_eigenbasis(m, basis["UG"], basis["UA"]) ** 2)
            elif "U" in basis:
                out.append((basis["U"].T @ _flat(item)) ** 2)
            else:
                out.append(_flat(item) ** 2)
        return out

    def one_batch(carry, args):
        x, y, k = args
        outputs = jax.vmap(lambda xi: plan.apply(eqx.combine(diff, plan.static), xi))(x)
        if mode == "expected":
            cts = jnp.moveaxis(jax.vmap(loss_obj.hessian_sqrt)(outputs), 2, 0)
            w = 1.0
        elif mode == "mc":
            kk = jax.random.split(k, (num_samples, outputs.shape[0]))
            t = jax.vmap(lambda ks: jax.vmap(loss_obj.sample_targets)(ks, outputs))(kk)
            cts = jax.vmap(lambda ti: jax.vmap(jax.grad(loss_obj.loss))(outputs, ti))(t)
            w = 1.0 / num_samples
        else:
            cts = jax.vmap(jax.grad(loss_obj.loss))(outputs, y)[None]
            w = 1.0

        fsq = fast_squares(x, cts)
        carry = [c if f is None else c + w * f for c, f in zip(carry, fsq, strict=True)]
        if all(fast):
            return carry, None

        def per_set(acc, ct):
            sq = jax.vmap(lambda xi, ci: squares(per_example(xi, ci)))(x, ct)
            return [
                a if ok else a + w * jnp.sum(q, axis=0)
                for a, q, ok in zip(acc, sq, fast, strict=True)
            ], None

        carry, _ = jax.lax.scan(per_set, carry, cts)
        return carry, None

    zeros = jax.tree.map(jnp.zeros_like, squares(diff))
    total, _ = jax.lax.scan(one_batch, zeros, (xs, ys, keys))
    blocks = []
    for basis, d in zip(bases, total, strict=True):
        blk = dict(basis)
        blk["D"] = d / n_total
        blocks.append(blk)
    return EKFACFactors(plan, tuple(blocks))
