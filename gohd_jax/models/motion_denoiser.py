"""GoHD's pose / gaze diffusion denoiser (the LDA "conformer" with TISA attention) in Flax NNX.

Re-implementation of the official ``networks/models/nn.py: LDA(params, 'tisa')`` (DiffWave-style
residual stack whose residual function is a TISA transformer), channels-last ``[B, T, C]``:

    h = ReLU(Conv1x1(x));  e = SiLU(Lin(SiLU(Lin(step_table(step)))))
    cond = [local_cond ; global_cond repeated over time]
    for each of L layers:  y = h + Lin(e) + Lin(cond);  y = TisaTransformer(y)   (-> 2R)
                           y = sigmoid(y[:R]) * tanh(y[R:]);  y = Conv1x1(y) -> (res, skip)
                           h = (h + res) / sqrt(2);  skips += skip
    eps = Conv1x1(ReLU(Conv1x1(skips / sqrt(L))))      (the last kernel zero-initialised)

The step embedding looks integer steps up in a [max_steps, 128] sinusoid table
(row s = [sin(s f_d), cos(s f_d)], f_d = 10^(4d/63)) and linearly interpolates fractional steps
between rows floor(t) and ceil(t) as the official ``_lerp_embedding`` does. The official table is
float32 from torch; ``s f_d`` reaches ~1.5e6, so a 1-ulp difference in ``f_d`` moves entries a lot.
``step_table`` rounds f_d correctly (float64 pow, then float32), which reproduces the official
table to ~6e-8; an exact table (the oracles store it as ``diffusion_embedding_table``) can still
be installed with ``set_step_table``.

Precision and remat (``gohd_jax.nn.policy``): the residual stack computes in the policy's dtype;
the step table, the sum of skips and the predicted noise are float32 (the sampler's state never
leaves float32). ``remat="blocks"``: each residual layer is a remat block; ``"full"``: the whole
forward too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.nn.policy import DEFAULT
from gohd_jax.nn.tisa import Conv1d, TisaTransformer

__all__ = ["MotionDenoiserConfig", "StepTable", "step_table", "DiffusionEmbedding",
           "ResidualLayer", "MotionDenoiser"]


@dataclass(frozen=True)
class MotionDenoiserConfig:
    in_channels: int = 6            # 6 pose (3 rotation + 3 translation), 2 gaze
    global_dim: int = 6             # pose0 (6) or gaze0 (2); 0: no global condition
    local_dim: int = 320            # per-frame mel condition
    residual_layers: int = 20
    residual_channels: int = 256
    embedding_dim: int = 512
    step_in_dim: int = 128          # sinusoid width (64 frequencies, sin | cos)
    max_steps: int = 150            # n_noise_schedule: rows of the step table
    num_blocks: int = 2
    num_heads: int = 8
    d_ff: int = 1024
    dilation_cycle: tuple[int, ...] = (0, 1, 2)
    num_kernels: int = 21
    seq_len: int = 150              # pose_seq_len; TISA max field of view = seq_len // 2

    @classmethod
    def pose(cls) -> "MotionDenoiserConfig":
        return cls(in_channels=6, global_dim=6)

    @classmethod
    def gaze(cls) -> "MotionDenoiserConfig":
        return cls(in_channels=2, global_dim=2)

    @classmethod
    def tiny(cls, in_channels: int = 6, global_dim: int = 6) -> "MotionDenoiserConfig":
        return cls(in_channels=in_channels, global_dim=global_dim, local_dim=16,
                   residual_layers=3, residual_channels=32, embedding_dim=64, step_in_dim=128,
                   max_steps=150, num_blocks=2, num_heads=4, d_ff=64, num_kernels=5, seq_len=32)


class StepTable(nnx.Variable):
    """The constant sinusoid step table (a non-persistent buffer in torch; never trained)."""


def step_table(max_steps: int, in_dim: int = 128) -> jax.Array:
    """[max_steps, in_dim] float32 table, row s = [sin(s f_d), cos(s f_d)], f_d = 10^(4d/63).

    The exponent 4d/63 is formed in float32 as torch does; f_d is the correctly rounded float32
    of 10^exponent (numpy float64 pow, then rounded), which is what torch's float32 ``pow`` gives
    here. XLA's float32 ``pow`` (exp(y log x)) is off by ulps, and since s f_d reaches ~1.5e6 that
    moves entries by up to ~0.7. With this, the table matches the official one to ~6e-8.
    """
    half = in_dim // 2
    expo = (np.arange(half, dtype=np.float32) * np.float32(4.0) / np.float32(63.0)).astype(
        np.float32)
    freqs = jnp.asarray((10.0 ** expo.astype(np.float64)).astype(np.float32))
    table = jnp.arange(max_steps, dtype=jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(table), jnp.cos(table)], axis=1).astype(jnp.float32)


class DiffusionEmbedding(nnx.Module):
    def __init__(self, max_steps: int, in_dim: int, hidden: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.embedding = StepTable(step_table(max_steps, in_dim))
        self.projection1 = nnx.Linear(in_dim, hidden, rngs=rngs, param_dtype=param_dtype)
        self.projection2 = nnx.Linear(hidden, hidden, rngs=rngs, param_dtype=param_dtype)

    def lookup(self, step) -> jax.Array:
        """Table rows for ``step`` (int: direct; float: official lerp). Returns [N, in_dim]."""
        table = jax.lax.stop_gradient(self.embedding[...])
        step = jnp.atleast_1d(jnp.asarray(step))
        if jnp.issubdtype(step.dtype, jnp.integer):
            return table[step]
        t = step.astype(jnp.float32)
        lo = jnp.floor(t).astype(jnp.int32)
        hi = jnp.ceil(t).astype(jnp.int32)
        low, high = table[lo], table[hi]
        return low + (high - low) * (t - lo.astype(jnp.float32))[:, None]

    def __call__(self, step) -> jax.Array:
        x = jax.nn.silu(self.projection1(self.lookup(step)))
        return jax.nn.silu(self.projection2(x))


class ResidualLayer(nnx.Module):
    def __init__(self, cfg: MotionDenoiserConfig, index: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        r = cfg.residual_channels
        dilation = cfg.dilation_cycle[index % len(cfg.dilation_cycle)]
        self.nn = TisaTransformer(r, 2 * r, r, num_blocks=cfg.num_blocks, num_heads=cfg.num_heads,
                                  d_ff=cfg.d_ff, dilation=dilation, num_kernels=cfg.num_kernels,
                                  seq_len=cfg.seq_len, pre_ln=True, ff_bias=True, rngs=rngs,
                                  param_dtype=param_dtype)
        self.diffusion_projection = nnx.Linear(cfg.embedding_dim, r, rngs=rngs,
                                               param_dtype=param_dtype)
        self.local_cond_projection = nnx.Linear(cfg.local_dim + cfg.global_dim, r, rngs=rngs,
                                                param_dtype=param_dtype)
        self.output_projection = Conv1d(r, 2 * r, 1, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, step_emb, cond):
        y = x + self.diffusion_projection(step_emb)[:, None, :]
        y = y + self.local_cond_projection(cond)
        y = self.nn(y)
        gate, filt = jnp.split(y, 2, axis=-1)
        y = self.output_projection(jax.nn.sigmoid(gate) * jnp.tanh(filt))
        res, skip = jnp.split(y, 2, axis=-1)
        return (x + res) / math.sqrt(2.0), skip


class MotionDenoiser(nnx.Module):
    """``__call__(x [B,T,C], step, local_cond [B,T,Dl], global_cond [B,G] or [B,T,G]) -> eps``.

    ``step``: int (table lookup) or float (lerp), a scalar, shape [1] (shared) or [B].
    ``return_intermediates=True`` also returns a dict with ``step_embedding``, ``res0_x``,
    ``res0_skip``, ``skip_sum_scaled``.
    """

    policy = DEFAULT

    def __init__(self, cfg: MotionDenoiserConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        r = cfg.residual_channels
        self.input_projection = Conv1d(cfg.in_channels, r, 1, rngs=rngs, param_dtype=param_dtype)
        self.diffusion_embedding = DiffusionEmbedding(cfg.max_steps, cfg.step_in_dim,
                                                      cfg.embedding_dim, rngs=rngs,
                                                      param_dtype=param_dtype)
        self.residual_layers = nnx.List([ResidualLayer(cfg, i, rngs=rngs, param_dtype=param_dtype)
                                         for i in range(cfg.residual_layers)])
        self.skip_projection = Conv1d(r, r, 1, rngs=rngs, param_dtype=param_dtype)
        self.output_projection = Conv1d(r, cfg.in_channels, 1, rngs=rngs, param_dtype=param_dtype,
                                        kernel_init=nnx.initializers.zeros_init())

    def set_step_table(self, table) -> None:
        """Installs an exact step table (e.g. the official float32 one) of shape [max_steps, D]."""
        table = jnp.asarray(table, jnp.float32)
        want = self.diffusion_embedding.embedding[...].shape
        if table.shape != want:
            raise ValueError(f"step table shape {table.shape} != {want}")
        self.diffusion_embedding.embedding.value = table

    def __call__(self, x, step, local_cond, global_cond=None, *, return_intermediates=False):
        return self.policy.whole(MotionDenoiser._forward, self, x, step, local_cond, global_cond,
                                 return_intermediates=return_intermediates)

    def _forward(self, x, step, local_cond, global_cond=None, *, return_intermediates=False):
        pol = self.policy
        out_dtype = pol.f32(x).dtype
        b, t, _ = x.shape
        h = jax.nn.relu(self.input_projection(pol.cast(x)))
        emb = self.diffusion_embedding(step)
        if emb.shape[0] == 1 and b != 1:
            emb_b = jnp.broadcast_to(emb, (b, emb.shape[1]))
        else:
            emb_b = emb
        cond = local_cond
        if self.cfg.global_dim > 0:
            if global_cond is None:
                raise ValueError("this denoiser needs global_cond")
            g = jnp.asarray(global_cond, local_cond.dtype)
            if g.ndim == 2:
                g = jnp.broadcast_to(g[:, None, :], (b, t, g.shape[-1]))
            cond = jnp.concatenate([local_cond, g], axis=-1)
        cond = pol.cast(cond)
        inter = {"step_embedding": emb}
        skip = None
        for i, layer in enumerate(self.residual_layers):
            h, s = pol.block(layer, h, emb_b, cond)
            s = pol.f32(s)  # the skips are summed in float32
            skip = s if skip is None else s + skip
            if i == 0:
                inter["res0_x"], inter["res0_skip"] = h, s
        z = skip / math.sqrt(len(self.residual_layers))
        inter["skip_sum_scaled"] = z
        eps = self.output_projection(jax.nn.relu(self.skip_projection(pol.cast(z))))
        eps = eps.astype(out_dtype)
        return (eps, inter) if return_intermediates else eps


def count_params(model: nnx.Module) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
