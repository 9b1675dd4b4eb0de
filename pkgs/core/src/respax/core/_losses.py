"""Output losses: the per-example loss on model outputs, its output-space Hessian square root
and a label sampler. Together with `apply(params, x) -> outputs` they are the model/loss contract
shared by `respax.curvature`, `respax.interp` and the experiments.

For these canonical (exponential-family, natural-parameter) losses the output Hessian does not
depend on the target, so the generalized Gauss-Newton matrix equals the expected Fisher.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._custom_types import Scalar


class OutputLoss(eqx.Module):
    """Negative log-likelihood of one example's targets given the model's outputs.

    Subclasses implement `loss`, `hessian_sqrt` and `sample_targets` for a single example
    (outputs of shape `(k,)`); the batched helpers vmap them.
    """

    @abc.abstractmethod
    def loss(self, outputs: Float[Array, " k"], targets) -> Scalar:
        """The loss of one example."""

    @abc.abstractmethod
    def hessian_sqrt(self, outputs: Float[Array, " k"]) -> Float[Array, "k r"]:
        """A matrix `S` with `S @ S.T` equal to the Hessian of `loss` in `outputs`."""

    @abc.abstractmethod
    def sample_targets(self, key: PRNGKeyArray, outputs: Float[Array, " k"]):
        """Draw targets of one example from the model's predictive distribution."""

    def per_example_loss(self, outputs: Float[Array, "b k"], targets) -> Float[Array, " b"]:
        """The loss of every example of a batch."""
        _check_batched("outputs", outputs)
        for leaf in jax.tree.leaves(targets):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != jnp.shape(outputs)[0]:
                raise ValueError(
                    f"`targets` must have a leading batch axis of size {jnp.shape(outputs)[0]} "
                    f"(the batch of `outputs`, shape {jnp.shape(outputs)}), got shape "
                    f"{jnp.shape(leaf)}."
                )
        one = lambda t: jax.ShapeDtypeStruct(jnp.shape(t)[1:], jnp.result_type(t))
        self._check_targets(one(outputs), jax.tree.map(one, targets))
        return jax.vmap(self.loss)(outputs, targets)

    def _check_targets(self, outputs, targets) -> None:
        """Check one example's targets against its outputs (shapes and dtypes only); a subclass
        raises a `ValueError`/`TypeError` naming `targets` for targets it would misread."""

    def mean_loss(self, outputs: Float[Array, "b k"], targets) -> Scalar:
        """The batch-mean loss."""
        return jnp.mean(self.per_example_loss(outputs, targets))

    def output_hvp(self, outputs: Float[Array, " k"], v: Float[Array, " k"]) -> Float[Array, " k"]:
        """The output-space Hessian times `v`, for one example."""
        s = self.hessian_sqrt(outputs)
        return s @ (s.T @ v)

    def output_hessian(self, outputs: Float[Array, " k"]) -> Float[Array, "k k"]:
        """The dense output-space Hessian of one example."""
        s = self.hessian_sqrt(outputs)
        return s @ s.T


def _check_batched(name: str, x) -> None:
    if jnp.ndim(x) != 2:
        raise ValueError(f"`{name}` must have shape (batch, k), got shape {jnp.shape(x)}.")


def _check_same_shape(self, outputs, targets) -> None:
    """Targets of one example must have the outputs' shape: broadcasting `(k,)` against `()` (or
    a batch `(b, k)` against `(b,)`) would silently give another loss."""
    if jnp.shape(targets) != jnp.shape(outputs):
        raise ValueError(
            f"`targets` of one example must have the shape of its outputs {jnp.shape(outputs)}, "
            f"got shape {jnp.shape(targets)} (for a batch: targets (b, k) for outputs (b, k))."
        )


