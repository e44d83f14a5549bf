"""The GoHD face animator (``Generator_Semantic``) and the plain LIA generator, NHWC, Flax NNX.

Official code: Jia1018/GoHD ``networks/generator.py``, ``encoder.py``, ``styledecoder.py``
(LIA-based). The structure, for a config of size S (256 official) and style dim D (512):

* appearance encoder ``EncoderApp``: 1x1 ConvLayer at S, then ResBlocks halving the resolution down
  to 4², then a 4x4 valid equal-lr conv -> w_s [B, D]. Its feature pyramid at 8², 16², …, S² is
  what the decoder warps.
* ``MappingNet`` (PIRenderer's): plain Conv1d (k 7) over the [B, 27, 72] semantics window, then
  3 × [LeakyReLU(0.1) -> Conv1d(k 3, dilation 3)] with a centre-crop residual, mean over time.
* motion ``fc``: 5 EqualLinear without activations, on [w_s ; MappingNet(S)] -> α [B, M].
* ``Direction``: Q = reduced QR(W + 1e-8), W [D, M]; latent = w_s + α·Qᵀ, fed to every layer.
* ``Synthesis``: constant 4² input -> StyledConv; per resolution r = 8 … S: StyledConv(up),
  StyledConv, ToFlow (flow + mask, warps the encoder feature at r), optional SFT refinement
  (r ≥ 64), non-modulated ToRGB on the warped features, accumulated over scales. Outputs the
  RGB image at every scale.

Release quirk (``AnimatorConfig.release_sft_wiring``, dossier 5.1 item 4): with SFT, the release
computes ``out = SFT(warp) + dec·(1 − (warp + dec·(1 − m)))`` because it unpacks ToFlow's second
return value as if it were the mask. On (``AnimatorConfig.official()``) to reproduce the released
weights; off (the default) gives the intended ``out = SFT(warp) + dec·(1 − m)`` for training from
scratch. Either way ToRGB reads SFT(warp).

The encoder features (``feats``) are a tuple ordered smallest first (8², 16², …, S²), the order
the decoder consumes them; images and fields in the outputs are tuples largest first, as the
official module returns its image list.

Precision and remat (``gohd_jax.nn.policy``, given with ``policy.apply``): the encoder and the
decoder compute in the policy's dtype; ``w_s``, the motion code ``alpha``, the directions Q (a
float32 QR), the latent, flow fields, masks and RGB images are float32. ``remat="blocks"``
rematerialises each encoder block and each decoder level; ``"full"`` the whole forward too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from gohd_jax.nn.policy import DEFAULT, HIGHEST
from gohd_jax.nn.stylegan import (DEFAULT_BLUR, ConstantInput, Conv2d, ConvLayer, EqualConv2d,
                                  EqualLinear, ResBlock, SQRT2, StyledConv, ToFlow, ToRGB, leaky_relu,
                                  normal_init, uniform_init)

__all__ = ["OFFICIAL_CHANNELS", "resolve_channels", "AnimatorConfig", "EncoderApp", "Conv1d", "MappingNet",
           "SemanticEncoder", "LIAEncoder", "Direction", "SFTBlock", "Synthesis",
           "SemanticAnimator", "LIAGenerator"]

# The official channel map (EncoderApp and Synthesis, channel_multiplier 1).
OFFICIAL_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32,
                     1024: 16}



def resolve_channels(channels, channel_multiplier: int = 1, channel_scale: float = 1.0) -> dict[int, int]:
    """{resolution: channels}: explicit ``((res, ch), ...)`` pairs, or ``OFFICIAL_CHANNELS`` with
    the entries at resolution >= 64 times ``channel_multiplier``; every entry times
    ``channel_scale`` (rounded, at least 1). Shared by the animator and the discriminator."""
    if channels is not None:
        chans = {int(r): int(c) for r, c in channels}
    else:
        chans = {r: (c * channel_multiplier if r >= 64 else c) for r, c in OFFICIAL_CHANNELS.items()}
    return {r: max(1, int(round(c * channel_scale))) for r, c in chans.items()}

@dataclass(frozen=True)
class AnimatorConfig:
    """Architecture of the animator (and of the plain LIA generator, which ignores the
    semantics fields).

    ``identity_init`` (training from scratch): the generator starts as "copy the source": the
    decoder warps with the identity field and passes features through (``Synthesis._identity_init``),
    and the image path is set to reproduce the source pixels (``_WarpingGenerator._copy_source_init``).
    Same architecture, another starting point; off for the official init and for loading weights,
    which overwrite it anyway.

    ``release_grid`` (on by default, and what the released weights need): ToFlow's base grid is
    the release's ``linspace(-1, 1, r)``, a sub-pixel zoom under ``grid_sample`` (``nn/warp.py``).
    Off: the exact pixel-centre grid, so a zero field copies the features; for training from
    scratch (``configs/animator.py``).

    Channels per resolution: ``channels`` (explicit ``((res, ch), …)`` pairs covering 4 … size)
    or else ``OFFICIAL_CHANNELS`` with the entries at resolution ≥ 64 times
    ``channel_multiplier``, every entry times ``channel_scale`` (rounded, at least 1). Encoder and
    decoder share the map: the decoder adds its features to the warped encoder features. (The
    official code applies ``channel_multiplier`` to the decoder only, which works only for 1.)
    """
    size: int = 256
    style_dim: int = 512
    motion_dim: int = 20
    semantic_dim: int = 72
    window: int = 27
    channel_multiplier: int = 1
    channel_scale: float = 1.0
    channels: tuple[tuple[int, int], ...] | None = None
    mapping_layers: int = 3
    in_channels: int = 3
    out_channels: int = 3
    use_sft: bool = True
    sft_min_res: int = 64
    release_sft_wiring: bool = False
    release_grid: bool = True
    identity_init: bool = False
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR

    def __post_init__(self):
        self.validate()

    # ---- presets
    @classmethod
    def official(cls, **overrides) -> "AnimatorConfig":
        """``Generator_Semantic(256, 72, 512, 20, 1, True, 3, 3)`` as inference.py builds it,
        with the release's SFT wiring (to load ``FaceAnimator_GoHD.pt['gen_pose']``)."""
        return cls(**{"release_sft_wiring": True, **overrides})

    @classmethod
    def lia(cls, **overrides) -> "AnimatorConfig":
        """The plain LIA ``Generator(256, 512, 20)``: no SFT."""
        return cls(**{"use_sft": False, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "AnimatorConfig":
        """A CPU-test size: 64², style 128, motion 20, narrow channels (SFT at 64²)."""
        base = dict(size=64, style_dim=128, motion_dim=20,
                    channels=((4, 64), (8, 64), (16, 64), (32, 32), (64, 16)))
        return cls(**{**base, **overrides})

    # ---- derived
    def channel_map(self) -> dict[int, int]:
        return resolve_channels(self.channels, self.channel_multiplier, self.channel_scale)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Decoder / pyramid resolutions, smallest first: 8, 16, …, size."""
        return tuple(2 ** i for i in range(3, self.log_size + 1))

    @property
    def mapping_out_len(self) -> int:
        return self.window - 6 - 6 * self.mapping_layers

    def validate(self) -> None:
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"AnimatorConfig.size must be a power of two >= 8, got {self.size}")
        chans = self.channel_map()
        missing = [2 ** i for i in range(2, self.log_size + 1) if 2 ** i not in chans]
        if missing:
            raise ValueError(f"AnimatorConfig.channels lacks resolution(s) {missing}; give "
                             f"(resolution, channels) pairs for 4 … {self.size}")
        for name in ("style_dim", "motion_dim", "semantic_dim", "in_channels", "out_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AnimatorConfig.{name} must be >= 1")
        if self.motion_dim > self.style_dim:
            raise ValueError(f"motion_dim {self.motion_dim} > style_dim {self.style_dim}: the "
                             f"QR of the [style_dim, motion_dim] directions needs rows >= columns")
        if self.mapping_out_len < 1:
            need = 7 + 6 * self.mapping_layers
            raise ValueError(f"window {self.window} is too short for MappingNet with "
                             f"{self.mapping_layers} layers (needs >= {need})")


# ------------------------------------------------------------------------------------ encoders

class EncoderApp(nnx.Module):
    """Appearance encoder E: image [B,S,S,C] -> (w [B,D] float32, feats smallest first: 8², …,
    S², in the compute dtype)."""

    policy = DEFAULT

    def __init__(self, size: int, in_channels: int, style_dim: int, channels: dict[int, int], *,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        kw = dict(blur_kernel=blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.size, self.style_dim = size, style_dim
        convs: list[Any] = [ConvLayer(in_channels, channels[size], 1, **kw)]
        c = channels[size]
        for i in range(int(math.log2(size)), 2, -1):
            convs.append(ResBlock(c, channels[2 ** (i - 1)], **kw))
            c = channels[2 ** (i - 1)]
        convs.append(EqualConv2d(c, style_dim, 4, padding=0, use_bias=False, rngs=rngs,
                                 param_dtype=param_dtype))
        self.convs = nnx.List(convs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        if x.ndim != 4 or x.shape[1] != self.size or x.shape[2] != self.size:
            raise ValueError(f"EncoderApp wants images [B,{self.size},{self.size},C] (NHWC), got "
                             f"{tuple(x.shape)}")
        pol = self.policy
        res = []
        h = pol.cast(x)
        for i, conv in enumerate(self.convs):
            h = pol.block(conv, h) if isinstance(conv, ResBlock) else conv(h)
            res.append(h)
        w = pol.f32(res[-1].reshape(x.shape[0], self.style_dim))
        return w, tuple(res[::-1][2:])


class Conv1d(nnx.Module):
    """Plain torch.nn.Conv1d (bias, valid padding, dilation) on [B,T,C]; weight [k, in, out]."""

    policy = DEFAULT

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dilation: int = 1,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.dilation = dilation
        bound = 1.0 / math.sqrt(in_channels * kernel_size)
        self.weight = nnx.Param(uniform_init(rngs, (kernel_size, in_channels, out_channels),
                                             bound, param_dtype))
        self.bias = nnx.Param(uniform_init(rngs, (out_channels,), bound, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        out = lax.conv_general_dilated(x, self.weight[...].astype(x.dtype), (1,), "VALID",
                                       rhs_dilation=(self.dilation,),
                                       dimension_numbers=("NWC", "WIO", "NWC"),
                                       precision=self.policy.dot_precision)
        return out + self.bias[...].astype(out.dtype)


class MappingNet(nnx.Module):
    """PIRenderer's MappingNet: semantics [B,T,C] -> [B,D] (T 27 -> 21 -> 15 -> 9 -> 3 -> mean)."""

    def __init__(self, coeff_nc: int, descriptor_nc: int, layers: int = 3, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.first = Conv1d(coeff_nc, descriptor_nc, 7, rngs=rngs, param_dtype=param_dtype)
        self.encoder = nnx.List([Conv1d(descriptor_nc, descriptor_nc, 3, dilation=3, rngs=rngs,
                                        param_dtype=param_dtype) for _ in range(layers)])

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.first(x)
        for conv in self.encoder:
            out = conv(leaky_relu(out, 0.1)) + out[:, 3:-3]
        return jnp.mean(out, axis=1)


def _motion_fc(in_dim: int, style_dim: int, motion_dim: int, rngs, param_dtype) -> nnx.List:
    dims = [in_dim] + [style_dim] * 4 + [motion_dim]
    return nnx.List([EqualLinear(dims[i], dims[i + 1], rngs=rngs, param_dtype=param_dtype)
                     for i in range(5)])


def _apply_fc(fc, x: jax.Array) -> jax.Array:
    for layer in fc:  # no activations (as in LIA / GoHD)
        x = layer(x)
    return x


class SemanticEncoder(nnx.Module):
    """``Encoder_with_Semantics``: net_app (E), semantics_enc (MappingNet), fc (1024 -> … -> M)."""

    policy = DEFAULT

    def __init__(self, cfg: AnimatorConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.net_app = EncoderApp(cfg.size, cfg.in_channels, cfg.style_dim, cfg.channel_map(),
                                  blur_kernel=cfg.blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.semantics_enc = MappingNet(cfg.semantic_dim, cfg.style_dim, cfg.mapping_layers,
                                        rngs=rngs, param_dtype=param_dtype)
        self.fc = _motion_fc(2 * cfg.style_dim, cfg.style_dim, cfg.motion_dim, rngs, param_dtype)

    def motion(self, w_s: jax.Array, semantics: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(α [B,M], MappingNet output [B,D]), float32; a batch-1 w_s broadcasts over the
        semantics."""
        pol = self.policy
        h = self.semantics_enc(pol.cast(semantics))
        w = jnp.broadcast_to(w_s, (h.shape[0], w_s.shape[-1])).astype(h.dtype)
        alpha = _apply_fc(self.fc, jnp.concatenate([w, h], axis=-1))
        return pol.f32(alpha), pol.f32(h)


class LIAEncoder(nnx.Module):
    """LIA ``Encoder``: net_app (E) and fc (D -> … -> M) applied to E(image)."""

    def __init__(self, cfg: AnimatorConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.net_app = EncoderApp(cfg.size, cfg.in_channels, cfg.style_dim, cfg.channel_map(),
                                  blur_kernel=cfg.blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.fc = _motion_fc(cfg.style_dim, cfg.style_dim, cfg.motion_dim, rngs, param_dtype)

    def motion_from_code(self, w: jax.Array) -> jax.Array:
        return _apply_fc(self.fc, w)


# ------------------------------------------------------------------------------------- decoder

class Direction(nnx.Module):
    """Motion dictionary: W [D, M] ~ N(0,1); Q = reduced QR(W + 1e-8) (Householder, as torch.qr)."""

    def __init__(self, style_dim: int, motion_dim: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.weight = nnx.Param(normal_init(rngs, (style_dim, motion_dim), param_dtype))

    def __call__(self) -> jax.Array:
        """Q [D, M] in the parameters' dtype (float32; float64 in parity runs), whatever the
        compute precision: computed once per set of weights (``render(..., directions=Q)``)."""
        q, _ = jnp.linalg.qr(self.weight[...] + 1e-8, mode="reduced")
        return q

    @staticmethod
    def apply(q: jax.Array, alpha: jax.Array) -> jax.Array:
        """Σ_m α_m q_m: [B,M] -> [B,D], in float32 (or float64) with HIGHEST precision."""
        dtype = jnp.promote_types(q.dtype, alpha.dtype)
        return jnp.matmul(alpha.astype(dtype), q.T.astype(dtype), precision=HIGHEST)


class SFTBlock(nnx.Module):
    """``Fuse_sft_block``: feat + feat·scale + shift, each branch StyledConv(3x3, latent)
    -> LeakyReLU(0.2) -> plain Conv2d 3x3 with bias."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, *,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        kw = dict(blur_kernel=blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.scale1 = StyledConv(in_channels, out_channels, 3, style_dim, **kw)
        self.scale2 = Conv2d(out_channels, out_channels, 3, padding=1, rngs=rngs,
                             param_dtype=param_dtype)
        self.shift1 = StyledConv(in_channels, out_channels, 3, style_dim, **kw)
        self.shift2 = Conv2d(out_channels, out_channels, 3, padding=1, rngs=rngs,
                             param_dtype=param_dtype)

    def __call__(self, feat: jax.Array, style: jax.Array) -> jax.Array:
        scale = self.scale2(leaky_relu(self.scale1(feat, style), 0.2))
        shift = self.shift2(leaky_relu(self.shift1(feat, style), 0.2))
        return feat + (feat * scale + shift)


class Synthesis(nnx.Module):
    """The flow-warping decoder. ``__call__(latent [B,D], feats smallest first)`` -> dict with
    ``rgb`` and ``flow_raw`` (tuples, largest first), ``mask`` (tuple, largest first); all
    float32 (float64 in parity runs). One level per resolution, each a remat block."""

    policy = DEFAULT

    def __init__(self, cfg: AnimatorConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        ch = cfg.channel_map()
        kw = dict(blur_kernel=cfg.blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.release_sft_wiring = bool(cfg.release_sft_wiring)
        self.direction = Direction(cfg.style_dim, cfg.motion_dim, rngs=rngs,
                                   param_dtype=param_dtype)
        self.input = ConstantInput(ch[4], rngs=rngs, param_dtype=param_dtype)
        self.conv1 = StyledConv(ch[4], ch[4], 3, cfg.style_dim, **kw)
        # In the state dict but never called by the official forward; kept for weight loading.
        self.to_rgb1 = ToRGB(ch[4], cfg.out_channels, upsample=False, **kw)
        convs, to_rgbs, to_flows, sft, sft_levels = [], [], [], [], []
        c_in = ch[4]
        for level, r in enumerate(cfg.resolutions):
            c = ch[r]
            convs.append(StyledConv(c_in, c, 3, cfg.style_dim, upsample=True, **kw))
            convs.append(StyledConv(c, c, 3, cfg.style_dim, **kw))
            to_rgbs.append(ToRGB(c, cfg.out_channels, **kw))
            to_flows.append(ToFlow(c, cfg.style_dim, release_grid=cfg.release_grid, **kw))
            if cfg.use_sft and r >= cfg.sft_min_res:
                sft.append(SFTBlock(c, c, cfg.style_dim, **kw))
                sft_levels.append(level)
            c_in = c
        self.sft_levels = tuple(sft_levels)
        self.convs = nnx.List(convs)
        self.to_rgbs = nnx.List(to_rgbs)
        self.to_flows = nnx.List(to_flows)
        self.sft = nnx.List(sft)
        if cfg.identity_init:
            self._identity_init()

    def _identity_init(self) -> None:
        """Start from "pass the source through": every ToFlow field at zero (sampling grid =
        identity), its mask logit bias at +3 (the logit accumulates over scales: mask >= 0.95), every
        SFT branch's last conv at zero (SFT = identity). Training from scratch only; the official init is random."""
        for flow in self.to_flows:
            flow.conv.weight[...] = jnp.zeros_like(flow.conv.weight[...])
            flow.bias[...] = jnp.array([0.0, 0.0, 3.0], flow.bias[...].dtype)
        for block in self.sft:
            for conv in (block.scale2, block.shift2):
                conv.weight[...] = jnp.zeros_like(conv.weight[...])
                conv.bias[...] = jnp.zeros_like(conv.bias[...])

    def __call__(self, latent: jax.Array, feats: Sequence[jax.Array]) -> dict[str, Any]:
        if len(feats) != len(self.to_flows):
            raise ValueError(f"Synthesis wants {len(self.to_flows)} encoder features (8² … "
                             f"size², smallest first), got {len(feats)}")
        pol = self.policy
        out = self.conv1(pol.cast(self.input(latent.shape[0], latent.dtype)), latent)
        rgbs, raws, masks = [], [], []
        skip = skip_flow = None
        for level, feat in enumerate(feats):
            out, skip, skip_flow, mask = pol.block(self, out, latent, pol.cast(feat), skip,
                                                   skip_flow, fn=Synthesis._level, level=level)
            rgbs.append(skip)
            raws.append(skip_flow)
            masks.append(mask)
        return {"rgb": tuple(rgbs[::-1]), "flow_raw": tuple(raws[::-1]),
                "mask": tuple(masks[::-1])}

    def _level(self, out, latent, feat, skip, skip_flow, *, level: int):
        """One resolution: two StyledConvs, ToFlow (warp), SFT, ToRGB. Returns the decoder
        features, the RGB image and the raw field so far, and the mask."""
        out = self.convs[2 * level](out, latent)
        out = self.convs[2 * level + 1](out, latent)
        warp, mask, skip_flow = self.to_flows[level](out, latent, feat, skip_flow)
        m = mask.astype(out.dtype)
        if level in self.sft_levels:
            refined = self.sft[self.sft_levels.index(level)](warp, latent)
            if self.release_sft_wiring:
                out = refined + out * (1.0 - (warp + out * (1.0 - m)))
            else:
                out = refined + out * (1.0 - m)
            warp = refined
        else:
            out = warp + out * (1.0 - m)
        skip = self.to_rgbs[level](warp, skip)
        return out, skip, skip_flow, mask


# -------------------------------------------------------------------------------------- models

def _check_image(x: jax.Array, cfg: AnimatorConfig, what: str) -> None:
    want = (cfg.size, cfg.size, cfg.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{what} must be [B,{cfg.size},{cfg.size},{cfg.in_channels}] (NHWC, "
                         f"values in [-1, 1]); got shape {tuple(x.shape)}")


class _WarpingGenerator(nnx.Module):
    """What GoHD's and LIA's generators share: an encoder ``enc`` (with the appearance
    encoder ``enc.net_app``) and the flow-warping decoder ``dec``."""

    policy = DEFAULT

    _encoder_cls: type

    def __init__(self, config: AnimatorConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = config
        self.enc = self._encoder_cls(config, rngs=rngs, param_dtype=param_dtype)
        self.dec = Synthesis(config, rngs=rngs, param_dtype=param_dtype)
        if config.identity_init:
            self._copy_source_init()

    def _copy_source_init(self) -> None:
        """The image path reproduces the source at init (with the decoder's identity warp).

        The encoder's first layer (1x1 ConvLayer, FusedLeakyReLU with slope 0.2 and gain sqrt 2)
        maps RGB channel c to features c and c+3 as sqrt(2) lrelu(x_c) and sqrt(2) lrelu(-x_c),
        whose difference is sqrt(2) 1.2 x_c; the top ToRGB reads that difference back, offset by
        2 inside its own leaky ReLU to stay on the linear side, and removes the offset with its
        output bias; every lower ToRGB starts at zero. The output is then the source itself with
        ``release_grid=False``; with the release's grid it is the source zoomed by (W-1)/W, which
        blurs by up to half a pixel and halves the border pixels (34 dB inside the border on the
        64 px synthetic faces). The other encoder channels keep their random init. Needs >= 6
        channels at full resolution.
        """
        first = self.enc.net_app.convs[0]
        c_in = first.conv.in_channels
        w = first.conv.weight[...]
        if w.shape[-1] < 2 * c_in:
            raise ValueError(f"identity_init needs >= {2 * c_in} channels at full resolution")
        eye = jnp.eye(c_in, dtype=w.dtype) / first.conv.scale
        first.conv.weight[...] = w.at[0, 0, :, :2 * c_in].set(jnp.concatenate([eye, -eye], axis=1))
        first.act.bias[...] = first.act.bias[...].at[:2 * c_in].set(0.0)
        gain = 1.0 / (2.0 * 1.2)  # sqrt2 (ToRGB gain) * gain * sqrt2 * 1.2 (pair difference) = 1
        for level, to_rgb in enumerate(self.dec.to_rgbs):
            conv = to_rgb.conv  # ConvLayer: .conv (EqualConv2d) + .act (FusedLeakyReLU)
            weight = jnp.zeros_like(conv.conv.weight[...])
            act_bias = jnp.zeros_like(conv.act.bias[...])
            out_bias = jnp.zeros_like(to_rgb.bias[...])
            if level == len(self.dec.to_rgbs) - 1:
                k = jnp.arange(c_in)
                weight = weight.at[0, 0, k, k].set(gain / conv.conv.scale)
                weight = weight.at[0, 0, k + c_in, k].set(-gain / conv.conv.scale)
                act_bias = act_bias + 2.0
                out_bias = out_bias - 2.0 * SQRT2
            conv.conv.weight[...] = weight
            conv.act.bias[...] = act_bias
            to_rgb.bias[...] = out_bias

    def directions(self) -> jax.Array:
        """Q [D, M], the orthonormal motion directions."""
        return self.dec.direction()

    def encode_source(self, source: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """source [B,S,S,3] in [-1,1] -> (w_s [B,D], feats: 8², …, S², smallest first)."""
        _check_image(source, self.config, "source")
        return self.enc.net_app(source)


class SemanticAnimator(_WarpingGenerator):
    """GoHD's ``Generator_Semantic``: source image + a window of 72-d semantics -> frames.

    ``encode_source`` runs once per source image; ``render`` runs per frame and accepts a
    batch-1 encoding with a batch of T semantics windows (one clip), or matching batches.
    """

    _encoder_cls = SemanticEncoder

    def motion(self, w_s: jax.Array, semantics: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(α [B,M], mapping_out [B,D]) for semantics [B, window, semantic_dim]."""
        cfg = self.config
        if semantics.ndim != 3 or tuple(semantics.shape[1:]) != (cfg.window, cfg.semantic_dim):
            raise ValueError(f"semantics must be [B,{cfg.window},{cfg.semantic_dim}] (time-major "
                             f"window of descriptors); got shape {tuple(semantics.shape)}")
        if w_s.shape[0] not in (1, semantics.shape[0]):
            raise ValueError(f"w_s batch {w_s.shape[0]} must be 1 or the semantics batch "
                             f"{semantics.shape[0]}")
        return self.enc.motion(w_s, semantics.astype(w_s.dtype))

    def render(self, w_s: jax.Array, feats: Sequence[jax.Array], semantics: jax.Array,
               directions: jax.Array | None = None) -> dict[str, Any]:
        """Frames for semantics [B,27,72] from a source encoding (batch B, or 1 shared).

        ``directions``: Q [D,M] from ``directions()``, computed once per set of weights (inference
        engines pass it, so no QR runs per render call); None computes it here.
        Returns ``rgb`` (tuple of [B,r,r,3], largest first; ``rgb[0]`` is the frame), ``flow_raw``
        and ``mask`` (tuples, largest first), ``alpha`` [B,M], ``latent`` [B,D],
        ``mapping_out`` [B,D]; all float32 (float64 in parity runs).
        """
        q = self.directions() if directions is None else directions
        alpha, mapping_out = self.motion(w_s, semantics)
        latent = w_s + Direction.apply(q, alpha)
        out = self.dec(latent, tuple(feats))
        out.update(alpha=alpha, latent=latent, mapping_out=mapping_out)
        return out

    def __call__(self, source: jax.Array, semantics: jax.Array) -> dict[str, Any]:
        """``encode_source`` then ``render``; adds ``w_s`` to the outputs (the training forward;
        rematerialised whole under ``remat="full"``)."""
        return self.policy.whole(SemanticAnimator._forward, self, source, semantics)

    def _forward(self, source: jax.Array, semantics: jax.Array) -> dict[str, Any]:
        w_s, feats = self.encode_source(source)
        out = self.render(w_s, feats, semantics)
        out["w_s"] = w_s
        return out


class LIAGenerator(_WarpingGenerator):
    """The plain LIA ``Generator``: motion α = fc(E(driving image)).

    Absolute mode: latent = w_s + Q·α_drive. Relative mode (given a start frame):
    latent = w_s + (Q·α_drive − Q·α_start) + Q·α_source with α_source = fc(w_s).
    """

    _encoder_cls = LIAEncoder

    def motion(self, image: jax.Array) -> jax.Array:
        """α = fc(E(image)) [B,M] (the official ``enc_motion``)."""
        _check_image(image, self.config, "driving image")
        w, _ = self.enc.net_app(image)
        return self.enc.motion_from_code(w)

    def render(self, w_s: jax.Array, feats: Sequence[jax.Array], alpha_drive: jax.Array,
               alpha_start: jax.Array | None = None,
               alpha_source: jax.Array | None = None) -> dict[str, Any]:
        q = self.directions()
        if alpha_start is None:
            latent = w_s + Direction.apply(q, alpha_drive)
        else:
            if alpha_source is None:
                alpha_source = self.enc.motion_from_code(w_s)
            latent = (w_s + (Direction.apply(q, alpha_drive) - Direction.apply(q, alpha_start))
                      + Direction.apply(q, alpha_source))
        out = self.dec(latent, tuple(feats))
        out["latent"] = latent
        return out

    def __call__(self, source: jax.Array, drive: jax.Array,
                 start: jax.Array | None = None) -> dict[str, Any]:
        """The official forward; with ``start`` the relative mode (h_start = enc_motion(start))."""
        w_s, feats = self.encode_source(source)
        alpha_drive = self.motion(drive)
        alpha_start = alpha_source = None
        if start is not None:
            alpha_start = self.motion(start)
            alpha_source = self.enc.motion_from_code(w_s)
        out = self.render(w_s, feats, alpha_drive, alpha_start, alpha_source)
        out.update(w_s=w_s, alpha_drive=alpha_drive)
        if start is not None:
            out.update(alpha_start=alpha_start, alpha_source=alpha_source)
        return out
