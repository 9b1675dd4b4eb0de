"""β-VAE and Multi-Rate VAE models and their objectives: rate, distortion, ELBO.

All objectives are pure functions `f(model, likelihood, x, *, key, ...)` of a batch `x` with a
leading batch axis. The rate is the analytic KL of the diagonal-Gaussian posterior to N(0, I)
(no key needed); the distortion is a one-sample reparameterized estimate of `-E_q log p(x|z)`.
Both are in nats per example. `model` is a `VAE` (a β-VAE: β is only the loss weight) or a
`MultiRateVAE` (β also conditions every gated layer, Bae et al. 2023).
"""

import math
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ._likelihoods import Likelihood, check_data, check_likelihood, negative_log_likelihood
from ._vae_layers import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, gated_units


class _EncoderDecoder(eqx.Module):
    """What a β-VAE and an MR-VAE share: the encoder/decoder pair and its shapes."""

    encoder: eqx.Module
    decoder: eqx.Module

    def __check_init__(self):
        _check_pair(self.encoder, self.decoder)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.encoder.input_shape

    @property
    def latent_size(self) -> int:
        return self.encoder.latent_size


class VAE(_EncoderDecoder):
    """A VAE from an encoder `x -> (mu, logvar)` and a decoder `z -> likelihood parameters`.

    Both act on one example. Used as a β-VAE: the objectives below weight its rate by β.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import MLPDecoder, MLPEncoder
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> vae = VAE(MLPEncoder((64,), (32,), 4, key=k1), MLPDecoder(4, (32,), (64,), key=k2))
        >>> [a.shape for a in vae.encode(jnp.zeros(64))]
        [(4,), (4,)]
    """

    def __check_init__(self):
        if gated_units(self) > 0:
            raise ValueError(
                "`encoder`/`decoder` of a VAE must be ungated (gate=None); gated blocks belong "
                "in a MultiRateVAE."
            )

    def encode(self, x: Float[Array, "..."], beta=None):
        """`(mu, logvar)` of q(z | x) for one example (`beta` must be None for a β-VAE)."""
        _no_beta(beta)
        return self.encoder(x)

    def decode(self, z: Float[Array, " latent"], beta=None) -> Array:
        """The likelihood parameters of p(x | z) for one latent."""
        _no_beta(beta)
        return self.decoder(z)


def _no_beta(beta) -> None:
    if beta is not None:
        raise TypeError(
            "a VAE (β-VAE) is not conditioned on β: pass `beta=None` (β weights the rate only "
            "in beta_vae_loss); a MultiRateVAE takes `beta`."
        )


def _check_pair(encoder, decoder) -> None:
    for name, m in (("encoder", encoder), ("decoder", decoder)):
        if not callable(m):
            raise TypeError(f"`{name}` must be a callable module, got {type(m).__name__}.")
    e, d = getattr(encoder, "latent_size", None), getattr(decoder, "latent_size", None)
    if e is not None and d is not None and e != d:
        raise ValueError(f"the encoder's latent_size {e} differs from the decoder's {d}.")
    ins, outs = getattr(encoder, "input_shape", None), getattr(decoder, "output_shape", None)
    if ins is not None and outs is not None and math.prod(ins) != math.prod(outs):
        raise ValueError(f"the encoder's input_shape {ins} differs from the decoder's {outs}.")


class MultiRateVAE(_EncoderDecoder):
    """A Multi-Rate VAE: a VAE whose gated layers are conditioned on β (Bae et al. 2023).

    The hyper-input of every gate is `u = (log β - m) / s`, the standardization of log β for
    β log-uniform on `beta_range = (a, b)`: m = (log a + log b)/2, s = (log b - log a)/√12, so
    u ∈ [-√3, √3] on the training range. The paper's gates: `gate="sigmoid"` blocks in the
    encoder, `gate="sqrt_relu"` in the decoder (sigmoid everywhere also works, per the paper).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import MLPDecoder, MLPEncoder
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> mr = MultiRateVAE(
        ...     MLPEncoder((64,), (32,), 4, gate="sigmoid", key=k1),
        ...     MLPDecoder(4, (32,), (64,), gate="sqrt_relu", key=k2),
        ... )
        >>> mr.decode(jnp.zeros(4), beta=1.0).shape
        (64,)
    """

    beta_range: tuple[float, float] = eqx.field(static=True, default=(0.01, 10.0))

    def __check_init__(self):
        a, b = self.beta_range
        if not (0 < a < b and math.isfinite(b)):
            raise ValueError(f"`beta_range` must be (a, b) with 0 < a < b, got {self.beta_range}.")
        if gated_units(self) == 0:
            raise ValueError(
                "a MultiRateVAE needs gated blocks (gate='sigmoid' or 'sqrt_relu'); with none "
                "it is a plain VAE."
            )

    def hyper_input(self, beta) -> Array:
        """The standardized log β fed to the gates (a warning if β lies outside `beta_range`)."""
        check_beta_in_range(beta, self.beta_range)
        la, lb = (math.log(v) for v in self.beta_range)
        log_beta = jnp.log(jnp.asarray(beta, dtype=_float_dtype(self)))
        return (log_beta - (la + lb) / 2) / ((lb - la) / math.sqrt(12.0))

    def encode(self, x: Float[Array, "..."], beta):
        """`(mu, logvar)` of q(z | x, β) for one example."""
        return self.encoder(x, self.hyper_input(beta))

    def decode(self, z: Float[Array, " latent"], beta) -> Array:
        """The likelihood parameters of p(x | z, β) for one latent."""
        return self.decoder(z, self.hyper_input(beta))