def _check_class_index(self, outputs, targets) -> None:
    dtype = jnp.result_type(targets)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_)):
        raise TypeError(
            "`targets` of SoftmaxCrossEntropy must be integer class indices, got dtype "
            f"{dtype} (shape {jnp.shape(targets)} per example); for one-hot or probability "
            "labels pass `jnp.argmax(labels, axis=-1)`."
        )
    if jnp.ndim(targets) != 0:
        raise ValueError(
            "`targets` of SoftmaxCrossEntropy must be one integer class index per example, got "
            f"shape {jnp.shape(targets)} per example (outputs {jnp.shape(outputs)}); for one-hot "
            "labels pass `jnp.argmax(labels, axis=-1)`."
        )


class SoftmaxCrossEntropy(OutputLoss):
    """Softmax cross-entropy on logits, with integer class targets.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import SoftmaxCrossEntropy
        >>> loss = SoftmaxCrossEntropy()
        >>> round(float(loss.loss(jnp.zeros(4), 2)), 4)  # log(4)
        1.3863
    """

    def loss(self, outputs: Float[Array, " k"], targets: Int[Array, ""] | int) -> Scalar:
        _check_class_index(self, outputs, targets)
        return jax.nn.logsumexp(outputs) - outputs[targets]

    _check_targets = _check_class_index

    def hessian_sqrt(self, outputs: Float[Array, " k"]) -> Float[Array, "k k"]:
        # H = diag(p) - p p^T = S S^T with S = (I - p 1^T) diag(sqrt p).
        p = jax.nn.softmax(outputs)
        sqrt_p = jnp.sqrt(p)
        return jnp.diag(sqrt_p) - jnp.outer(p, sqrt_p)

    def sample_targets(self, key: PRNGKeyArray, outputs: Float[Array, " k"]) -> Int[Array, ""]:
        return jax.random.categorical(key, outputs)


class GaussianLoss(OutputLoss):
    """Squared error `||y - f||^2 / (2 variance)`: the Gaussian negative log-likelihood without its
    constant. `variance=1` gives half the squared error.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> float(GaussianLoss().loss(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])))
        2.5
    """

    variance: float = 1.0

    def __check_init__(self):
        if not (isinstance(self.variance, int | float) and self.variance > 0):
            raise ValueError(f"`variance` must be a number > 0, got {self.variance!r}.")

    def loss(self, outputs: Float[Array, " k"], targets: Float[Array, " k"]) -> Scalar:
        _check_same_shape(self, outputs, targets)
        return 0.5 * jnp.sum((outputs - targets) ** 2) / self.variance

    _check_targets = _check_same_shape

    def hessian_sqrt(self, outputs: Float[Array, " k"]) -> Float[Array, "k k"]:
        k = outputs.shape[0]
        return jnp.eye(k, dtype=outputs.dtype) / jnp.sqrt(jnp.asarray(self.variance, outputs.dtype))

    def sample_targets(self, key: PRNGKeyArray, outputs: Float[Array, " k"]) -> Float[Array, " k"]:
        noise = jax.random.normal(key, outputs.shape, outputs.dtype)
        return outputs + jnp.sqrt(self.variance) * noise


class BernoulliLoss(OutputLoss):
    """Sigmoid cross-entropy on logits, with independent binary targets in {0, 1}.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> round(float(BernoulliLoss().loss(jnp.zeros(2), jnp.array([0.0, 1.0]))), 4)  # 2 log 2
        1.3863
    """

    def loss(self, outputs: Float[Array, " k"], targets: Float[Array, " k"]) -> Scalar:
        _check_same_shape(self, outputs, targets)
        return jnp.sum(jax.nn.softplus(outputs) - targets * outputs)

    _check_targets = _check_same_shape

    def hessian_sqrt(self, outputs: Float[Array, " k"]) -> Float[Array, "k k"]:
        p = jax.nn.sigmoid(outputs)
        return jnp.diag(jnp.sqrt(p * (1 - p)))

    def sample_targets(self, key: PRNGKeyArray, outputs: Float[Array, " k"]) -> Float[Array, " k"]:
        return jax.random.bernoulli(key, jax.nn.sigmoid(outputs)).astype(outputs.dtype)
