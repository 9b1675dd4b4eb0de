"""The linear VAE oracle (Lucas et al. 2019; MR-VAE paper §3.2 and App. A).

Model: p(x|z) = N(Dz + μ, I), q(z|x) = N(E(x - μ), diag c), prior N(0, I). With the data
covariance S (mean removed) the expected rate and distortion are closed-form, and so is the
β-VAE optimum: D* = U (max(0, Λ - β))^{1/2} (up to a rotation; here R = I), E* = (DᵀD + βI)⁻¹Dᵀ,
c* = β / (diag(DᵀD) + β), with U, Λ the top-k eigenvectors/values of S.

`LinearMultiRateVAE` is the gated factorised model of the paper's Theorem 1: E = E₂ diag(σ(·)) E₁,
c = exp(s) σ(·), D = D₂ diag(√relu(1 - exp(·))) D₁, whose gates can represent the exact response
functions (E and c for a fixed D, and D at the pPCA optimum).
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float


class LinearVAEParams(NamedTuple):
    """Decoder `D` (d×k), encoder `E` (k×d) and posterior variances `c` (k,)."""

    decoder: Float[Array, "d k"]
    encoder: Float[Array, "k d"]
    variance: Float[Array, " k"]


def linear_vae_rate_distortion(
    params: LinearVAEParams, cov: Float[Array, "d d"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Expected rate and distortion (nats) of a linear VAE on data of covariance `cov`.

    Example:
        >>> import jax.numpy as jnp
        >>> p = LinearVAEParams(jnp.zeros((2, 1)), jnp.zeros((1, 2)), jnp.ones(1))
        >>> r, d = linear_vae_rate_distortion(p, jnp.eye(2))
        >>> float(r), round(float(d), 4)  # posterior = prior; D = tr(S)/2 + log(2π)
        (0.0, 2.8379)
    """
    D, E, c = params
    d, k = D.shape
    resid = jnp.eye(d, dtype=D.dtype) - D @ E
    dist = 0.5 * jnp.trace(resid @ cov @ resid.T) + 0.5 * jnp.sum(jnp.sum(D * D, 0) * c)
    dist = dist + 0.5 * d * math.log(2 * math.pi)
    rate = 0.5 * (jnp.sum(c) + jnp.trace(E @ cov @ E.T) - k - jnp.sum(jnp.log(c)))
    return rate, dist


def linear_vae_encoder_optimum(decoder: Float[Array, "d k"], beta) -> tuple[Array, Array]:
    """`E*, c*` of a linear β-VAE for a given decoder `D`: (DᵀD + βI)⁻¹Dᵀ and β/(diag DᵀD + β).

    Example:
        >>> import jax.numpy as jnp
        >>> E, c = linear_vae_encoder_optimum(jnp.array([[1.0], [0.0]]), 1.0)
        >>> E.tolist(), c.tolist()
        ([[0.5, 0.0]], [0.5])
    """
    k = decoder.shape[1]
    dtd = decoder.T @ decoder
    E = jnp.linalg.solve(dtd + beta * jnp.eye(k, dtype=decoder.dtype), decoder.T)
    return E, beta / (jnp.diag(dtd) + beta)


def linear_vae_optimum(cov: Float[Array, "d d"], latent_size: int, beta) -> LinearVAEParams:
    """The closed-form optimum of the linear β-VAE with σ² = 1 (the rotation R = I).

    Example:
        >>> import jax.numpy as jnp
        >>> p = linear_vae_optimum(jnp.diag(jnp.array([4.0, 2.0])), 1, 1.0)
        >>> (p.decoder.T @ p.decoder).tolist()  # λ₁ - β
        [[3.0]]
    """
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"`cov` must be a square matrix, got shape {cov.shape}.")
    if not 1 <= latent_size <= cov.shape[0]:
        raise ValueError(f"`latent_size` must lie in [1, {cov.shape[0]}], got {latent_size}.")
    lam, U = jnp.linalg.eigh(cov)
    lam, U = lam[::-1][:latent_size], U[:, ::-1][:, :latent_size]
    D = U * jnp.sqrt(jnp.maximum(lam - beta, 0.0))
    E, c = linear_vae_encoder_optimum(D, beta)
    return LinearVAEParams(D, E, c)


