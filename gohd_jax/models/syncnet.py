"""Wav2Lip's SyncNet (``SyncNet_color``) in Flax NNX, NHWC: the audio encoder GoHD's expression
stages read, and the face encoder that makes it a lip-sync expert.

Official code: Jia1018/GoHD ``networks/syncnet.py`` and ``networks/conv.py`` (Wav2Lip's). Every
block is ``Conv2d -> BatchNorm2d (eps 1e-5) [+ input] -> ReLU``.

* audio encoder: one Wav2Lip mel window [B, 80 mel, 16 steps, 1] (0.2 s around the frame) ->
  13 blocks (strides (3,1), 3, (3,2)) -> [B, 1, 1, 512] -> the 512-d embedding. Its last block
  ends in ReLU, so embeddings are >= 0.
* face encoder: the lower half of 5 consecutive face crops, stacked on channels,
  [B, H, W, 15] (Wav2Lip: 48 x 96) -> 17 blocks -> [B, 1, 1, 512] at 48 x 96.
* ``SyncNet.__call__`` returns both embeddings L2-normalised; ``sync_probability`` is Wav2Lip's
  cosine similarity (in [0, 1] since the embeddings are >= 0), used with a BCE loss.

BatchNorm is functional: running mean / variance are ``nnx.BatchStat`` variables (the trainer's
``state.rest``), updated by a call with ``train=True`` (torch momentum 0.1 = flax 0.9, biased
batch variance for the normalisation as torch) and read with ``train=False`` (eval, frozen).
Torch updates the running variance with the *unbiased* batch variance; flax with the biased
one, a factor n/(n-1) that only matters for tiny batches and never for loaded weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from gohd_jax.nn.policy import DEFAULT, Policy
from jax import lax

__all__ = ["ConvBlock", "AudioEncoder", "FaceEncoder", "SyncNet", "SyncNetConfig", "MouthSyncNet",
           "MouthSyncConfig", "sync_probability",
           "face_input", "crop_box", "LOWER_HALF", "SYNTHETIC_MOUTH", "AUDIO_LAYERS", "FACE_LAYERS"]

# (in, out, kernel, stride, padding, residual) per block, as the official Sequential lists them.
AUDIO_LAYERS = (
    (1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
)
FACE_LAYERS = (
    (15, 32, 7, 1, 3, False),
    (32, 64, 5, (1, 2), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 2, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, 2, 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True), (512, 512, 3, 1, 1, True),
    (512, 512, 3, 2, 1, False), (512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class ConvBlock(nnx.Module):
    """Wav2Lip's ``Conv2d`` block: conv (bias) -> BatchNorm -> (+ x if residual) -> ReLU.
    x [B,H,W,Cin] -> [B,H',W',Cout]. Weight [kh,kw,Cin,Cout] (torch [Cout,Cin,kh,kw])."""

    def __init__(self, cin: int, cout: int, kernel, stride, padding, residual: bool = False, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        kh, kw = _pair(kernel)
        self.stride, self.padding, self.residual = _pair(stride), _pair(padding), residual
        bound = 1.0 / (cin * kh * kw) ** 0.5  # torch's default conv init (kaiming_uniform a=sqrt 5)
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (kh, kw, cin, cout), param_dtype,
                                                   -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (cout,), param_dtype, -bound, bound))
        self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        (ph, pw) = self.padding
        out = lax.conv_general_dilated(x, self.weight[...].astype(x.dtype), self.stride,
                                       ((ph, ph), (pw, pw)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        out = self.bn(out + self.bias[...].astype(x.dtype), use_running_average=not train)
        if self.residual:
            out = out + x
        return jax.nn.relu(out)


class _Encoder(nnx.Module):
    layers: tuple

    def __init__(self, *, rngs: nnx.Rngs, param_dtype=jnp.float32, width: float = 1.0):
        blocks = []
        for cin, cout, k, s, p, res in self.layers:
            cin = cin if cin in (1, 15) else max(1, int(cin * width))
            blocks.append(ConvBlock(cin, max(1, int(cout * width)), k, s, p, res, rngs=rngs,
                                    param_dtype=param_dtype))
        self.blocks = nnx.List(blocks)

    policy = DEFAULT

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Computes in the policy's dtype (each conv block a remat block); the embedding is
        float32."""
        pol = self.policy
        x = pol.cast(x)
        for block in self.blocks:
            x = pol.block(block, x, train=train)
        if x.shape[1:3] != (1, 1):
            raise ValueError(f"{type(self).__name__} ends at {x.shape[1]}x{x.shape[2]}, not 1x1: "
                             f"the input has the wrong size (see the class docstring)")
        return pol.f32(x.reshape(x.shape[0], -1))