def _float_dtype(model):
    leaves = [x for x in jax.tree.leaves(model) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.zeros(()).dtype


def check_beta_in_range(beta, beta_range: tuple[float, float]) -> None:
    """Outside `jit`, warn when β lies outside the range the MR-VAE was trained on."""
    if beta is None or isinstance(beta, jax.core.Tracer):
        return
    b = np.asarray(beta, dtype=np.float64)
    if b.size == 0:
        return
    if np.any(~np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"`beta` must be finite and > 0, got {beta!r}.")
    lo, hi = beta_range
    if b.min() < lo * (1 - 1e-6) or b.max() > hi * (1 + 1e-6):
        warnings.warn(
            f"`beta` in [{b.min():.4g}, {b.max():.4g}] lies outside the MR-VAE's training range "
            f"[{lo}, {hi}]: the response there is an extrapolation.",
            stacklevel=3,
        )


def reparameterize(
    mu: Float[Array, "*batch latent"], logvar: Float[Array, "*batch latent"], *, key: PRNGKeyArray
) -> Float[Array, "*batch latent"]:
    """One reparameterized sample `z = mu + exp(logvar / 2) * eps`, `eps ~ N(0, I)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> reparameterize(jnp.ones(3), jnp.full(3, -jnp.inf), key=jax.random.key(0)).tolist()
        [1.0, 1.0, 1.0]
    """
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


def gaussian_kl(
    mu: Float[Array, "*batch latent"], logvar: Float[Array, "*batch latent"]
) -> Float[Array, "*batch"]:
    """`KL(N(mu, diag exp(logvar)) || N(0, I))` in nats, summed over the last axis.

    Example:
        >>> import jax.numpy as jnp
        >>> float(gaussian_kl(jnp.array([1.0, 0.0]), jnp.zeros(2)))
        0.5
    """
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)


class Posterior(NamedTuple):
    """A batch's posterior parameters, a reparameterized sample and the decoder's outputs."""

    mu: Float[Array, "batch latent"]
    logvar: Float[Array, "batch latent"]
    z: Float[Array, "batch latent"]
    outputs: Array


class RateDistortion(NamedTuple):
    """Per-example rate `KL(q(z|x) || p(z))` and distortion `-log p(x|z)`, nats."""

    rate: Float[Array, " batch"]
    distortion: Float[Array, " batch"]


def _check_model(model) -> None:
    if not isinstance(model, VAE | MultiRateVAE):
        raise TypeError(f"`model` must be a VAE or a MultiRateVAE, got {type(model).__name__}.")


def _check_x(model, x) -> None:
    shape = tuple(np.shape(x))
    if len(shape) < 1 or shape[1:] != tuple(model.input_shape):
        raise ValueError(
            f"`x` must have shape (batch, *{tuple(model.input_shape)}) for this model, got "
            f"shape {shape}."
        )


def _betas_per_example(model, beta, batch: int):
    if isinstance(model, VAE):
        _no_beta(beta)
        return None
    if beta is None:
        raise TypeError("a MultiRateVAE needs `beta` (a scalar, or one per example).")
    beta = jnp.asarray(beta, dtype=_float_dtype(model))
    if beta.ndim == 0:
        return beta  # one β for the batch: the gates are computed once, not per example
    if beta.shape != (batch,):
        raise ValueError(f"`beta` must be a scalar or have shape ({batch},), got {beta.shape}.")
    return beta


