"""A flat view of `apply(params, x) -> outputs` plus an output loss, for influence computations.

Influence works on flat parameter vectors: per-example gradients are rows of a matrix, curvature
blocks are dense matrices over index sets of that vector. `FlatModel` ravels the inexact-array
leaves of `params` (everything else stays static), groups them into blocks (by default one block
per module: the leaves that share a parent in the pytree, e.g. a linear layer's weight and bias),
and offers the per-example quantities every solver needs: outputs, losses, gradients, the rows of
the Gauss-Newton square root `S(h_i)^T J_i`, and matrix-free GGN and Hessian products.
"""

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from respax.core import OutputLoss

BlockRule = str | Callable[[tuple[Any, ...]], Hashable]


def _path_label(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path) if path else "<root>"


def block_layout(
    params, blocks: BlockRule = "module"
) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """Group the flat parameter vector's indices into blocks.

    Args:
        params: the parameter pytree (only inexact-array leaves count, in `jax.tree` order).
        blocks: "module" (leaves sharing a parent path form one block: a layer's weight and bias),
            "leaf" (one block per array), "full" (one block) or a function `path -> label`.

    Returns:
        `(names, indices)`: a name and an int index array into the flat vector for every block.
    """
    diff, _ = eqx.partition(params, eqx.is_inexact_array)
    leaves = jax.tree_util.tree_leaves_with_path(diff)
    if not leaves:
        raise ValueError("`params` has no floating-point array leaves to attribute influence to.")
    if blocks == "module":
        rule = lambda path: _path_label(path[:-1])
    elif blocks == "leaf":
        rule = _path_label
    elif blocks == "full":
        rule = lambda path: "all"
    elif callable(blocks):
        rule = blocks
    else:
        raise ValueError(
            '`blocks` must be "module", "leaf", "full" or a function path -> label, '
            f"got {blocks!r}."
        )
    groups: dict[Hashable, list[np.ndarray]] = {}
    offset = 0
    for path, leaf in leaves:
        size = int(np.prod(np.shape(leaf)))
        groups.setdefault(rule(path), []).append(np.arange(offset, offset + size))
        offset += size
    names = tuple(str(k) for k in groups)
    indices = tuple(np.concatenate(v) for v in groups.values())
    return names, indices