class AudioEncoder(_Encoder):
    """[B, 80, 16, 1] Wav2Lip mel windows (mel bins on H, time on W) -> [B, 512] (>= 0)."""
    layers = AUDIO_LAYERS


class FaceEncoder(_Encoder):
    """[B, 48, 96, 15] lower-half face crops of 5 frames (RGB x 5 on channels) -> [B, 512]."""
    layers = FACE_LAYERS


# Face-crop boxes, (top, bottom, left, right) fractions: Wav2Lip's lower half for the official
# crop; the mouth region of the synthetic clips (configs/expression.py:sync_tiny uses it).
LOWER_HALF = (0.5, 1.0, 0.0, 1.0)
SYNTHETIC_MOUTH = (0.40, 0.80, 0.2, 0.8)


@dataclass(frozen=True)
class SyncNetConfig:
    """``width`` scales every hidden channel count (1 = official; the tiny expert uses less).
    ``face_size`` (H, W) the mouth crops are resized to; 48 x 96 official. The face encoder's
    strides bring 48 x 96 to 1 x 1; other sizes must reach 1 x 1 too (e.g. 16 x 32 does not).
    ``face_box`` (top, bottom, left, right), fractions of the face crop the expert looks at:
    Wav2Lip's lower half ``LOWER_HALF`` for the official 256 crop (mouth at ~0.7 of its height);
    the synthetic clips frame the head more loosely (mouth at ~0.55), hence ``SYNTHETIC_MOUTH``."""
    width: float = 1.0
    face_size: tuple[int, int] = (48, 96)
    frames: int = 5
    face_box: tuple[float, float, float, float] = LOWER_HALF

    def __post_init__(self):
        top, bottom, left, right = self.face_box
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise ValueError(f"face_box must be (top, bottom, left, right) fractions with top < bottom and "
                             f"left < right, got {self.face_box}")

    @classmethod
    def tiny(cls) -> "SyncNetConfig":
        return cls(width=0.125)


