"""The StyleGAN2 discriminator LIA trains with (rosinality's; GoHD ``networks/discriminator.py``).

1x1 ConvLayer at the input size, ResBlocks halving the resolution down to 4², minibatch standard
deviation (group 4, 1 feature), a 3x3 ConvLayer, then EqualLinear(C·16 -> C, fused leaky ReLU)
and EqualLinear(C -> 1). NHWC images in [-1, 1] -> logits [B, 1]. The flatten before the linear
layers uses PyTorch's (C, H, W) order, so an official discriminator state dict loads unchanged
(``gohd_jax.interop.animator_weights.discriminator_from_state_dict``).

LIA's losses (no R1 / path-length regularisation): D minimises softplus(−D(x_real)) +
softplus(D(x_fake)); G minimises softplus(−D(x_fake)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from gohd_jax.models.animator import resolve_channels
from gohd_jax.nn.policy import DEFAULT
from gohd_jax.nn.stylegan import DEFAULT_BLUR, ConvLayer, EqualLinear, ResBlock

__all__ = ["DiscriminatorConfig", "Discriminator", "minibatch_stddev"]


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Channels: explicit ``channels`` ((res, ch) pairs for 4 … size) or the official map
    (×channel_multiplier at resolution ≥ 64), times ``channel_scale``."""
    size: int = 256
    channel_multiplier: int = 1
    channel_scale: float = 1.0
    channels: tuple[tuple[int, int], ...] | None = None
    in_channels: int = 3
    stddev_group: int = 4
    stddev_feat: int = 1
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR

    def __post_init__(self):
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"DiscriminatorConfig.size must be a power of two >= 4, got "
                             f"{self.size}")
        chans = self.channel_map()
        missing = [2 ** i for i in range(2, int(math.log2(self.size)) + 1) if 2 ** i not in chans]
        if missing:
            raise ValueError(f"DiscriminatorConfig.channels lacks resolution(s) {missing}")
        if chans[4] % self.stddev_feat:
            raise ValueError(f"stddev_feat {self.stddev_feat} must divide the 4² channels "
                             f"{chans[4]}")

    @classmethod
    def tiny(cls, **overrides) -> "DiscriminatorConfig":
        base = dict(size=64, channels=((4, 64), (8, 64), (16, 64), (32, 32), (64, 16)))
        return cls(**{**base, **overrides})

    def channel_map(self) -> dict[int, int]:
        return resolve_channels(self.channels, self.channel_multiplier, self.channel_scale)


def minibatch_stddev(x: jax.Array, group: int = 4, features: int = 1) -> jax.Array:
    """Appends the minibatch-stddev channel(s): x [B,H,W,C] -> [B,H,W,C+features].

    As rosinality's: G = min(B, group) groups the batch as (G, B/G) (sample b = g·(B/G) + n joins
    statistic n), population std over G (+1e-8 under the root), averaged over H, W and the
    channels of each of ``features`` channel groups. B must be divisible by G.
    """
    b, h, w, c = x.shape
    g = min(b, group)
    if b % g:
        raise ValueError(f"minibatch stddev: batch {b} is not divisible by the group size {g}; "
                         f"use a batch that is a multiple of {g} (or smaller than {group})")
    y = x.reshape(g, b // g, h, w, features, c // features)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [B/G, H, W, F, C/F]
    std = jnp.mean(std, axis=(1, 2, 4))  # [B/G, F]
    std = jnp.tile(std, (g, 1))  # sample b -> statistic b mod (B/G)
    std = jnp.broadcast_to(std[:, None, None, :], (b, h, w, features)).astype(x.dtype)
    return jnp.concatenate([x, std], axis=-1)


class Discriminator(nnx.Module):
    """``__call__(images [B,S,S,C]) -> logits [B, 1]`` (real: high).

    Built from a ``DiscriminatorConfig``, or from a size plus keyword overrides, e.g.
    ``Discriminator(64, channels=AnimatorConfig.tiny().channel_map(), rngs=rngs)`` (``channels``
    may be a {resolution: channels} dict or (res, ch) pairs).

    Precision (``gohd_jax.nn.policy``): convolutions in the compute dtype, the minibatch
    statistics and the logits float32; each ResBlock a remat block.
    """

    policy = DEFAULT

    def __init__(self, config: DiscriminatorConfig | int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, **overrides):
        if not isinstance(config, DiscriminatorConfig):
            chans = overrides.pop("channels", None)
            if isinstance(chans, dict):
                chans = tuple(sorted((int(r), int(c)) for r, c in chans.items()))
            config = DiscriminatorConfig(size=int(config), channels=chans, **overrides)
        elif overrides:
            raise TypeError(f"Discriminator: pass either a DiscriminatorConfig or a size with "
                            f"overrides, not both ({sorted(overrides)})")
        self.config = config
        ch = config.channel_map()
        kw = dict(blur_kernel=config.blur_kernel, rngs=rngs, param_dtype=param_dtype)
        convs = [ConvLayer(config.in_channels, ch[config.size], 1, **kw)]
        c = ch[config.size]
        for i in range(int(math.log2(config.size)), 2, -1):
            convs.append(ResBlock(c, ch[2 ** (i - 1)], **kw))
            c = ch[2 ** (i - 1)]
        self.convs = nnx.List(convs)
        self.final_conv = ConvLayer(c + config.stddev_feat, ch[4], 3, **kw)
        self.final_linear = nnx.List([
            EqualLinear(ch[4] * 16, ch[4], activation="fused_lrelu", rngs=rngs,
                        param_dtype=param_dtype),
            EqualLinear(ch[4], 1, rngs=rngs, param_dtype=param_dtype),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.size, cfg.size, cfg.in_channels):
            raise ValueError(f"Discriminator wants [B,{cfg.size},{cfg.size},{cfg.in_channels}] "
                             f"(NHWC), got {tuple(x.shape)}")
        return self.policy.whole(Discriminator._forward, self, x)

    def _forward(self, x: jax.Array) -> jax.Array:
        pol = self.policy
        out = pol.cast(x)
        for conv in self.convs:
            out = pol.block(conv, out) if isinstance(conv, ResBlock) else conv(out)
        out = minibatch_stddev(pol.f32(out), self.config.stddev_group, self.config.stddev_feat)
        out = self.final_conv(pol.cast(out))
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch (C, H, W) order
        for layer in self.final_linear:
            out = layer(out)
        return pol.f32(out)