class FlatModel:
    """`apply` and an output loss over a flat parameter vector (an internal helper).

    Args:
        apply: `apply(params, x) -> outputs` for ONE example, outputs of shape `(k,)`.
        output_loss: a `respax.core.OutputLoss`.
        params: the parameters at which influence is computed.
    """

    def __init__(self, apply: Callable[..., Any], output_loss: OutputLoss, params):
        if not callable(apply):
            raise TypeError(
                f"`apply` must be a function apply(params, x), got {type(apply).__name__}."
            )
        if not isinstance(output_loss, OutputLoss):
            raise TypeError(
                "`output_loss` must be a respax.core.OutputLoss (SoftmaxCrossEntropy, "
                f"GaussianLoss, BernoulliLoss), got {type(output_loss).__name__}."
            )
        self.apply = apply
        self.output_loss = output_loss
        diff, self.static = eqx.partition(params, eqx.is_inexact_array)
        self.flat, self._unravel = ravel_pytree(diff)
        if self.flat.size == 0:
            raise ValueError("`params` has no floating-point array leaves.")
        self.num_params = int(self.flat.size)

    def unravel(self, flat: Float[Array, " p"]):
        """The full parameter pytree for a flat vector."""
        return eqx.combine(self._unravel(flat), self.static)

    def ravel(self, params) -> Float[Array, " p"]:
        """The flat vector of a parameter pytree with the structure of `params`."""
        diff, _ = eqx.partition(params, eqx.is_inexact_array)
        return ravel_pytree(diff)[0]

    def outputs(self, flat: Float[Array, " p"], x) -> Float[Array, " k"]:
        return self.apply(self.unravel(flat), x)

    def loss(self, flat: Float[Array, " p"], x, y) -> Float[Array, ""]:
        return self.output_loss.loss(self.outputs(flat, x), y)

    def grad(self, flat: Float[Array, " p"], x, y) -> Float[Array, " p"]:
        return jax.grad(self.loss)(flat, x, y)

    def ggn_rows(self, flat: Float[Array, " p"], x) -> Float[Array, "r p"]:
        """`S(h)^T J` for one example: its rows' outer products sum to the example's GGN."""
        out, vjp = jax.vjp(lambda p: self.outputs(p, x), flat)
        s = self.output_loss.hessian_sqrt(out)
        return jax.vmap(lambda c: vjp(c)[0])(s.T)

    def sampled_fisher_rows(
        self, flat: Float[Array, " p"], x, key: PRNGKeyArray, num_samples: int
    ) -> Float[Array, "s p"]:
        """Gradients at targets sampled from the model, over `sqrt(num_samples)`: a Monte-Carlo
        Fisher factor with the same role as `ggn_rows`."""
        out, vjp = jax.vjp(lambda p: self.outputs(p, x), flat)

        def row(k):
            y = self.output_loss.sample_targets(k, out)
            cot = jax.grad(self.output_loss.loss)(out, y)
            return vjp(cot)[0]

        return jax.vmap(row)(jax.random.split(key, num_samples)) / jnp.sqrt(num_samples)

    # --- products over a data set (means over its examples) ---

    def batch_outputs(self, flat: Float[Array, " p"], inputs) -> Float[Array, "n k"]:
        return jax.vmap(self.outputs, in_axes=(None, 0))(flat, inputs)

    def ggn_matvec(
        self, flat: Float[Array, " p"], inputs, v: Float[Array, " p"]
    ) -> Float[Array, " p"]:
        """`G v` with `G = (1/n) sum_i J_i^T H_i J_i` over `inputs`."""
        out, jvp_fn = jax.linearize(lambda p: self.batch_outputs(p, inputs), flat)
        hjv = jax.vmap(self.output_loss.output_hvp)(out, jvp_fn(v))
        (gv,) = jax.linear_transpose(jvp_fn, flat)(hjv)
        return gv / out.shape[0]

    def hessian_matvec(
        self, flat: Float[Array, " p"], inputs, targets, v: Float[Array, " p"]
    ) -> Float[Array, " p"]:
        """`H v` with `H` the Hessian of the mean loss over `(inputs, targets)`."""

        def mean_loss(p):
            return jnp.mean(jax.vmap(self.loss, in_axes=(None, 0, 0))(p, inputs, targets))

        return jax.jvp(jax.grad(mean_loss), (flat,), (v,))[1]


def batched_map(fn: Callable[..., Any], args: Sequence[Any], batch_size: int | None):
    """`vmap(fn)(*args)`, in chunks of `batch_size` examples when given (bounded memory)."""
    if batch_size is None:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), tuple(args), batch_size=batch_size)


def num_examples(data, name: str) -> int:
    """Check that `data = (inputs, targets)` has one leading batch size and return it."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"`{name}` must be a pair (inputs, targets) with a leading batch axis.")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in jax.tree.leaves(data)}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            f"every array of `{name}` must share one leading batch size, got sizes {sorted(sizes)}."
        )
    n = sizes.pop()
    if n < 1:
        raise ValueError(f"`{name}` is empty.")
    return n


def check_data(model: FlatModel, data, name: str) -> int:
    """Check `data` against the model: batch sizes agree, `apply` accepts one example and returns a
    vector, and the loss accepts the targets. Returns the number of examples."""
    n = num_examples(data, name)
    inputs, targets = data
    x0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), inputs)
    y0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), targets)
    try:
        out = jax.eval_shape(model.outputs, model.flat, x0)
    except Exception as e:  # noqa: BLE001 - re-raised with the argument named
        raise ValueError(
            f"the inputs of `{name}` do not match the model: apply(params, x) failed on one "
            f"example of shape {jax.tree.map(lambda s: s.shape, x0)}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 1:
        raise ValueError(
            f"apply(params, x) must return a vector of outputs of shape (k,) for one example of "
            f"`{name}`, got {jax.tree.map(lambda s: s.shape, out)}."
        )
    try:
        jax.eval_shape(model.output_loss.loss, out, y0)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"the targets of `{name}` do not match the output loss: {e}") from e
    return n