class SyncNet(nnx.Module):
    """``SyncNet_color``: ``__call__(audio [B,80,16,1], face [B,H,W,15], train)`` ->
    (audio embedding, face embedding), each [B, 512 x width], L2-normalised."""

    def __init__(self, cfg: SyncNetConfig = SyncNetConfig(), *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        self.face_encoder = FaceEncoder(rngs=rngs, param_dtype=param_dtype, width=cfg.width)
        self.audio_encoder = AudioEncoder(rngs=rngs, param_dtype=param_dtype, width=cfg.width)

    def __call__(self, audio: jax.Array, face: jax.Array, *, train: bool = False):
        return self.embed_audio(audio, train=train), self.embed_face(face, train=train)

    def embed_audio(self, audio: jax.Array, *, train: bool = False) -> jax.Array:
        """[N, 80, 16, 1] -> L2-normalised [N, 512 x width]."""
        return _l2_normalize(self.audio_encoder(audio, train=train))

    def embed_face(self, face: jax.Array, *, train: bool = False) -> jax.Array:
        """[N, H, W, 15] -> L2-normalised [N, 512 x width]."""
        return _l2_normalize(self.face_encoder(face, train=train))


@dataclass(frozen=True)
class MouthSyncConfig:
    """The coefficient-space expert: ``mouth_dims`` of the 64 expression coefficients of
    ``frames`` frames against their mel window; ``width`` scales the audio encoder as in
    ``SyncNetConfig``; ``hidden`` the mouth MLP's width."""
    width: float = 1.0
    frames: int = 5
    mouth_dims: tuple[int, ...] = (0, 1, 2)
    hidden: int = 256

    @property
    def embed_dim(self) -> int:
        return max(1, int(512 * self.width))


class MouthSyncNet(nnx.Module):
    """A lip-sync expert on expression coefficients instead of pixels (the release's unused
    ``LandmarkSyncNet`` reads mouth landmarks the same way): SyncNet's audio encoder on the mel
    window, and an MLP (frames x |mouth_dims| -> hidden -> hidden -> embed, LeakyReLU 0.2) on the
    mouth coefficients of the frames around it. Being differentiable in the coefficients, it is
    stage 1's sync loss. ``embed_audio([N,80,16,1])``, ``embed_mouth(expression [N,frames,64])``
    -> L2-normalised [N, 512 x width]."""

    def __init__(self, cfg: MouthSyncConfig = MouthSyncConfig(), *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(rngs=rngs, param_dtype=param_dtype, width=cfg.width)
        dims = [cfg.frames * len(cfg.mouth_dims), cfg.hidden, cfg.hidden, cfg.embed_dim]
        self.mouth_mlp = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                                   for a, b in zip(dims[:-1], dims[1:])])

    def embed_audio(self, audio: jax.Array, *, train: bool = False) -> jax.Array:
        return _l2_normalize(self.audio_encoder(audio, train=train))

    def embed_mouth(self, expression: jax.Array) -> jax.Array:
        if expression.ndim != 3 or expression.shape[1] != self.cfg.frames:
            raise ValueError(f"expression must be [N, {self.cfg.frames}, E], got {tuple(expression.shape)}")
        x = expression[..., list(self.cfg.mouth_dims)].reshape(expression.shape[0], -1)
        for i, layer in enumerate(self.mouth_mlp):
            x = layer(x)
            if i < len(self.mouth_mlp) - 1:
                x = jax.nn.leaky_relu(x, 0.2)
        return _l2_normalize(x)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize(p=2, dim=1): x / max(|x|, eps), in float32 (or float64)."""
    x = Policy.f32(x)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sync_probability(audio_emb: jax.Array, face_emb: jax.Array) -> jax.Array:
    """Wav2Lip's cosine similarity of normalised embeddings, [B] in [0, 1] (both are >= 0)."""
    return jnp.clip(jnp.sum(audio_emb * face_emb, axis=-1), 0.0, 1.0)


def crop_box(frames, box: tuple[float, float, float, float]):
    """``frames[..., rows, cols, :]`` of ``box`` = (top, bottom, left, right) fractions of H and W
    (rounded to whole pixels; at least one). Any array type, [..., H, W, C]."""
    h, w = frames.shape[-3:-1]
    top, bottom, left, right = box
    r0, c0 = int(round(top * h)), int(round(left * w))
    r1, c1 = max(int(round(bottom * h)), r0 + 1), max(int(round(right * w)), c0 + 1)
    return frames[..., r0:r1, c0:c1, :]


def face_input(faces: jax.Array, face_size: tuple[int, int], face_box=LOWER_HALF) -> jax.Array:
    """uint8 face crops [B, 5, H_img, W_img, 3] -> the face encoder's float [B, H, W, 15] in
    [0, 1]: ``face_box`` of each (``crop_box``), resized to ``face_size``, frames on channels."""
    faces = crop_box(faces, tuple(face_box))
    b, n, h, w, c = faces.shape
    x = faces.astype(jnp.float32) / 255.0
    if (h, w) != tuple(face_size):
        x = jax.image.resize(x, (b, n, *face_size, c), "linear")
    return jnp.moveaxis(x, 1, 3).reshape(b, *face_size, n * c)