def _batched(fn, data, betas):
    """`fn` over the batch `data`, with `betas` None (a β-VAE), a scalar or one per example
    (the MR-VAE's range was checked by the caller, so its warning is not repeated per trace)."""
    if betas is None:
        return jax.vmap(fn)(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jax.vmap(fn, in_axes=(0, 0 if betas.ndim else None))(data, betas)


def encode(model, x: Float[Array, "batch ..."], *, beta=None):
    """`(mu, logvar)` of a batch (for a MultiRateVAE at `beta`, scalar or per example).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> encode(vae, jnp.zeros((5, 64)))[0].shape
        (5, 4)
    """
    _check_model(model)
    _check_x(model, x)
    if isinstance(model, MultiRateVAE):
        check_beta_in_range(beta, model.beta_range)
    return _batched(model.encode, x, _betas_per_example(model, beta, x.shape[0]))


def posterior(
    model, likelihood: Likelihood, x: Float[Array, "batch ..."], *, key: PRNGKeyArray, beta=None
) -> Posterior:
    """Encode a batch, draw one reparameterized z per example and decode it.

    This is what decompositions of the rate (β-TCVAE) start from: `mu`, `logvar` and `z`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> post = posterior(vae, BernoulliLoss(), jnp.zeros((5, 64)), key=jax.random.key(1))
        >>> post.z.shape, post.outputs.shape
        ((5, 4), (5, 64))
    """
    check_likelihood(likelihood)
    check_data(likelihood, x)
    mu, logvar = encode(model, x, beta=beta)
    z = reparameterize(mu, logvar, key=key)
    outputs = _batched(model.decode, z, _betas_per_example(model, beta, x.shape[0]))
    return Posterior(mu, logvar, z, outputs)


def rate_distortion(
    model, likelihood: Likelihood, x: Float[Array, "batch ..."], *, key: PRNGKeyArray, beta=None
) -> RateDistortion:
    """Per-example rate and (one-sample) distortion of a batch, in nats.

    Args:
        model: a `VAE` or a `MultiRateVAE`.
        likelihood: `respax.core.BernoulliLoss()` or `respax.core.GaussianLoss(variance)`.
        x: a batch, shape `(batch, *model.input_shape)`; in [0, 1] for a Bernoulli decoder.
        key: the key of the reparameterized samples.
        beta: for a MultiRateVAE, the β it is conditioned on (scalar or one per example); None
            for a VAE.

    Returns:
        A `RateDistortion` of arrays of shape `(batch,)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> rd = rate_distortion(vae, BernoulliLoss(), jnp.zeros((5, 64)), key=jax.random.key(1))
        >>> rd.rate.shape
        (5,)
    """
    post = posterior(model, likelihood, x, key=key, beta=beta)
    return RateDistortion(
        gaussian_kl(post.mu, post.logvar), negative_log_likelihood(likelihood, post.outputs, x)
    )


def rate(model, x: Float[Array, "batch ..."], *, beta=None) -> Float[Array, ""]:
    """Batch-mean rate `E_x KL(q(z|x) || N(0, I))` in nats (analytic, no sampling).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> rate(vae, jnp.zeros((5, 64))).shape
        ()
    """
    mu, logvar = encode(model, x, beta=beta)
    return jnp.mean(gaussian_kl(mu, logvar))


def distortion(
    model, likelihood: Likelihood, x: Float[Array, "batch ..."], *, key: PRNGKeyArray, beta=None
) -> Float[Array, ""]:
    """Batch-mean one-sample distortion `-E_x E_q log p(x|z)` in nats.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> distortion(vae, BernoulliLoss(), jnp.zeros((5, 64)), key=jax.random.key(1)).shape
        ()
    """
    return jnp.mean(rate_distortion(model, likelihood, x, key=key, beta=beta).distortion)


def elbo(
    model, likelihood: Likelihood, x: Float[Array, "batch ..."], *, key: PRNGKeyArray, beta=None
) -> Float[Array, ""]:
    """Batch-mean ELBO `-(D + R)` in nats (β = 1 weighting; `beta` conditions an MR-VAE).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> bool(elbo(vae, BernoulliLoss(), jnp.zeros((5, 64)), key=jax.random.key(1)) < 0)
        True
    """
    rd = rate_distortion(model, likelihood, x, key=key, beta=beta)
    return -jnp.mean(rd.distortion + rd.rate)


def beta_vae_loss(
    model,
    likelihood: Likelihood,
    x: Float[Array, "batch ..."],
    *,
    key: PRNGKeyArray,
    beta,
) -> Float[Array, ""]:
    """The β-VAE objective `mean(D + β R)` of a batch.

    For a `VAE`, `beta` only weights the rate (pass a `kl_annealing` schedule's value for
    annealing); for a `MultiRateVAE` it also conditions the gates (scalar or one per example).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> x = jnp.zeros((5, 64))
        >>> jax.grad(beta_vae_loss)(vae, BernoulliLoss(), x, key=jax.random.key(1), beta=0.5)
        VAE(...)
    """
    if isinstance(model, VAE):
        rd = rate_distortion(model, likelihood, x, key=key)
    else:
        rd = rate_distortion(model, likelihood, x, key=key, beta=beta)
    beta = jnp.asarray(beta, dtype=rd.rate.dtype)
    return jnp.mean(rd.distortion + beta * rd.rate)


def kl_annealing(beta: float, *, warmup_steps: int, start: float = 0.0) -> optax.Schedule:
    """A linear KL-annealing schedule: the rate weight rises from `start * beta` to `beta` over
    `warmup_steps` steps, then stays at `beta` (the paper's β-VAE baselines "with KL annealing").

    Example:
        >>> schedule = kl_annealing(2.0, warmup_steps=10)
        >>> [float(schedule(s)) for s in (0, 5, 10, 20)]
        [0.0, 1.0, 2.0, 2.0]
    """
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"`beta` must be a number > 0, got {beta!r}.")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"`warmup_steps` must be an int >= 1, got {warmup_steps!r}.")
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"`start` must lie in [0, 1], got {start!r}.")
    return optax.linear_schedule(start * beta, float(beta), warmup_steps)


