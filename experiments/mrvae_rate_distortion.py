"""Multi-Rate VAE (Bae et al., ICLR 2023): one training run gives the whole rate-distortion curve.

One MR-VAE (β log-uniform on [0.01, 10], one β per minibatch step, Algorithm 1) against 10
β-VAEs at log-spaced β trained as one vmapped population, on binarized scikit-learn digits
(quick; threshold 0.5, 1497 train / 300 test) or binarized 28x28 images from a user path
(paper). Evaluation on the test split at the 10 β (and 20 for the MR-VAE curve): rate,
distortion, D + βR, active units. Comparisons at matched rate and on each β's own objective —
never distortion at equal β. A linear-VAE part measures the gap of joint training to the exact
response (Theorem 1 proves representability only).

Choices where the paper is silent: MLP encoder/decoder (hidden 256, latent 16) at quick scale,
Adam with a cosine schedule and no learning-rate grid at quick scale (lr 1e-3), no KL annealing.
"""

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import respax.generative as rg
from experiments._api import Claim, Experiment, Result
from experiments._data import load_digits, load_mnist
from respax.core import BernoulliLoss


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "digits"  # "digits" or "mnist" (binarized 28x28 from mnist_path)
    mnist_path: str = ""
    arch: str = "mlp"  # "mlp" or "resnet"
    hidden: int = 256
    latent: int = 16
    steps: int = 3000
    batch: int = 128
    lr: float = 1e-3
    n_baselines: int = 10
    n_eval_betas: int = 20
    beta_min: float = 0.01
    beta_max: float = 10.0
    linear_steps: int = 3000
    timing_steps: int = 100


SCALES = {
    "smoke": Config(steps=30, hidden=32, latent=4, n_baselines=3, n_eval_betas=4,
                    linear_steps=0, timing_steps=0),
    "quick": Config(steps=10_000),  # 78 s measured; at 3000 steps the response was far off
    "paper": Config(dataset="mnist", arch="resnet", latent=32, steps=200 * 469, batch=128),
}  # fmt: skip


def paper_probe(cfg: Config) -> Config:
    return dataclasses.replace(cfg, dataset="generated28", steps=2, n_baselines=2,
                               n_eval_betas=2, linear_steps=2, timing_steps=1)  # fmt: skip


def _data(cfg: Config, seed: int):
    if cfg.dataset == "digits":
        x, _ = load_digits(seed=seed)
        x = (x > 0.5).astype(np.float32).reshape(-1, 1, 8, 8)
        return x[:1497], x[1497:]
    if cfg.dataset == "generated28":
        x = np.random.default_rng(seed).random((512, 1, 28, 28)) > 0.5
        return x[:384].astype(np.float32), x[384:].astype(np.float32)
    if cfg.dataset == "mnist":
        x = load_mnist(cfg.mnist_path)
        x = (x.reshape(-1, 1, 28, 28) > 0.5).astype(np.float32)
        return x[:-10000], x[-10000:]
    raise ValueError(f"dataset must be 'digits' or 'mnist', got {cfg.dataset!r}")


def _model(cfg: Config, shape, multi_rate: bool, key):
    kw = dict(multi_rate=multi_rate, beta_range=(cfg.beta_min, cfg.beta_max), key=key)
    if cfg.arch == "mlp":
        return rg.mlp_vae(shape, (cfg.hidden,), cfg.latent, **kw)
    return rg.conv_vae(shape, (64, 128, 128), cfg.latent, num_residual_blocks=2, **kw)


def _n_params(m) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(m, eqx.is_array)))


def _trainer(cfg: Config, x_train, loss_of):
    """`train(model, key) -> model`: `cfg.steps` Adam steps on `loss_of(model, xb, key)`."""
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))
    data = jnp.asarray(x_train)
    n = data.shape[0]

    def train(model, key):
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def step(carry, k):
            p, s = carry
            kb, kl = jax.random.split(k)
            xb = data[jax.random.randint(kb, (cfg.batch,), 0, n)]
            grads = jax.grad(lambda q: loss_of(eqx.combine(q, static), xb, kl))(p)
            upd, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, upd), s), None

        (params, _), _ = jax.lax.scan(
            step, (params, opt.init(params)), jax.random.split(key, cfg.steps)
        )
        return eqx.combine(params, static)

    return train


