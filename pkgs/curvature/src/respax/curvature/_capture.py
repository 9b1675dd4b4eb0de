"""Layer capture for Kronecker-factored curvature, without jaxpr pattern matching.

The Equinox module tree is walked once. Every supported layer (`eqx.nn.Linear`, `eqx.nn.Conv` with
`groups=1` and zero padding, `eqx.nn.Embedding`) is replaced, for the statistics pass only, by a
wrapper that calls the layer and routes its output through an identity with a custom VJP. That
identity takes zero "probe" arrays as extra inputs; its backward rule returns, as the probes'
cotangents, the layer's input features `a` (augmented with a 1 for the bias) and its output
cotangent `g`. Because JAX sums cotangents over every `vmap` under which an unbatched input is
broadcast, a layer the model applies at many positions (an attention projection vmapped over a
sequence, a convolution over space) yields per-example sums over positions (KFAC-reduce) and, when
asked, sums of outer products (KFAC-expand), with no knowledge of how the model is written.

`eqx.nn.LayerNorm` gets a dense block of its own (full, or diagonal when large), estimated from
exact per-example gradients: its parameters are broadcast over the batch so that their cotangents
are per-example. Every other float parameter gets the same diagonal treatment and is reported as
UNCOVERED (a warning, or an error with `on_uncovered="raise"`); nothing falls back silently.
"""

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from respax.core import (
    BernoulliLoss,
    GaussianLoss,
    OutputLoss,
    Params,
    SoftmaxCrossEntropy,
    check_positive_int,
)

__all__ = [
    "CaptureError",
    "CapturePlan",
    "LayerInfo",
    "UncoveredParameterError",
    "capture_layers",
    "kfac_stats",
    "tap_layers",
]

logger = logging.getLogger("respax.curvature")

_KRON_KINDS = ("linear", "conv", "embedding")


class CaptureError(ValueError):
    """Raised by `capture_layers` when it cannot build a plan for the model: traced parameters
    (the plan is built outside `jit`), or an `apply` that does not run on the example input."""


class UncoveredParameterError(ValueError):
    """Raised by `capture_layers(..., on_uncovered="raise")` when a parameter has no Kronecker or
    dense block."""


def _node_kind(x: Any) -> str | None:
    if isinstance(x, eqx.nn.Linear):
        return "linear"
    if isinstance(x, eqx.nn.Conv):
        if x.groups == 1 and x.padding_mode == "ZEROS":
            return "conv"
        return None
    if isinstance(x, eqx.nn.Embedding):
        return "embedding"
    if isinstance(x, eqx.nn.LayerNorm):
        return "layernorm"
    return None


