"""The i-ResNet / Residual-Flow block `y = x + g(x)` with Lip(g) <= c < 1.

Spectral normalisation: each linear layer's weight W is used as `W * min(1, c / sigma_max(W))`
(i-ResNet's soft rule), with sigma_max computed **exactly** (`jnp.linalg.norm(W, 2)`, an SVD) so
that the declared bound holds for every parameter value, not only after power iterations have
converged (equinox's `eqx.nn.SpectralNorm` keeps a one-step power-iteration estimate in a state
and would make the bound approximate; that is the documented deviation from the issue's wording).
The activations are 1-Lipschitz (ELU by default), so Lip(g) <= prod_i min(sigma_i, c) <= c.

The inverse is the fixed point `x = y - g(x)` of a contraction, solved by
`optimistix.fixed_point` with `FixedPointIteration` and differentiated implicitly
(optimistix's `ImplicitAdjoint`). log|det(I + J_g)| is exact (`slogdet` of the dense Jacobian,
for small d) or the power series `sum_k (-1)^(k+1) tr(J_g^k) / k` truncated at n terms with the
core Hutchinson estimator (`forward_and_log_det_estimate`); the truncation error is at most
`d * c^(n+1) / ((n+1)(1-c))`.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import PRNGKeyArray

from respax.core import TraceEstimate, hutchinson_trace

from ._invertible import InvertibleBlock, _check_context, _check_shape


class InvertibleResidualBlock(InvertibleBlock):
    """An invertible residual block `y = x + g(x)` on vectors `(d,)` (or per pixel on NHWC).

    Args:
        event_shape: `(d,)`, or `(H, W, C)` for a per-pixel residual map on the channels.
        key: initialisation key.
        lipschitz_constant: c in (0, 1), the bound on Lip(g).
        width, depth: the MLP g (depth hidden layers).
        context_size: size of a vector context concatenated to g's input (0: none).
        activation: a 1-Lipschitz activation.
        rtol, atol, max_steps: of the fixed-point inverse.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> b = InvertibleResidualBlock((3,), lipschitz_constant=0.9, key=jax.random.key(0))
        >>> x = jnp.array([0.3, -1.0, 2.0])
        >>> y, ld = b.forward_and_log_det(x)
        >>> bool(jnp.allclose(b.inverse_and_log_det(y)[0], x, atol=1e-4))
        True
    """

    layers: tuple[eqx.nn.Linear, ...]
    event_shape: tuple[int, ...] = eqx.field(static=True)
    context_shape: tuple[int, ...] | None = eqx.field(static=True)
    lipschitz_constant: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        event_shape,
        *,
        key: PRNGKeyArray,
        lipschitz_constant: float = 0.9,
        width: int = 64,
        depth: int = 2,
        context_size: int = 0,
        activation: Callable = jax.nn.elu,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        max_steps: int = 200,
    ):
        event_shape = tuple(event_shape)
        if not 0.0 < lipschitz_constant < 1.0:
            raise ValueError(
                f"`lipschitz_constant` must be in (0, 1) for an invertible residual block, "
                f"got {lipschitz_constant}."
            )
        d = event_shape[-1]
        sizes = [d + context_size] + [width] * depth + [d]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.event_shape = event_shape
        self.context_shape = (context_size,) if context_size else None
        self.lipschitz_constant = float(lipschitz_constant)
        self.activation = activation
        self.rtol, self.atol, self.max_steps = float(rtol), float(atol), int(max_steps)

    def _normalised(self):
        c = self.lipschitz_constant
        out = []
        for layer in self.layers:
            sigma = jnp.linalg.norm(layer.weight, ord=2)
            factor = jnp.minimum(1.0, c / sigma)
            out.append((layer.weight * factor, layer.bias, sigma * factor))
        return out

    def _g_vector(self, x, context):
        layers = self._normalised()
        h = x if context is None else jnp.concatenate([x, context.astype(x.dtype)])
        for w, b, _ in layers[:-1]:
            h = self.activation(w @ h + b)
        w, b, _ = layers[-1]
        return w @ h + b

    def residual(self, x, context=None):
        """g(x) (per pixel for images)."""
        if x.ndim == 1:
            return self._g_vector(x, context)
        flat = x.reshape(-1, x.shape[-1])
        return jax.vmap(lambda h: self._g_vector(h, context))(flat).reshape(x.shape)

    def _jacobian_vector(self, x, context):
        """J_g(x) of the MLP in closed form, W_L D_{L-1} W_{L-1} ... D_1 W_1 (D_i = diag of the
        elementwise activation's derivative): products of small matrices, cheap to differentiate
        (reverse mode through `jax.jacfwd` materialised one weight cotangent per example and per
        tangent: 2.9 s a step for one 64-D block, batch 256)."""
        d = x.shape[0]
        h = x if context is None else jnp.concatenate([x, context.astype(x.dtype)])
        jac = None
        layers = self._normalised()
        for w, b, _ in layers[:-1]:
            pre = w @ h + b
            slope = jax.vmap(jax.grad(self.activation))(pre)
            jac = slope[:, None] * (w[:, :d] if jac is None else w @ jac)
            h = self.activation(pre)
        w = layers[-1][0]
        return w[:, :d] if jac is None else w @ jac

    def _exact_log_det(self, x, context):
        if x.ndim == 1:
            jac = self._jacobian_vector(x, context)
            return jnp.linalg.slogdet(jnp.eye(x.shape[0], dtype=x.dtype) + jac)[1]
        flat = x.reshape(-1, x.shape[-1])
        return jnp.sum(jax.vmap(lambda v: self._exact_log_det(v, context))(flat))

    def forward_and_log_det(self, x, context=None):
        _check_shape("x", x, self.event_shape)
        _check_context(context, self.context_shape)
        return x + self.residual(x, context), self._exact_log_det(x, context)

    def forward_and_log_det_estimate(
        self, x, context=None, *, key: PRNGKeyArray, num_terms: int = 10, num_probes: int = 4
    ):
        """The output and a Hutchinson estimate of the truncated log-det power series.

        Returns:
            `(y, TraceEstimate(value, standard_error))`; the value's bias (truncation) is at most
            `truncation_bound(num_terms)`.
        """
        _check_shape("x", x, self.event_shape)
        _check_context(context, self.context_shape)
        y_res, jvp_fn = jax.linearize(lambda v: self.residual(v, context), x)

        def series(v):
            acc, w = jnp.zeros_like(v), v
            for k in range(1, num_terms + 1):
                w = jvp_fn(w)
                acc = acc + ((-1.0) ** (k + 1) / k) * w
            return acc

        struct = jax.ShapeDtypeStruct(x.shape, x.dtype)
        op = lx.FunctionLinearOperator(series, struct)
        est = hutchinson_trace(op, key=key, num_samples=num_probes)
        return x + y_res, TraceEstimate(est.value, est.standard_error)

    def truncation_bound(self, num_terms: int) -> float:
        """|log det - series_n| <= d_total * sum_{k>n} c^k / k <= d c^(n+1) / ((n+1)(1-c))."""
        c, n = self.lipschitz_constant, num_terms
        return math.prod(self.event_shape) * c ** (n + 1) / ((n + 1) * (1.0 - c))

    def inverse_and_log_det(self, y, context=None):
        _check_shape("y", y, self.event_shape)
        _check_context(context, self.context_shape)
        solver = optx.FixedPointIteration(rtol=self.rtol, atol=self.atol)
        sol = optx.fixed_point(
            lambda x, args: y - self.residual(x, context),
            solver,
            y,
            max_steps=self.max_steps,
            throw=False,
        )
        x = sol.value
        return x, -self._exact_log_det(x, context)

    def lipschitz_of_residual(self):
        """The bound prod_i min(sigma_i, c) on Lip(g) (<= c)."""
        bound = jnp.asarray(1.0, self.layers[0].weight.dtype)
        for _, _, s in self._normalised():
            bound = bound * s
        return bound

    def lipschitz_bound(self):
        lg = self.lipschitz_of_residual()
        return 1.0 + lg, 1.0 / (1.0 - lg)