def run(cfg: Config, ctx) -> Result:
    lik = BernoulliLoss()
    x_train, x_test = _data(cfg, ctx.seed)
    shape = x_train.shape[1:]
    betas = rg.log_spaced_betas(cfg.n_baselines, (cfg.beta_min, cfg.beta_max))
    k_model, k_train, k_eval = jax.random.split(ctx.key, 3)
    xt = jnp.asarray(x_test)

    # One MR-VAE.
    mr = _model(cfg, shape, True, k_model)
    mr_loss = lambda m, xb, k: rg.mrvae_loss(m, lik, xb, key=k)
    t0 = time.perf_counter()
    mr = eqx.filter_jit(_trainer(cfg, x_train, mr_loss))(mr, k_train)
    jax.block_until_ready(jax.tree.leaves(eqx.filter(mr, eqx.is_array)))
    mr_seconds = time.perf_counter() - t0

    # N β-VAEs as one vmapped population (same initial weights, the same data order).
    base = _model(cfg, shape, False, k_model)
    pop = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(betas),) + a.shape) if eqx.is_array(a)
                       else a, base)  # fmt: skip
    bvae_loss = lambda beta: lambda m, xb, k: rg.beta_vae_loss(m, lik, xb, key=k, beta=beta)
    train_one = lambda m, beta: _trainer(cfg, x_train, bvae_loss(beta))(m, k_train)
    t0 = time.perf_counter()
    pop = eqx.filter_jit(eqx.filter_vmap(train_one))(pop, jnp.asarray(betas, jnp.float32))
    jax.block_until_ready(jax.tree.leaves(eqx.filter(pop, eqx.is_array)))
    pop_seconds = time.perf_counter() - t0

    # Evaluation on the test split.
    mr_at = rg.rate_distortion_curve(mr, lik, xt, betas, key=k_eval)
    eval_b = lambda m, beta: rg.beta_vae_rate_distortion(m, lik, xt, beta, key=k_eval)
    bv = eqx.filter_jit(eqx.filter_vmap(eval_b))(pop, jnp.asarray(betas, jnp.float32))
    bv_rate, bv_dist = np.asarray(bv.rate[:, 0]), np.asarray(bv.distortion[:, 0])
    bv_loss, bv_au = np.asarray(bv.loss[:, 0]), np.asarray(bv.active_units[:, 0])
    curve = rg.rate_distortion_curve(
        mr,
        lik,
        xt,
        rg.log_spaced_betas(cfg.n_eval_betas, (cfg.beta_min, cfg.beta_max)),
        key=k_eval,
    )
    ratio = np.asarray(mr_at.loss) / bv_loss
    wins = int(np.sum(ratio <= 1.02))
    matched = rg.distortion_at_rate(bv_rate, bv_dist, np.asarray(curve.rate))
    gaps = np.asarray(curve.distortion) - matched
    max_gap = float(np.nanmax(gaps)) if np.isfinite(gaps).any() else float("nan")

    # Cost: parameters and per-step time of one MR-VAE vs one β-VAE (same steps, interleaved).
    params_ratio = _n_params(mr) / _n_params(base)
    tcfg = dataclasses.replace(cfg, steps=max(cfg.timing_steps, 1))
    t_mr = eqx.filter_jit(_trainer(tcfg, x_train, mr_loss))
    t_bv = eqx.filter_jit(_trainer(tcfg, x_train, bvae_loss(1.0)))
    base0, mr0 = _model(cfg, shape, False, k_model), _model(cfg, shape, True, k_model)
    times = {"mr": [], "bv": []}
    for i in range(4 if cfg.timing_steps else 0):
        for name, fn, m in (("mr", t_mr, mr0), ("bv", t_bv, base0)):
            t0 = time.perf_counter()
            jax.block_until_ready(jax.tree.leaves(eqx.filter(fn(m, k_train), eqx.is_array)))
            if i:  # the first call compiles
                times[name].append(time.perf_counter() - t0)
    # timing_steps = 0 (smoke): not measured.
    time_ratio = float(np.median(times["mr"]) / np.median(times["bv"])) if times["mr"] else 1.0

    # Linear VAE: the gap of joint training to the exact response, in float64 (in float32 the
    # L-BFGS fit stalls at D+βR 20.03 against the exact 14.41 from step ~100 on: a precision
    # failure of the line search, not of the model; float64 reaches 14.416).
    if cfg.linear_steps:
        with jax.enable_x64(True):
            lin = _linear_gap(cfg, ctx.seed)
    else:
        lin = float("nan")

    claims = [
        Claim(
            f"MR-VAE's D+βR <= 1.02x the dedicated β-VAE's at >= {math.ceil(len(betas) / 2)} "
            f"of {len(betas)} β (test split)",
            "quick", "MR-VAE competitive with or better than separate β-VAEs (Fig. 5)",
            f"{wins} of {len(betas)}; ratios {np.round(ratio, 3).tolist()}",
            wins >= math.ceil(len(betas) / 2),
        ),
        Claim(
            "MR-VAE distortion at matched rate within 1 nat of the β-VAE curve (worst point)",
            "quick", "RD curves 'closely align' / competitive (Fig. 4, 5)",
            round(max_gap, 3), bool(max_gap <= 1.0) if math.isfinite(max_gap) else None,
            "" if math.isfinite(max_gap) else "no MR-VAE rate inside the β-VAE rate range",
        ),
        Claim(
            "one MR-VAE costs about one β-VAE: parameters <= 1.03x, step time <= 1.05x",
            "quick", "18.84e4 vs 18.81e4 params (1.0016x); 5,040 s vs 4,836 s (1.04x); "
            "38,492 s for 8 β-VAEs",
            f"params {params_ratio:.4f}x, step time {time_ratio:.3f}x (loaded shared CPU)",
            bool(params_ratio <= 1.03 and time_ratio <= 1.05),
        ),
        Claim(
            "best test ELBO: MR-VAE better than the β-VAEs",
            "paper", "MNIST ResNet 87.89 vs 89.63 nats (App. Table 2)", None, None,
            "needs the paper-scale ResNet on MNIST",
        ),
        Claim(
            "linear VAE, joint training reaches the exact response (rel. error <= 1e-3)",
            "quick", "Theorem 1: the gates can represent it (existence only)",
            round(lin, 4), bool(lin <= 1e-3) if math.isfinite(lin) else None,
            "float64 L-BFGS; measured, never loosened; representability is proven, "
            "reachability is not",
        ),
    ]  # fmt: skip
    metrics = {
        "betas": betas.tolist(),
        "mrvae": {k: np.asarray(v).tolist() for k, v in mr_at._asdict().items()},
        "betavae": {"rate": bv_rate.tolist(), "distortion": bv_dist.tolist(),
                    "loss": bv_loss.tolist(), "active_units": bv_au.tolist()},
        "mrvae_curve": {k: np.asarray(v).tolist() for k, v in curve._asdict().items()},
        "objective_ratio": ratio.tolist(),
        "matched_rate_gap_max": max_gap,
        "train_seconds": {"mrvae": mr_seconds, "betavae_population": pop_seconds},
        "params": {"mrvae": _n_params(mr), "betavae": _n_params(base)},
        "step_time_ratio": time_ratio,
        "linear_joint_gap": lin,
        "dataset": cfg.dataset,
    }  # fmt: skip
    _plot(ctx, curve, bv_rate, bv_dist)
    return Result(metrics=metrics, claims=claims, report=__doc__)