def active_units(
    model, x: Float[Array, "batch ..."], *, beta=None, threshold: float = 0.01
) -> Array:
    """Active units: latent dimensions whose posterior mean varies over the data,
    `Var_x E_q[z_d] >= threshold` (Burda et al. 2016; 0.01 as in the MR-VAE code).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> int(active_units(vae, jnp.zeros((5, 64))))  # constant data: no active unit
        0
    """
    mu, _ = encode(model, x, beta=beta)
    return jnp.sum(jnp.var(mu, axis=0) >= threshold)


def _gate_pair(multi_rate: bool, gates: str):
    if not multi_rate:
        if gates != "paper":
            raise ValueError("`gates` applies only with `multi_rate=True`.")
        return None, None
    if gates == "paper":
        return "sigmoid", "sqrt_relu"
    if gates == "sigmoid":
        return "sigmoid", "sigmoid"
    raise ValueError(f"`gates` must be 'paper' or 'sigmoid', got {gates!r}.")


def _assemble(encoder, decoder, multi_rate: bool, beta_range):
    if multi_rate:
        return MultiRateVAE(encoder, decoder, beta_range=tuple(float(v) for v in beta_range))
    return VAE(encoder, decoder)


def mlp_vae(
    input_shape,
    hidden_sizes,
    latent_size: int,
    *,
    multi_rate: bool = False,
    gates: str = "paper",
    beta_range: tuple[float, float] = (0.01, 10.0),
    dtype=None,
    key: PRNGKeyArray,
):
    """An MLP β-VAE (`multi_rate=False`) or MR-VAE: encoder widths `hidden_sizes`, decoder the
    reverse. `gates="paper"`: sigmoid gates in the encoder, sqrt-ReLU in the decoder;
    `gates="sigmoid"`: sigmoid everywhere. The same `key` gives the same base weights to both.

    Example:
        >>> import jax
        >>> mr = mlp_vae((64,), (32,), 4, multi_rate=True, key=jax.random.key(0))
        >>> type(mr).__name__, gated_units(mr)
        ('MultiRateVAE', 64)
    """
    enc_gate, dec_gate = _gate_pair(multi_rate, gates)
    ke, kd = jax.random.split(key)
    hidden = tuple(hidden_sizes)
    encoder = MLPEncoder(input_shape, hidden, latent_size, gate=enc_gate, dtype=dtype, key=ke)
    decoder = MLPDecoder(latent_size, hidden[::-1], input_shape, gate=dec_gate, dtype=dtype, key=kd)
    return _assemble(encoder, decoder, multi_rate, beta_range)


def conv_vae(
    input_shape,
    channels=(64, 128, 128),
    latent_size: int = 32,
    *,
    num_residual_blocks: int = 2,
    residual_channels: int = 32,
    multi_rate: bool = False,
    gates: str = "paper",
    beta_range: tuple[float, float] = (0.01, 10.0),
    dtype=None,
    key: PRNGKeyArray,
):
    """A convolutional (residual when `num_residual_blocks > 0`) β-VAE or MR-VAE; the defaults on
    `(1, 28, 28)` are the ResNet VAE of the paper's binary-image experiments (Chadebec et al.
    2022 layout: convs 64-128-128, 2 residual blocks, latent 32; the decoder mirrors it).

    Example:
        >>> import jax
        >>> vae = conv_vae((1, 8, 8), (8, 16), 4, num_residual_blocks=1, key=jax.random.key(0))
        >>> type(vae).__name__
        'VAE'
    """
    enc_gate, dec_gate = _gate_pair(multi_rate, gates)
    ke, kd = jax.random.split(key)
    channels = tuple(channels)
    kw = dict(
        num_residual_blocks=num_residual_blocks, residual_channels=residual_channels, dtype=dtype
    )
    encoder = ConvEncoder(input_shape, channels, latent_size, gate=enc_gate, key=ke, **kw)
    decoder = ConvDecoder(latent_size, input_shape, channels[::-1], gate=dec_gate, key=kd, **kw)
    return _assemble(encoder, decoder, multi_rate, beta_range)