def _is_node(x: Any) -> bool:
    return _node_kind(x) is not None


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One entry of the coverage report: a group of parameters and the block that covers it.

    Attributes:
        index: position in the plan (the order of `jax.tree.leaves` with layers as leaves).
        path: the parameters' path in the model, e.g. `.layers[0]`.
        kind: `linear`, `conv`, `embedding`, `layernorm` or `uncovered`.
        block: `kronecker`, `kronecker-diag` (Embedding: diagonal input factor), `full` or
            `diagonal`.
        num_params: number of scalar parameters covered.
        a_dim: size of the input factor (Kronecker blocks; includes the bias row), else 0.
        g_dim: size of the output factor (Kronecker blocks), else 0.
        uses: applications of the layer per example (> 1: shared weights).
        sharing: `none`, `expand` or `reduce` (how shared uses are factored).
    """

    index: int
    path: str
    kind: str
    block: str
    num_params: int
    a_dim: int = 0
    g_dim: int = 0
    uses: int = 1
    sharing: str = "none"

    @property
    def is_kronecker(self) -> bool:
        return self.kind in _KRON_KINDS

    @property
    def quadratic(self) -> bool:
        """Whether the statistics pass needs sums of outer products (KFAC-expand)."""
        return self.sharing == "expand"


def _call_model(model: Any, x: Any) -> Any:
    """The default `apply`: one module-level function, so that plans built without an `apply`
    compare equal."""
    return model(x)


def _leaf_key(leaf: Any) -> Any:
    """A hashable stand-in for one leaf of the non-float part of a model, equal exactly when the
    leaves are: arrays (integer buffers) by dtype, shape and bytes, hashable leaves (functions,
    numbers, strings) by themselves, anything else by identity (the plan keeps it alive)."""
    if isinstance(leaf, jax.core.Tracer):
        raise CaptureError(
            "`model` must not hold traced non-float leaves: build the plan outside `jit` / `vmap`."
        )
    if isinstance(leaf, np.ndarray | jax.Array | np.generic):
        a = np.asarray(leaf)
        return ("array", a.dtype.str, a.shape, a.tobytes())
    try:
        hash(leaf)
    except TypeError:
        return ("id", id(leaf))
    return ("leaf", type(leaf), leaf)


def _static_key(static: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(static)
    return (treedef, tuple(_leaf_key(x) for x in leaves))


@dataclasses.dataclass(frozen=True, eq=False)
class CapturePlan:
    """What `capture_layers` found: the layers, their blocks and how to run the statistics pass.

    Built once, outside `jit`; passed to `kfac_stats`, `kfac` and the EK-FAC functions. Its
    `report()` lists every parameter group and the block that covers it.

    A plan is a hashable value: two plans of models with the same structure (the same non-float
    leaves, e.g. activations, and the same layer shapes; the float parameters may differ), the
    same `apply` and equal output losses compare and hash equal, so a `jit` that takes the plan as
    a static argument (or through an `eqx.field(static=True)`) compiles once for all of them.
    """

    static: Any
    apply: Callable[[Any, Any], Any]
    output_loss: OutputLoss
    layers: tuple[LayerInfo, ...]

    def _key(self) -> tuple:
        key = self.__dict__.get("_cached_key")
        if key is None:
            key = (_static_key(self.static), self.apply, self.output_loss, self.layers)
            object.__setattr__(self, "_cached_key", key)
        return key

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, CapturePlan):
            return NotImplemented
        return bool(self._key() == other._key())

    def __hash__(self) -> int:
        # Hashed on every call of a jit that takes the plan as static: computed once.
        h = self.__dict__.get("_cached_hash")
        if h is None:
            h = hash(self._key())
            object.__setattr__(self, "_cached_hash", h)
        return h

    @property
    def num_uncovered(self) -> int:
        """How many parameter groups have only a diagonal block (0 is the goal)."""
        return sum(1 for layer in self.layers if layer.kind == "uncovered")

    def report(self) -> str:
        """A table of every parameter group and the block that covers it."""
        rows = [
            "| # | path | kind | block | params | factors | uses | sharing |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            factors = f"{layer.a_dim}x{layer.g_dim}" if layer.is_kronecker else "-"
            kind = "UNCOVERED" if layer.kind == "uncovered" else layer.kind
            rows.append(
                f"| {layer.index} | {layer.path} | {kind} | {layer.block} | {layer.num_params} "
                f"| {factors} | {layer.uses} | {layer.sharing} |"
            )
        covered = len(self.layers) - self.num_uncovered
        rows.append("")
        rows.append(
            f"{covered}/{len(self.layers)} parameter groups covered by Kronecker or dense blocks; "
            f"{self.num_uncovered} diagonal fallbacks."
        )
        return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Tree helpers: the plan's items are the supported layers and every other float array, in the
# order of `jax.tree.leaves(diff, is_leaf=_is_node)`.


def _items(diff: Any) -> list[Any]:
    return jax.tree.leaves(diff, is_leaf=_is_node)


def _rebuild(diff: Any, items: list[Any]) -> Any:
    return jax.tree.structure(diff, is_leaf=_is_node).unflatten(items)


def _item_arrays(item: Any) -> list[Array]:
    return [x for x in jax.tree.leaves(item) if eqx.is_inexact_array(x)]


def _paths(diff: Any) -> list[str]:
    with_path, _ = jax.tree_util.tree_flatten_with_path(diff, is_leaf=_is_node)
    return [jax.tree_util.keystr(p) or "<root>" for p, _ in with_path]


# ----------------------------------------------------------------------------------------------
# Kronecker matrix form of each layer's parameters: rows = output factor, columns = input factor.


def layer_to_matrix(kind: str, layer: Any) -> Float[Array, "o i"]:
    """The parameters of a Kronecker layer (or its gradient) as one matrix `[out, in(+1)]`.

    Embedding tables are returned as `[embedding_size, num_embeddings]` (output factor first)."""
    if kind == "embedding":
        return layer.weight.T
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        w = jnp.concatenate([w, layer.bias.reshape(-1, 1)], axis=1)
    return w


def matrix_to_layer(kind: str, layer: Any, m: Array) -> Any:
    """Inverse of `layer_to_matrix`: a copy of `layer` with the matrix written back."""
    if kind == "embedding":
        return eqx.tree_at(lambda lyr: lyr.weight, layer, m.T.astype(layer.weight.dtype))
    n_w = int(np.prod(layer.weight.shape[1:]))
    w = m[:, :n_w].reshape(layer.weight.shape).astype(layer.weight.dtype)
    if layer.bias is None:
        return eqx.tree_at(lambda lyr: lyr.weight, layer, w)
    b = m[:, n_w].reshape(layer.bias.shape).astype(layer.bias.dtype)
    return eqx.tree_at(lambda lyr: (lyr.weight, lyr.bias), layer, (w, b))


def _dims(kind: str, layer: Any) -> tuple[int, int]:
    if kind == "embedding":
        return int(layer.weight.shape[0]), int(layer.weight.shape[1])
    a = int(np.prod(layer.weight.shape[1:])) + (layer.bias is not None)
    return a, int(layer.weight.shape[0])


# ----------------------------------------------------------------------------------------------
# The tap: an identity on the layer output whose VJP reports the layer statistics.


def _make_tap(quadratic: bool):
    @jax.custom_vjp
    def tap(a, y, probes):
        return y

    def fwd(a, y, probes):
        return y, (a, probes)

    def bwd(res, gy):
        a, probes = res
        g = gy.reshape(-1, gy.shape[-1]) if gy.ndim else gy.reshape(1, 1)
        ct = {
            "a": jnp.sum(a, axis=0).astype(probes["a"].dtype),
            "g": jnp.sum(g, axis=0).astype(probes["g"].dtype),
            # The count must depend on batched data: a constant cotangent would not be summed
            # over the vmaps the layer runs under (bwd rules are meant to be linear).
            "c": (a.shape[0] + 0.0 * (a.ravel()[0] + g.ravel()[0])).astype(probes["c"].dtype),
        }
        if quadratic:
            if "aa" in probes:
                ct["aa"] = (a.T @ a).astype(probes["aa"].dtype)
            ct["gg"] = (g.T @ g).astype(probes["gg"].dtype)
        return jnp.zeros_like(a), gy, ct

    tap.defvjp(fwd, bwd)
    return tap


class _Tapped(eqx.Module):
    layer: Any
    probes: dict
    kind: str = eqx.field(static=True)
    quadratic: bool = eqx.field(static=True)

    def __call__(self, x, *, key: PRNGKeyArray | None = None):
        layer = self.layer
        y = layer(x)
        if self.kind == "linear":
            a = jnp.ravel(x)[None, :]
            if layer.bias is not None:
                a = jnp.concatenate([a, jnp.ones((1, 1), a.dtype)], axis=1)
            y_rows = y
        elif self.kind == "conv":
            nsd = layer.num_spatial_dims
            patches = jax.lax.conv_general_dilated_patches(
                x[None],
                filter_shape=layer.kernel_size,
                window_strides=layer.stride,
                padding=layer.padding,
                rhs_dilation=layer.dilation,
            )[0]
            a = jnp.moveaxis(patches.reshape(patches.shape[0], -1), 0, 1)
            if layer.bias is not None:
                a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
            # Output cotangent rows must be positions: move channels last inside the tap.
            y_rows = jnp.moveaxis(y, 0, nsd)
        else:  # embedding
            a = jax.nn.one_hot(x, layer.weight.shape[0], dtype=layer.weight.dtype)[None, :]
            y_rows = y
        tap = _make_tap(self.quadratic)
        out = tap(a, y_rows, self.probes)
        if self.kind == "conv":
            out = jnp.moveaxis(out, -1, 0)
        return out


# ----------------------------------------------------------------------------------------------
# The plan.


def capture_layers(
    model: Params,
    output_loss: OutputLoss,
    example_input: Any,
    *,
    apply: Callable[[Any, Any], Any] | None = None,
    sharing: Literal["expand", "reduce"] = "expand",
    dense_block_max_size: int = 2048,
    on_uncovered: Literal["warn", "raise", "ignore"] = "warn",
) -> CapturePlan:
    """Find the layers of an Equinox model and the curvature block of every parameter.

    Runs the model once on `example_input` (one example) to count how often each layer is applied
    per example (more than once means shared weights).

    Args:
        model: the Equinox model (or any pytree holding Equinox layers).
        output_loss: the output loss of the model/loss contract.
        example_input: ONE example (not a batch); zeros of the right shape are enough.
        apply: `apply(model, x) -> outputs` for one example; default `model(x)`.
        sharing: how layers applied several times per example are factored: `"expand"` (the
            positions act as extra examples) or `"reduce"` (sum over positions first).
            Convolutions always use expand (KFC).
        dense_block_max_size: LayerNorm blocks up to this many parameters are full matrices,
            larger ones diagonal.
        on_uncovered: what to do about parameters outside every supported layer (they get a
            diagonal block): log at WARNING (default), raise `UncoveredParameterError`, or nothing.

    Returns:
        A `CapturePlan`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from respax.core import SoftmaxCrossEntropy
        >>> mlp = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0))
        >>> plan = capture_layers(mlp, SoftmaxCrossEntropy(), jnp.zeros(4))
        >>> [layer.block for layer in plan.layers], plan.num_uncovered
        (['kronecker', 'kronecker', 'kronecker'], 0)
    """
    if not isinstance(output_loss, OutputLoss):
        raise TypeError(
            f"`output_loss` must be a respax.core.OutputLoss, got {type(output_loss).__name__}."
        )
    if sharing not in ("expand", "reduce"):
        raise ValueError(f"`sharing` must be 'expand' or 'reduce', got {sharing!r}.")
    if on_uncovered not in ("warn", "raise", "ignore"):
        raise ValueError(
            f"`on_uncovered` must be 'warn', 'raise' or 'ignore', got {on_uncovered!r}."
        )
    check_positive_int("dense_block_max_size", dense_block_max_size)
    if apply is None:
        apply = _call_model
    elif not callable(apply):
        raise TypeError(f"`apply` must be a callable apply(model, x) -> outputs, got {apply!r}.")
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(model)):
        raise CaptureError(
            "`model` holds traced arrays: build the plan outside `jit` / `vmap` / `grad` (it is "
            "static configuration; pass it into the traced function)."
        )
    diff, static = eqx.partition(model, eqx.is_inexact_array)
    items = _items(diff)
    paths = _paths(diff)
    infos = []
    for i, (item, path) in enumerate(zip(items, paths, strict=True)):
        kind = _node_kind(item)
        n = sum(int(np.prod(x.shape)) for x in _item_arrays(item))
        if kind in _KRON_KINDS:
            a_dim, g_dim = _dims(kind, item)
            block = "kronecker-diag" if kind == "embedding" else "kronecker"
            infos.append(LayerInfo(i, path, kind, block, n, a_dim, g_dim))
        elif kind == "layernorm":
            block = "full" if n <= dense_block_max_size else "diagonal"
            infos.append(LayerInfo(i, path, kind, block, n))
        else:
            infos.append(LayerInfo(i, path, "uncovered", "diagonal", n))
    plan = CapturePlan(static, apply, output_loss, tuple(infos))

    _check_one_example(apply, model, example_input)
    # Count uses per example with one concrete pass on the example (shapes only matter).
    counts = _count_uses(plan, diff, example_input)
    new_infos = []
    for info in infos:
        if info.is_kronecker:
            uses = int(round(float(counts[info.index])))
            if info.kind in ("conv", "embedding"):
                share = "expand" if uses > 1 or info.kind == "conv" else "none"
            else:
                share = sharing if uses > 1 else "none"
            info = dataclasses.replace(info, uses=uses, sharing=share)
        new_infos.append(info)
    plan = dataclasses.replace(plan, layers=tuple(new_infos))

    uncovered = [layer for layer in plan.layers if layer.kind == "uncovered"]
    if uncovered:
        msg = (
            f"{len(uncovered)} parameter group(s) are not covered by a Kronecker or dense "
            "block and "
            "get a diagonal block: " + ", ".join(f"{u.path} ({u.num_params})" for u in uncovered)
        )
        if on_uncovered == "raise":
            raise UncoveredParameterError(msg)
        if on_uncovered == "warn":
            logger.warning(msg)
    return plan


def _shapes(tree: Any) -> str:
    return str(jax.tree.map(lambda x: tuple(jnp.shape(x)), tree))


def _check_one_example(apply: Callable, model: Any, example_input: Any) -> None:
    """`apply(model, example_input)` must run and give a vector: a batch passed as the example
    would otherwise fail deep inside a layer (`dot_general requires contracting dimensions...`)."""
    x = jax.tree.map(jnp.asarray, example_input)
    try:
        out = eqx.filter_eval_shape(apply, model, x)
    except (TypeError, ValueError) as e:
        raise CaptureError(
            "`example_input` must be ONE example (not a batch) on which `apply(model, x)` runs; "
            f"it has shape {_shapes(example_input)} and `apply` failed with: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not hasattr(out, "shape") or len(out.shape) != 1:
        raise CaptureError(
            "`example_input` must be ONE example (not a batch): `apply(model, example_input)` "
            "must return a vector of shape (k,), got "
            f"{_shapes(out)} for `example_input` of shape {_shapes(example_input)}."
        )


def _zero_probes(plan: CapturePlan, batch: int | None, dtype, quadratic_too: bool):
    probes = {}
    for info in plan.layers:
        if not info.is_kronecker:
            continue
        lead = () if batch is None else (batch,)
        p = {
            "a": jnp.zeros(lead + (info.a_dim,), dtype),
            "g": jnp.zeros(lead + (info.g_dim,), dtype),
            "c": jnp.zeros(lead, dtype),
        }
        probes[info.index] = p
    return probes


def _quad_probes(plan: CapturePlan, dtype):
    probes = {}
    for info in plan.layers:
        if info.is_kronecker and info.quadratic:
            p = {"gg": jnp.zeros((info.g_dim, info.g_dim), dtype)}
            if info.kind != "embedding":
                p["aa"] = jnp.zeros((info.a_dim, info.a_dim), dtype)
            probes[info.index] = p
    return probes


def _tap_model(plan: CapturePlan, model: Any, probes: dict, quad: dict) -> Any:
    counter = iter(range(len(plan.layers)))
    # The full model has the same node order as its float part, but also non-float leaves; count
    # only nodes and float arrays so that indices match the plan.

    def visit(x):
        if _is_node(x):
            i = next(counter)
            info = plan.layers[i]
            if info.is_kronecker:
                p = dict(probes[i])
                if i in quad:
                    p.update(quad[i])
                return _Tapped(x, p, info.kind, i in quad)
            return x
        if eqx.is_inexact_array(x):
            next(counter)
        return x

    return jax.tree.map(visit, model, is_leaf=_is_node)


def _per_example_fn(plan: CapturePlan):
    def per_example(kron_part, pe_part, probes, quad, x):
        diff = eqx.combine(kron_part, pe_part, is_leaf=_is_node_none)
        model = eqx.combine(diff, plan.static)
        model = _tap_model(plan, model, probes, quad)
        out = plan.apply(model, x)
        if jnp.ndim(out) != 1:
            raise ValueError(
                "`apply(model, x)` must return a vector of shape (k,) for one example, got shape "
                f"{jnp.shape(out)}."
            )
        return out

    return per_example


def _is_node_none(x):
    return x is None


def _check_plan_params(plan: CapturePlan, diff: Any, name: str = "params") -> list[Any]:
    """The plan's parameter groups of `diff` (the float part of a model), after checking that
    `diff` is a model of the plan's structure: the same groups, kinds and sizes. Raises a
    `ValueError` naming `name` otherwise (e.g. another model's parameters)."""
    items = _items(diff)
    if len(items) != len(plan.layers):
        raise ValueError(
            f"`{name}` has {len(items)} parameter groups but the plan has {len(plan.layers)}; "
            "pass the model the plan was built from (or its float part)."
        )
    for info, item in zip(plan.layers, items, strict=True):
        kind = _node_kind(item)
        expected_kind = None if info.kind == "uncovered" else info.kind
        n = sum(int(np.prod(jnp.shape(x))) for x in _item_arrays(item))
        dims = _dims(kind, item) if kind in _KRON_KINDS else (info.a_dim, info.g_dim)
        if kind != expected_kind or n != info.num_params or dims != (info.a_dim, info.g_dim):
            raise ValueError(
                f"`{name}` does not match the plan at {info.path}: the plan has a {info.kind} "
                f"group of {info.num_params} parameters, `{name}` has "
                f"{kind or 'a plain array group'} of {n}; pass the model the plan was built from "
                "(or its float part)."
            )
    return items


def _split_kron_pe(plan: CapturePlan, diff: Any) -> tuple[Any, Any]:
    items = _check_plan_params(plan, diff)
    kron, pe = [], []
    for info, item in zip(plan.layers, items, strict=True):
        if info.is_kronecker:
            kron.append(item)
            pe.append(jax.tree.map(lambda _: None, item))
        else:
            kron.append(jax.tree.map(lambda _: None, item))
            pe.append(item)
    return _rebuild(diff, kron), _rebuild(diff, pe)


def _count_uses(plan: CapturePlan, diff: Any, example_input: Any) -> dict[int, Any]:
    kron, pe = _split_kron_pe(plan, diff)
    dtype = jnp.result_type(*[x.dtype for x in jax.tree.leaves(diff)] or [jnp.float32])
    probes = _zero_probes(plan, None, dtype, False)
    x = jax.tree.map(jnp.asarray, example_input)
    return {i: np.asarray(c) for i, c in _use_counts(plan, kron, pe, probes, x).items()}


# One compiled counting pass per plan (plans are hashable values), not one per `capture_layers`.
@functools.partial(jax.jit, static_argnums=0)
def _use_counts(plan: CapturePlan, kron, pe, probes, x):
    f = _per_example_fn(plan)
    out, vjp = jax.vjp(lambda p: f(kron, pe, p, {}, x), probes)
    (ct,) = vjp(jnp.ones_like(out))
    return {i: c["c"] for i, c in ct.items()}


def tap_layers(
    plan: CapturePlan, params: Params, inputs: Any, cotangents: Float[Array, "s b k"]
) -> tuple[dict[int, dict[str, Array]], PyTree]:
    """Per-example layer inputs and output cotangents of the Kronecker layers, for given output
    cotangents: one forward pass, and one backward pass per cotangent set.

    For a layer applied once per example (`LayerInfo.uses == 1`), the per-example gradient of
    `<cotangent, output>` with respect to its weight matrix (`layer_to_matrix` form, bias last) is
    the rank-one `g a^T`: products with per-example gradients then need only `a` and `g`, never the
    gradients themselves. For a layer used several times per example, `a` and `g` are sums over the
    uses (see `capture_layers`).

    Args:
        plan: from `capture_layers`.
        params: the model or its float part.
        inputs: a batch of `b` inputs (leading axis = examples).
        cotangents: `[s, b, k]`: `s` sets of per-example output cotangents (e.g. the columns of
            the output-loss Hessian square root, or sampled-label gradients).

    Returns:
        `(taps, per_example)`: `taps[i] = {"a": [b, a_dim], "g": [s, b, g_dim]}` for every
        Kronecker layer `i` of the plan (`a` holds a trailing 1 for a bias), and the per-example
        gradients of the other parameter groups (the float part of `params` with leading axes
        `[s, b]`; Kronecker layers are None there).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
        >>> plan = capture_layers(mlp, GaussianLoss(), jnp.zeros(3))
        >>> taps, _ = tap_layers(plan, mlp, jnp.ones((8, 3)), jnp.ones((1, 8, 2)))
        >>> taps[0]["a"].shape, taps[0]["g"].shape
        ((8, 4), (1, 8, 4))
    """
    diff, _ = eqx.partition(params, eqx.is_inexact_array)
    kron, pe = _split_kron_pe(plan, diff)
    b = jax.tree.leaves(inputs)[0].shape[0]
    if jnp.ndim(cotangents) != 3 or jnp.shape(cotangents)[1] != b:
        raise ValueError(
            f"`cotangents` must have shape (sets, {b}, k) for a batch of {b} inputs, got shape "
            f"{jnp.shape(cotangents)}."
        )
    dtype = jnp.result_type(*[t.dtype for t in jax.tree.leaves(diff)])
    pe_b = jax.tree.map(lambda t: jnp.broadcast_to(t, (b,) + t.shape), pe)
    probes = _zero_probes(plan, b, dtype, False)
    f = jax.vmap(_per_example_fn(plan), in_axes=(None, 0, 0, None, 0))
    _, vjp_fn = jax.vjp(lambda p, pr: f(kron, p, pr, {}, inputs), pe_b, probes)
    pe_s, pr_s = jax.vmap(vjp_fn)(cotangents)
    # The inputs do not depend on the cotangent set: keep the first set's copy.
    taps = {i: {"a": t["a"][0], "g": t["g"]} for i, t in pr_s.items()}
    return taps, pe_s


# ----------------------------------------------------------------------------------------------
# The combined statistics pass.


def _sample_targets(loss_obj: OutputLoss, key: PRNGKeyArray, outputs: Array, num_samples: int):
    """`num_samples` target sets for a batch of outputs `(b, k)`, drawn from the model's predictive
    distribution (leading axis: sample set).

    For the canonical losses the noise is drawn as ONE flat vector and reshaped: the same
    distributions as their `sample_targets` (categorical = argmax of logits plus Gumbel noise,
    Bernoulli = uniform below the probability, Gaussian = mean plus scaled normal noise), but XLA
    compiles a 1-D threefry draw several times faster than the 2-D one a vmap over per-example
    keys produces (~0.25 s vs ~1-1.5 s on CPU). Other losses use their own `sample_targets`."""
    shape = (num_samples,) + outputs.shape
    size = int(np.prod(shape))
    kind = type(loss_obj)
    if kind is SoftmaxCrossEntropy and outputs.ndim == 2:
        noise = jax.random.gumbel(key, (size,), outputs.dtype).reshape(shape)
        return jnp.argmax(outputs + noise, axis=-1)
    if kind is GaussianLoss:
        noise = jax.random.normal(key, (size,), outputs.dtype).reshape(shape)
        return outputs + jnp.sqrt(jnp.asarray(loss_obj.variance, outputs.dtype)) * noise
    if kind is BernoulliLoss:
        u = jax.random.uniform(key, (size,), outputs.dtype).reshape(shape)
        return (u < jax.nn.sigmoid(outputs)).astype(outputs.dtype)
    keys = jax.random.split(key, (num_samples, outputs.shape[0]))
    return jax.vmap(lambda ks: jax.vmap(loss_obj.sample_targets)(ks, outputs))(keys)


def _flat_item(item) -> Array:
    return jnp.concatenate([jnp.ravel(x) for x in _item_arrays(item)])


def kfac_stats(
    plan: CapturePlan,
    params: Params,
    inputs: Any,
    targets: Any,
    *,
    mode: Literal["expected", "mc", "empirical"] = "expected",
    key: PRNGKeyArray | None = None,
    num_samples: int = 1,
    update_curvature: bool | Bool[Array, ""] = True,
) -> tuple[Float[Array, ""], PyTree, tuple[dict[str, Array], ...]]:
    """Loss, gradients and per-layer curvature factors of one batch, from one forward pass.

    One forward pass and one backward pass give the loss, the gradient of the batch-mean loss and,
    through the layer taps, every layer's inputs and (empirical-Fisher) output cotangents. The
    `"mc"` mode adds one backward pass per sampled label set, and `"expected"` one per column of the
    output Hessian square root (the exact, analytic GGN/Fisher factors); both reuse the same forward
    pass. The factors are batch means, ready for `kfac`'s exponential moving average:

    - Kronecker layers: `{"A": [a, a], "G": [g, g]}` (Embedding: `"A"` is the diagonal `[a]`), with
      `A = E[a a^T]`, `G = E[g g^T]` per the layer's sharing (see `capture_layers`);
    - dense blocks (LayerNorm, uncovered parameters): `{"F": [p, p]}` or `{"F": [p]}` (diagonal),
      the mean outer product of exact per-example gradients.

    Args:
        plan: from `capture_layers`.
        params: the model or its float part (`eqx.filter(model, eqx.is_inexact_array)`).
        inputs: a batch of inputs (leading axis = examples).
        targets: the batch's targets.
        mode: `"expected"` (default: the exact expectation over labels through
            `hessian_sqrt`, the analytic Fisher), `"mc"` (labels sampled from the model,
            `num_samples` per example) or `"empirical"` (true labels).
        key: PRNG key, required for `mode="mc"` and used by no other mode.
        num_samples: sampled labels per example in `mode="mc"`.
        update_curvature: False (or a traced False) computes only the loss and the gradient, one
            plain forward and backward pass, and returns zero factors of the same shapes: the
            steps between curvature updates of `KFACConfig.curvature_update_period` (pass
            `config.curvature_due(state)`). A traced value selects the pass with `lax.cond`.

    Returns:
        `(loss, grads, stats)`: the batch-mean loss, its gradient (the float part of `params`),
        and a tuple of per-group factor dicts in the plan's order.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
        >>> plan = capture_layers(mlp, GaussianLoss(), jnp.zeros(3))
        >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))
        >>> loss, grads, stats = kfac_stats(plan, mlp, x, y)
        >>> stats[0]["A"].shape, stats[0]["G"].shape
        ((4, 4), (4, 4))
    """
    if mode not in ("expected", "mc", "empirical"):
        raise ValueError(f"`mode` must be 'expected', 'mc' or 'empirical', got {mode!r}.")
    if mode == "mc":
        if key is None:
            raise ValueError("`key` is required for mode='mc' (a PRNG key for the sampled labels).")
        check_positive_int("num_samples", num_samples)
    diff, _ = eqx.partition(params, eqx.is_inexact_array)
    full = lambda d: _kfac_stats(plan, d, inputs, targets, mode, key, num_samples)
    if isinstance(update_curvature, bool | np.bool_):
        if update_curvature:
            return full(diff)
        return _loss_and_grads_only(plan, diff, inputs, targets, jax.eval_shape(full, diff)[2])
    stats_shape = jax.eval_shape(full, diff)[2]
    return jax.lax.cond(
        update_curvature,
        full,
        lambda d: _loss_and_grads_only(plan, d, inputs, targets, stats_shape),
        diff,
    )


def _loss_and_grads_only(plan: CapturePlan, diff, inputs, targets, stats_shape):
    """The loss and gradient of the batch-mean loss (no taps), and zero statistics."""
    _check_plan_params(plan, diff)

    def mean_loss(d):
        model = eqx.combine(d, plan.static)
        outputs = jax.vmap(lambda x: plan.apply(model, x))(inputs)
        return plan.output_loss.mean_loss(outputs, targets)

    loss, grads = jax.value_and_grad(mean_loss)(diff)
    zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), stats_shape)
    return loss, grads, zeros