def _linear_gap(cfg: Config, seed: int) -> float:
    d, k = 6, 3
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = rng.normal(size=(4000, d)) * np.sqrt([40.0, 25.0, 15.0, 2.0, 1.0, 0.5]) @ q.T
    x = x - x.mean(0)
    cov = jnp.asarray(x.T @ x / len(x), jnp.float64)
    betas = np.geomspace(cfg.beta_min, cfg.beta_max, 10)
    m = rg.LinearMultiRateVAE(d, k, beta_range=(cfg.beta_min, cfg.beta_max),
                              key=jax.random.key(seed))  # fmt: skip
    fit = lambda m: rg.fit_linear_mrvae(m, cov, betas, setting="joint", steps=cfg.linear_steps)
    m, _ = eqx.filter_jit(fit)(m)
    errs = []
    for b in betas:
        opt = rg.linear_vae_optimum(cov, k, float(b))
        p = m.response(float(b))
        rel = lambda a, t: float(jnp.linalg.norm(a - t) / jnp.linalg.norm(t))
        errs.append(max(rel(p.decoder @ p.decoder.T, opt.decoder @ opt.decoder.T),
                        rel(p.decoder @ p.encoder, opt.decoder @ opt.encoder),
                        rel(jnp.sort(p.variance), jnp.sort(opt.variance))))  # fmt: skip
    return float(max(errs))


def _plot(ctx, curve, bv_rate, bv_dist) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.asarray(curve.rate), np.asarray(curve.distortion), "o-", label="one MR-VAE")
    ax.plot(bv_rate, bv_dist, "s", label="β-VAEs (one per β)")
    ax.set_xlabel("rate (nats)")
    ax.set_ylabel("distortion (nats)")
    ax.legend()
    ctx.save_figure(fig, "rate_distortion.png")
    plt.close(fig)


EXPERIMENT = Experiment(
    name="mrvae_rate_distortion",
    title="Multi-Rate VAE (Bae et al. 2023): the rate-distortion curve from one training run",
    config=Config,
    scales=SCALES,
    run=run,
    paper_probe=paper_probe,
)
