"""GoHD's diffusion schedule and its two samplers (ancestral DDPM, DDIM), under jit + lax.scan.

Schedule: beta = linspace(1e-4, 0.05, 150) (training = inference), alpha = 1 - beta,
alpha_cum = cumprod(alpha). Training noises x0 at step t (0-based) to
x_t = sqrt(alpha_cum_t) x0 + sqrt(1 - alpha_cum_t) eps; the network sees t.

Both samplers are a chain of S updates run by one ``lax.scan``: at entry i, with the step value
n_i fed to the network (a float),

    x <- c1_i * (x - c2_i * eps(x, n_i)) + sigma_i * z_i            (z_i ~ N(0, I); sigma_last = 0)

then clamp to [-1, 1]. Pose adds pose0 to the clamped result (residual head pose); gaze uses it
as is.

* ``ddpm`` (``inference.py: diff_synthesize_pose``, S = N = 150): n = N-1 .. 0,
  c1 = 1/sqrt(alpha_n), c2 = beta_n/sqrt(1 - alpha_cum_n),
  sigma_n = sqrt((1 - alpha_cum_{n-1}) / (1 - alpha_cum_n) * beta_n). The coefficients are float32
  in the official operation order (numpy's float32 cumprod is sequential, as torch's).
* ``ddim`` (Song et al. 2021) with any S <= N: steps tau = round(linspace(0, N-1, S)), descending;
  with a = alpha_cum_tau_i, p = alpha_cum_tau_{i+1} (1 after the last):
  sigma = eta sqrt((1-p)/(1-a)) sqrt(1 - a/p), c1 = sqrt(p/a),
  c2 = sqrt(1-a) - sqrt(1 - p - sigma^2) sqrt(a/p) (float64, then float32). eta = 0 is
  deterministic; S = N with eta = 1 is the DDPM chain above (the same coefficients).

Noise is either given (``noise_init`` [B,T,C] and ``noise_steps`` [S-1,B,T,C], entry j used after
update j) or drawn from ``key``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["NUM_TRAIN_STEPS", "SamplerSpec", "linear_betas", "coefficients", "ddpm_chain",
           "ddim_chain", "chain_for", "run_chain", "draw_noise", "sample"]

NUM_TRAIN_STEPS = 150


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Which sampler: ``method`` "ddpm" (the release's, always N steps) or "ddim" with ``steps``
    updates and stochasticity ``eta`` (0 = deterministic)."""
    method: str = "ddpm"
    steps: int = NUM_TRAIN_STEPS
    eta: float = 0.0

    def __post_init__(self):
        if self.method not in ("ddpm", "ddim"):
            raise ValueError(f"sampler method must be 'ddpm' or 'ddim', got {self.method!r}")
        if int(self.steps) < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"DDIM eta must be in [0, 1], got {self.eta}")


def linear_betas(n: int = NUM_TRAIN_STEPS, start: float = 1e-4, end: float = 0.05) -> np.ndarray:
    return np.linspace(start, end, n, dtype=np.float64).astype(np.float32)


def coefficients(betas) -> dict[str, np.ndarray]:
    """Per-step float32 c1 = 1/sqrt(alpha), c2 = beta/sqrt(1-alpha_cum), sigma (sigma_0 = 0)."""
    beta = np.asarray(betas, np.float32)
    alpha = (np.float32(1.0) - beta).astype(np.float32)
    alpha_cum = np.cumprod(alpha, dtype=np.float32)
    one = np.float32(1.0)
    c1 = (one / np.sqrt(alpha)).astype(np.float32)
    c2 = (beta / np.sqrt(one - alpha_cum)).astype(np.float32)
    sigma = np.zeros_like(beta)
    sigma[1:] = np.sqrt((one - alpha_cum[:-1]) / (one - alpha_cum[1:]) * beta[1:])
    return {"c1": c1, "c2": c2, "sigma": sigma.astype(np.float32), "alpha_cum": alpha_cum}


def ddpm_chain(betas) -> dict[str, np.ndarray]:
    """The release's ancestral chain, in run order: ``n``, ``c1``, ``c2``, ``sigma``, each [N]."""
    co = coefficients(betas)
    order = np.arange(len(co["c1"]) - 1, -1, -1)
    return {"n": order.astype(np.float32), "c1": co["c1"][order], "c2": co["c2"][order],
            "sigma": co["sigma"][order]}