def _kfac_stats(plan, diff, inputs, targets, mode, key, num_samples):
    kron, pe = _split_kron_pe(plan, diff)
    batch = jax.tree.leaves(inputs)[0].shape[0]
    dtype = jnp.result_type(*[x.dtype for x in jax.tree.leaves(diff)])
    pe_b = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), pe)
    probes = _zero_probes(plan, batch, dtype, False)
    quad = _quad_probes(plan, dtype)
    per_example = _per_example_fn(plan)
    f = jax.vmap(per_example, in_axes=(None, 0, 0, None, 0))

    outputs, vjp_fn = jax.vjp(lambda k, p, pr, q: f(k, p, pr, q, inputs), kron, pe_b, probes, quad)
    loss_obj = plan.output_loss
    per_loss = loss_obj.per_example_loss(outputs, targets)
    loss = jnp.mean(per_loss)
    e = jax.vmap(jax.grad(loss_obj.loss))(outputs, targets)
    g_kron, g_pe, ct_probes, ct_quad = vjp_fn(e)
    grads = eqx.combine(
        jax.tree.map(lambda x: x / batch, g_kron),
        jax.tree.map(lambda x: jnp.sum(x, axis=0) / batch, g_pe),
        is_leaf=_is_node_none,
    )

    # Cotangent sets for the output-side statistics, with their weights.
    if mode == "empirical":
        pr_s, q_s, pe_s = jax.tree.map(lambda x: x[None], (ct_probes, ct_quad, g_pe))
        weight = 1.0
    else:
        if mode == "mc":
            sampled = _sample_targets(loss_obj, key, jax.lax.stop_gradient(outputs), num_samples)
            cts = jax.vmap(lambda t: jax.vmap(jax.grad(loss_obj.loss))(outputs, t))(sampled)
            weight = 1.0 / num_samples
        else:
            s = jax.vmap(loss_obj.hessian_sqrt)(outputs)  # (b, k, r)
            cts = jnp.moveaxis(s, 2, 0)  # (r, b, k)
            weight = 1.0
        cts = jax.lax.stop_gradient(cts).astype(outputs.dtype)
        if cts.shape[0] == 1:  # one set: no vmap over the backward pass (smaller program)
            _, pe_s, pr_s, q_s = jax.tree.map(lambda t: t[None], vjp_fn(cts[0]))
        else:
            _, pe_s, pr_s, q_s = jax.vmap(vjp_fn)(cts)

    stats = []
    # The per-example tree has one item per plan entry (Kronecker layers appear with None fields).
    pe_items = _items(pe_s)
    for info in plan.layers:
        if info.is_kronecker:
            stats.append(
                _kron_factors(
                    info,
                    ct_probes[info.index],
                    ct_quad.get(info.index),
                    pr_s[info.index],
                    q_s.get(info.index),
                    weight,
                    batch,
                )
            )
        else:
            item = pe_items[info.index]
            arrays = _item_arrays(item)
            # arrays: each (sets, b, ...) -> per-example flat gradients (sets, b, p)
            flat = jnp.concatenate([x.reshape(x.shape[0], x.shape[1], -1) for x in arrays], -1)
            if info.block == "full":
                fmat = jnp.einsum("sbi,sbj->ij", flat, flat) * (weight / batch)
            else:
                fmat = jnp.sum(flat**2, axis=(0, 1)) * (weight / batch)
            stats.append({"F": fmat})
    return loss, grads, tuple(stats)


def _kron_factors(info: LayerInfo, pr_first, q_first, pr_sets, q_sets, weight, batch):
    a = pr_first["a"]  # (b, a_dim): sums over positions
    c = pr_first["c"]  # (b,)
    if info.kind == "embedding":
        a_fac = jnp.sum(a, axis=0) / jnp.sum(c)
    elif info.sharing == "expand":
        a_fac = q_first["aa"] / jnp.sum(c)
    elif info.uses == 1:  # one position per example: `a` is the input itself (c == 1)
        a_fac = a.T @ a / batch
    else:
        abar = a / c[:, None]  # KFAC-reduce: the mean over positions
        a_fac = abar.T @ abar / batch
    if info.quadratic:
        g_fac = jnp.sum(q_sets["gg"], axis=0) * (weight / batch)
    else:
        g = pr_sets["g"]  # (sets, b, g_dim)
        g_fac = jnp.einsum("sbi,sbj->ij", g, g) * (weight / batch)
    return {"A": a_fac, "G": g_fac}
