"""Ancestral DDPM sampler of GoHD (``inference.py: diff_synthesize_pose``), under jit + lax.scan.

Schedule: beta = linspace(1e-4, 0.05, 150) (training = inference), alpha = 1 - beta,
alpha_cum = cumprod(alpha). For n = N-1 .. 0 (the step value fed to the network is n, a float):

    x <- (x - beta_n / sqrt(1 - alpha_cum_n) * eps(x, n)) / sqrt(alpha_n)
    x <- x + sigma_n z_n,   sigma_n = sqrt((1 - alpha_cum_{n-1}) / (1 - alpha_cum_n) * beta_n)  (n > 0)

then clamp to [-1, 1]. The coefficients are computed in float32 in the official operation order
(numpy's float32 cumprod is sequential, as torch's). Pose adds pose0 to the clamped result
(residual head pose); gaze uses it as is. Noise is either given (``noise_init`` [B,T,C] and
``noise_steps`` [N-1,B,T,C], entry j used after the update at n = N-1-j) or drawn from ``key``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["linear_betas", "coefficients", "sample"]


def linear_betas(n: int = 150, start: float = 1e-4, end: float = 0.05) -> np.ndarray:
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


def sample(model: nnx.Module, local_cond, global_cond, *, noise_init=None, noise_steps=None,
           key=None, betas=None, pose0=None, return_trace: bool = False):
    """Runs the sampler. ``model(x, step, local_cond, global_cond) -> eps``.

    Returns the clamped sample [B,T,C] (+ ``pose0`` [B,C] when given), or with
    ``return_trace`` a dict: ``T`` [N], ``x_in`` / ``eps`` [N,B,T,C] (n = N-1 .. 0), ``preclamp``,
    ``clamped``, ``final``.
    """
    betas = linear_betas() if betas is None else np.asarray(betas, np.float32)
    n_steps = betas.shape[0]
    b, t = local_cond.shape[:2]
    c = model.cfg.in_channels
    if noise_init is None or noise_steps is None:
        if key is None:
            raise ValueError("give noise_init and noise_steps, or a PRNG key")
        k0, k1 = jax.random.split(key)
        noise_init = jax.random.normal(k0, (b, t, c), jnp.float32)
        noise_steps = jax.random.normal(k1, (n_steps - 1, b, t, c), jnp.float32)
    co = coefficients(betas)
    order = np.arange(n_steps - 1, -1, -1)
    xs = {"n": jnp.asarray(order.astype(np.float32)),
          "c1": jnp.asarray(co["c1"][order]), "c2": jnp.asarray(co["c2"][order]),
          "sigma": jnp.asarray(co["sigma"][order]),
          "z": jnp.concatenate([jnp.asarray(noise_steps, jnp.float32),
                                jnp.zeros((1, b, t, c), jnp.float32)], axis=0)}
    graphdef, state = nnx.split(model)
    out = _run(graphdef, state, jnp.asarray(noise_init, jnp.float32), xs,
               jnp.asarray(local_cond, jnp.float32), jnp.asarray(global_cond, jnp.float32))
    x_final, (x_in, eps) = out
    clamped = jnp.clip(x_final, -1.0, 1.0)
    final = clamped if pose0 is None else clamped + jnp.asarray(pose0, jnp.float32)[:, None, :]
    if not return_trace:
        return final
    return {"T": xs["n"], "x_in": x_in, "eps": eps, "preclamp": x_final, "clamped": clamped,
            "final": final}


@jax.jit(static_argnums=0)
def _run(graphdef, state, x0, xs, local_cond, global_cond):
    model = nnx.merge(graphdef, state)

    def body(x, s):
        eps = model(x, s["n"][None], local_cond, global_cond)
        x_new = s["c1"] * (x - s["c2"] * eps)
        x_new = x_new + s["sigma"] * s["z"]
        return x_new, (x, eps)

    return jax.lax.scan(body, x0, xs)