class LinearMultiRateVAE(eqx.Module):
    """The gated two-layer linear MR-VAE of the paper's Theorem 1 (hyper-input: standardized
    log β on `beta_range`, as `MultiRateVAE`).

    Example:
        >>> import jax
        >>> m = LinearMultiRateVAE(4, 2, key=jax.random.key(0))
        >>> [a.shape for a in m.response(1.0)]
        [(4, 2), (2, 4), (2,)]
    """

    enc1: Float[Array, "k d"]
    enc2: Float[Array, "k k"]
    enc_gate: Float[Array, "2 k"]
    log_var: Float[Array, " k"]
    var_gate: Float[Array, "2 k"]
    dec1: Float[Array, "k k"]
    dec2: Float[Array, "d k"]
    dec_gate: Float[Array, "2 k"]
    beta_range: tuple[float, float] = eqx.field(static=True)

    def __init__(self, data_size: int, latent_size: int, *, beta_range=(0.01, 10.0), key):
        d, k = data_size, latent_size
        ks = jax.random.split(key, 7)
        dt = jnp.zeros(()).dtype
        self.enc1 = jax.random.normal(ks[0], (k, d), dt) / math.sqrt(d)
        self.enc2 = jnp.eye(k, dtype=dt) + 0.1 * jax.random.normal(ks[1], (k, k), dt)
        self.enc_gate = jax.random.normal(ks[2], (2, k), dt)
        self.log_var = jnp.zeros((k,), dt)
        self.var_gate = jax.random.normal(ks[3], (2, k), dt)
        self.dec1 = jnp.eye(k, dtype=dt) + 0.1 * jax.random.normal(ks[4], (k, k), dt)
        self.dec2 = jax.random.normal(ks[5], (d, k), dt) / math.sqrt(k)
        self.dec_gate = jnp.stack([jnp.full((k,), 1.0, dt), jnp.full((k,), -1.0, dt)])
        self.beta_range = tuple(float(v) for v in beta_range)

    def hyper_input(self, beta) -> Array:
        la, lb = (math.log(v) for v in self.beta_range)
        lbeta = jnp.log(jnp.asarray(beta, self.enc1.dtype))
        return (lbeta - (la + lb) / 2) / ((lb - la) / math.sqrt(12.0))

    def decoder(self, beta) -> Float[Array, "d k"]:
        u = self.hyper_input(beta)
        g = jnp.sqrt(jax.nn.relu(-jnp.expm1(self.dec_gate[0] * u + self.dec_gate[1])))
        return self.dec2 @ (g[:, None] * self.dec1)

    def encoder(self, beta) -> tuple[Float[Array, "k d"], Float[Array, " k"]]:
        u = self.hyper_input(beta)
        g = jax.nn.sigmoid(self.enc_gate[0] * u + self.enc_gate[1])
        c = jnp.exp(self.log_var) * jax.nn.sigmoid(self.var_gate[0] * u + self.var_gate[1])
        return self.enc2 @ (g[:, None] * self.enc1), c

    def response(self, beta) -> LinearVAEParams:
        """`(D, E, c)` at β."""
        E, c = self.encoder(beta)
        return LinearVAEParams(self.decoder(beta), E, c)


def fit_linear_mrvae(
    model: LinearMultiRateVAE,
    cov: Float[Array, "d d"],
    betas,
    *,
    setting: str,
    fixed_decoder: Array | None = None,
    steps: int = 3000,
) -> tuple[LinearMultiRateVAE, Array]:
    """Minimise the mean over `betas` of the exact objective `D + βR` with L-BFGS.

    `setting`: `"encoder"` (E and c trained, the decoder frozen at `fixed_decoder`),
    `"decoder"` (D trained, E and c at their closed-form optimum given D: the pPCA problem) or
    `"joint"` (everything trained). Returns the model and the final loss. Call it inside `jit`
    if you want it compiled.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = LinearMultiRateVAE(3, 1, key=jax.random.key(0))
        >>> cov = jnp.diag(jnp.array([20.0, 1.0, 0.5]))
        >>> fit = jax.jit(lambda m: fit_linear_mrvae(m, cov, [0.1, 1.0], setting="decoder"))
        >>> m, loss = fit(m)  # doctest: +SKIP
    """
    if setting not in ("encoder", "decoder", "joint"):
        raise ValueError(f"`setting` must be 'encoder', 'decoder' or 'joint', got {setting!r}.")
    if setting == "encoder" and fixed_decoder is None:
        raise ValueError("`fixed_decoder` is required with setting='encoder'.")
    betas = jnp.asarray(betas, model.enc1.dtype)

    def loss_fn(m):
        def one(beta):
            if setting == "encoder":
                E, c = m.encoder(beta)
                p = LinearVAEParams(fixed_decoder, E, c)
            elif setting == "decoder":
                D = m.decoder(beta)
                p = LinearVAEParams(D, *linear_vae_encoder_optimum(D, beta))
            else:
                p = m.response(beta)
            r, d = linear_vae_rate_distortion(p, cov)
            return d + beta * r

        return jnp.mean(jax.vmap(one)(betas))

    params, static = eqx.partition(model, eqx.is_inexact_array)
    f = lambda p: loss_fn(eqx.combine(p, static))
    opt = optax.lbfgs()
    state = opt.init(params)
    value_and_grad = optax.value_and_grad_from_state(f)

    def body(carry, _):
        p, s = carry
        v, g = value_and_grad(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=f)
        return (optax.apply_updates(p, u), s), None

    (params, state), _ = jax.lax.scan(body, (params, state), None, length=steps)
    return eqx.combine(params, static), f(params)
