"""Curvature-vector products over parameter pytrees as lineax operators.

All operators follow the model/output-loss contract: `apply(params, x) -> outputs` maps ONE
example to an output vector of shape `(k,)`; the curvature is that of the batch-mean loss
`(1/b) sum_n output_loss.loss(apply(params, x_n), y_n)`.

Every curvature except the Hessian has the form `(1/b) sum_n J_n^T M_n J_n`, with `J_n` the
Jacobian of the outputs of example `n` in the parameters and `M_n` a PSD matrix in output space:

- GGN / exact (type-2) Fisher: `M_n = S_n S_n^T`, the output Hessian through `hessian_sqrt`;
- Monte-Carlo Fisher: `M_n = (1/m) sum_s e_s e_s^T`, `e_s` the output-gradient of the loss at a
  label sampled from the model's predictive distribution;
- empirical Fisher: `M_n = e e^T`, `e` the output-gradient at the true label.

The Jacobian is linearised once when the operator is built, so each `mv` costs one JVP and one VJP
and no forward pass.
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray

from respax.core import OutputLoss, Params, check_positive_int

__all__ = [
    "empirical_fisher_operator",
    "fisher_operator",
    "ggn_operator",
    "hessian_operator",
    "split_params",
]


def split_params(params: Params) -> tuple[Params, Params]:
    """Split a parameter pytree (often an Equinox model) into its inexact arrays and the rest.

    The first part is the vector space every operator here acts on: a pytree of the same structure
    as `params` with `None` in place of non-float leaves (activation functions, integer buffers).

    Example:
        >>> import equinox as eqx, jax
        >>> mlp = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
        >>> diff, static = split_params(mlp)
        >>> len(jax.tree.leaves(diff))
        4
    """
    return eqx.partition(params, eqx.is_inexact_array)


def _check_apply(apply: Any) -> None:
    if not callable(apply):
        raise TypeError(f"`apply` must be a callable apply(params, x) -> outputs, got {apply!r}.")


def _check_loss(output_loss: Any) -> None:
    if not isinstance(output_loss, OutputLoss):
        raise TypeError(
            "`output_loss` must be a respax.core.OutputLoss (SoftmaxCrossEntropy, GaussianLoss, "
            f"BernoulliLoss, ...), got {type(output_loss).__name__}."
        )


def _batched_apply(apply, static, inputs):
    def f(diff):
        model = eqx.combine(diff, static)
        out = jax.vmap(lambda x: apply(model, x))(inputs)
        if out.ndim != 2:
            raise ValueError(
                "`apply(params, x)` must return a vector of shape (k,) for one example; got "
                f"per-example outputs of shape {out.shape[1:]}."
            )
        return out

    return f


class _CurvatureOperator(lx.FunctionLinearOperator):
    """A `lineax.FunctionLinearOperator` whose `mv` checks its argument first: lineax closure-
    converts the function, so a vector of another structure would fail inside it with
    `Closure-converted function called with different dynamic arguments`."""

    def mv(self, vector):
        structure = self.in_structure()
        want, got = jax.tree.structure(structure), jax.tree.structure(vector)
        if got != want:
            raise ValueError(
                "`vector` must have the structure of the operator's vectors (the float part of "
                f"`params`, `split_params(params)[0]`); got\n  vector: {got}\n  expected: {want}"
            )
        for i, (x, s) in enumerate(zip(jax.tree.leaves(vector), jax.tree.leaves(structure))):
            if tuple(jnp.shape(x)) != tuple(s.shape):
                raise ValueError(
                    f"`vector` has shape {tuple(jnp.shape(x))} at leaf {i} where the operator's "
                    f"vectors have {tuple(s.shape)}."
                )
        return super().mv(vector)


def _jm_operator(apply, params, inputs, output_matvec) -> lx.FunctionLinearOperator:
    """`v -> (1/b) sum_n J_n^T M_n J_n v` with `output_matvec(outputs_tangent) -> M outputs_tangent`
    acting on the whole batch `(b, k)`."""
    diff, static = split_params(params)
    f = _batched_apply(apply, static, inputs)
    outputs, jvp_fn = jax.linearize(f, diff)
    vjp_fn = jax.linear_transpose(jvp_fn, diff)
    b = outputs.shape[0]

    def mv(v):
        u = jvp_fn(v)
        w = output_matvec(outputs, u) / b
        (out,) = vjp_fn(w.astype(outputs.dtype))
        return out

    structure = jax.eval_shape(lambda: diff)
    return _CurvatureOperator(mv, structure, (lx.symmetric_tag, lx.positive_semidefinite_tag))


def ggn_operator(
    apply: Callable[[Any, Any], Float[Array, " k"]],
    output_loss: OutputLoss,
    params: Params,
    inputs: Any,
) -> lx.FunctionLinearOperator:
    """The generalized Gauss-Newton matrix `(1/b) sum_n J_n^T H_n J_n` as a lineax operator.

    `H_n = S_n S_n^T` is the output-space Hessian of the loss (`output_loss.hessian_sqrt`). For the
    canonical losses of `respax.core` it does not depend on the targets, and the GGN equals the
    exact
    (expected, "type-2") Fisher.

    Args:
        apply: `apply(params, x) -> outputs` on one example, outputs of shape `(k,)`.
        output_loss: the output loss.
        params: the parameters (any pytree, e.g. an Equinox model; non-float leaves are held fixed).
        inputs: a batch of inputs (leading axis = examples), or a pytree of such arrays.

    Returns:
        A symmetric PSD `lineax.FunctionLinearOperator` whose vectors have the structure of
        `split_params(params)[0]`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> apply = lambda w, x: w @ x
        >>> op = ggn_operator(apply, GaussianLoss(), jnp.ones((1, 2)), jnp.eye(2))
        >>> op.mv(jnp.array([[1.0, 0.0]]))  # (1/2) sum_n x_n x_n^T = I/2
        Array([[0.5, 0. ]], dtype=float32)
    """
    _check_apply(apply)
    _check_loss(output_loss)

    def output_matvec(outputs, u):
        s = jax.vmap(output_loss.hessian_sqrt)(outputs)
        return jnp.einsum("bkr,bjr,bj->bk", s, s, u)

    return _jm_operator(apply, params, inputs, output_matvec)


def _output_grads(output_loss, outputs, targets):
    return jax.vmap(jax.grad(output_loss.loss))(outputs, targets)


def fisher_operator(
    apply: Callable[[Any, Any], Float[Array, " k"]],
    output_loss: OutputLoss,
    params: Params,
    inputs: Any,
    *,
    mode: Literal["expected", "mc"] = "expected",
    key: PRNGKeyArray | None = None,
    num_samples: int = 1,
) -> lx.FunctionLinearOperator:
    """The Fisher information of the model's predictive distribution as a lineax operator.

    Args:
        apply: `apply(params, x) -> outputs` on one example.
        output_loss: the output loss (the negative log-likelihood).
        params: the parameters.
        inputs: a batch of inputs.
        mode: `"expected"` (default): the expectation over labels in closed form, the analytic
            Fisher (equal to the GGN for the canonical losses; the same name as in `kfac_stats`
            and `fit_kfac_factors`); `"mc"`: a Monte-Carlo estimate with `num_samples` labels per
            example drawn with `output_loss.sample_targets` (fixed once, when the operator is
            built).
        key: PRNG key, required for `mode="mc"` and used by no other mode.
        num_samples: labels per example for `mode="mc"`.

    Returns:
        A symmetric PSD lineax operator.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import SoftmaxCrossEntropy
        >>> apply = lambda w, x: w @ x
        >>> w, x = jnp.zeros((3, 2)), jnp.ones((4, 2))
        >>> op = fisher_operator(apply, SoftmaxCrossEntropy(), w, x, mode="mc",
        ...                      key=jax.random.key(0), num_samples=8)
        >>> op.mv(jnp.ones((3, 2))).shape
        (3, 2)
    """
    if mode == "expected":
        return ggn_operator(apply, output_loss, params, inputs)
    if mode != "mc":
        hint = " (the analytic Fisher is now called 'expected')" if mode == "exact" else ""
        raise ValueError(f"`mode` must be 'expected' or 'mc', got {mode!r}{hint}.")
    if key is None:
        raise ValueError("`key` is required for mode='mc' (a PRNG key for the sampled labels).")
    check_positive_int("num_samples", num_samples)
    _check_apply(apply)
    _check_loss(output_loss)
    diff, static = split_params(params)
    outputs = jax.lax.stop_gradient(_batched_apply(apply, static, inputs)(diff))
    b = outputs.shape[0]
    keys = jax.random.split(key, (num_samples, b))
    targets = jax.vmap(lambda ks: jax.vmap(output_loss.sample_targets)(ks, outputs))(keys)
    e = jax.vmap(lambda t: _output_grads(output_loss, outputs, t))(targets)  # (m, b, k)

    def output_matvec(outputs, u):
        return jnp.einsum("sbk,sbj,bj->bk", e, e, u) / num_samples

    return _jm_operator(apply, params, inputs, output_matvec)


def empirical_fisher_operator(
    apply: Callable[[Any, Any], Float[Array, " k"]],
    output_loss: OutputLoss,
    params: Params,
    inputs: Any,
    targets: Any,
) -> lx.FunctionLinearOperator:
    """The empirical Fisher `(1/b) sum_n g_n g_n^T`, `g_n` the gradient of example `n`'s loss.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> op = empirical_fisher_operator(lambda w, x: w * x, GaussianLoss(), jnp.ones(1),
        ...                                jnp.array([[1.0], [2.0]]), jnp.zeros((2, 1)))
        >>> op.mv(jnp.ones(1))  # (1^2 + 4^2) / 2
        Array([8.5], dtype=float32)
    """
    _check_apply(apply)
    _check_loss(output_loss)
    diff, static = split_params(params)
    outputs = jax.lax.stop_gradient(_batched_apply(apply, static, inputs)(diff))
    e = _output_grads(output_loss, outputs, targets)

    def output_matvec(outputs, u):
        return e * jnp.sum(e * u, axis=-1, keepdims=True)

    return _jm_operator(apply, params, inputs, output_matvec)


def hessian_operator(
    apply: Callable[[Any, Any], Float[Array, " k"]],
    output_loss: OutputLoss,
    params: Params,
    inputs: Any,
    targets: Any,
) -> lx.FunctionLinearOperator:
    """The Hessian of the batch-mean loss in the parameters, as a symmetric lineax operator.

    Unlike `respax.core.hvp_operator` (any scalar loss), this one takes the model/output-loss
    contract, so it is interchangeable with `ggn_operator` and the Fisher operators. Each `mv` is
    one forward-over-reverse product.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> op = hessian_operator(lambda w, x: w * x, GaussianLoss(), jnp.ones(1),
        ...                       jnp.array([[1.0], [2.0]]), jnp.zeros((2, 1)))
        >>> op.mv(jnp.ones(1))
        Array([2.5], dtype=float32)
    """
    _check_apply(apply)
    _check_loss(output_loss)
    diff, static = split_params(params)
    f = _batched_apply(apply, static, inputs)

    def loss_fn(d):
        return output_loss.mean_loss(f(d), targets)

    grad_fn = jax.grad(loss_fn)
    _, hvp_fn = jax.linearize(grad_fn, diff)
    structure = jax.eval_shape(lambda: diff)
    return _CurvatureOperator(hvp_fn, structure, lx.symmetric_tag)