def ddim_chain(betas, steps: int, eta: float = 0.0) -> dict[str, np.ndarray]:
    """A DDIM chain of ``steps`` updates over the training schedule (see the module docstring)."""
    beta = np.asarray(betas, np.float32).astype(np.float64)
    n_train = len(beta)
    if not 1 <= steps <= n_train:
        raise ValueError(f"DDIM steps must be in 1..{n_train}, got {steps}")
    alpha_cum = np.cumprod(1.0 - beta)
    taus = np.unique(np.round(np.linspace(0, n_train - 1, steps)).astype(np.int64))[::-1]
    a = alpha_cum[taus]
    p = np.concatenate([alpha_cum[taus[1:]], [1.0]])
    sigma = eta * np.sqrt((1 - p) / (1 - a)) * np.sqrt(np.maximum(1 - a / p, 0.0))
    c1 = np.sqrt(p / a)
    c2 = np.sqrt(1 - a) - np.sqrt(np.maximum(1 - p - sigma ** 2, 0.0)) * np.sqrt(a / p)
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return {"n": f32(taus), "c1": f32(c1), "c2": f32(c2), "sigma": f32(sigma)}


def chain_for(spec: SamplerSpec, betas=None) -> dict[str, np.ndarray]:
    betas = linear_betas() if betas is None else np.asarray(betas, np.float32)
    if spec.method == "ddpm":
        return ddpm_chain(betas)
    return ddim_chain(betas, int(spec.steps), float(spec.eta))


def run_chain(model: nnx.Module, x_init: jax.Array, chain, z: jax.Array, local_cond: jax.Array,
              global_cond: jax.Array | None):
    """The scan itself (call inside jit). ``chain``: arrays [S] (``n``, ``c1``, ``c2``,
    ``sigma``); ``z`` [S,B,T,C] (the last row unused). Returns (x after the chain, (x_in, eps)
    per update, each [S,B,T,C])."""
    xs = {k: jnp.asarray(v) for k, v in chain.items()}
    xs["z"] = z

    def body(x, s):
        eps = model(x, s["n"][None], local_cond, global_cond)
        x_new = s["c1"] * (x - s["c2"] * eps)
        x_new = x_new + s["sigma"] * s["z"]
        return x_new, (x, eps)

    return jax.lax.scan(body, x_init, xs)


def draw_noise(key: jax.Array, num_updates: int, shape) -> tuple[jax.Array, jax.Array]:
    """(initial noise [B,T,C], per-update noise [S,B,T,C] with a zero last row) from ``key``."""
    k0, k1 = jax.random.split(key)
    z = jax.random.normal(k1, (num_updates - 1, *shape), jnp.float32)
    return (jax.random.normal(k0, shape, jnp.float32),
            jnp.concatenate([z, jnp.zeros((1, *shape), jnp.float32)], axis=0))


def sample(model: nnx.Module, local_cond, global_cond, *, spec: SamplerSpec = SamplerSpec(),
           noise_init=None, noise_steps=None, key=None, betas=None, pose0=None,
           return_trace: bool = False):
    """Runs a sampler. ``model(x, step, local_cond, global_cond) -> eps``; ``local_cond``
    [B,T,Dl], ``global_cond`` [B,G] (or None for a model without one).

    Returns the clamped sample [B,T,C] (+ ``pose0`` [B,C] when given), or with
    ``return_trace`` a dict: ``T`` [S] (the step values fed), ``x_in`` / ``eps`` [S,B,T,C],
    ``preclamp``, ``clamped``, ``final``.
    """
    chain = chain_for(spec, betas)
    num_updates = len(chain["n"])
    b, t = local_cond.shape[:2]
    shape = (b, t, model.cfg.in_channels)
    if noise_init is None or noise_steps is None:
        if key is None:
            raise ValueError("give noise_init and noise_steps, or a PRNG key")
        noise_init, z = draw_noise(key, num_updates, shape)
    else:
        noise_steps = jnp.asarray(noise_steps, jnp.float32)
        if noise_steps.shape != (num_updates - 1, *shape):
            raise ValueError(f"noise_steps must be {(num_updates - 1, *shape)}, got {noise_steps.shape}")
        z = jnp.concatenate([noise_steps, jnp.zeros((1, *shape), jnp.float32)], axis=0)
    graphdef, state = nnx.split(model)
    gc = None if global_cond is None else jnp.asarray(global_cond, jnp.float32)
    x_final, (x_in, eps) = _run(graphdef, state, jnp.asarray(noise_init, jnp.float32), chain, z,
                                jnp.asarray(local_cond, jnp.float32), gc)
    clamped = jnp.clip(x_final, -1.0, 1.0)
    final = clamped if pose0 is None else clamped + jnp.asarray(pose0, jnp.float32)[:, None, :]
    if not return_trace:
        return final
    return {"T": jnp.asarray(chain["n"]), "x_in": x_in, "eps": eps, "preclamp": x_final,
            "clamped": clamped, "final": final}


@jax.jit(static_argnums=0)
def _run(graphdef, state, x0, chain, z, local_cond, global_cond):
    return run_chain(nnx.merge(graphdef, state), x0, chain, z, local_cond, global_cond)
