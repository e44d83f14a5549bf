"""The two official descriptor estimators, JAX ports on a shared ResNet-50 (``models.resnet``).

* ``Deep3DRecon``: Deep3DFaceRecon's ``ReconNetWrapper('resnet50', use_last_fc=False)``. An
  aligned face [B,224,224,3], RGB in [0, 1] (``data_pipelines.video.align``) -> 257 BFM09
  coefficients, in the official order ``id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | tx ty 2 |
  tz 1``. ``descriptor_parts`` takes what GoHD uses: expression coeff[80:144] and the pose
  [angles coeff[224:227] (rad), translation coeff[254:257]].
* ``L2CSGaze``: L2CS-Net (ResNet-50, Gaze360, 90 bins of 4 degrees). A face crop [B,448,448,3]
  normalised with the ImageNet mean and std -> two 90-way logits, in the official forward's
  order ``(fc_yaw_gaze, fc_pitch_gaze)``; ``decode_gaze`` turns them into GoHD's ``gaze0``
  [B,2] = [decode(first), decode(second)] in radians, decode(l) = (Σ softmax(l)·i·4 − 180)·π/180.
  GoHD's inference calls that pair ``[pitch, yaw]`` although the first head is named yaw; we
  keep the official order and its arithmetic, not the names (dossier 3.4).

Both are inference-only (BatchNorm on running statistics) and jit/batch like any NNX module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gohd_jax.models.resnet import FEATURE_DIM, ResNet50

__all__ = ["Deep3DRecon", "L2CSGaze", "COEFF_SPLITS", "COEFF_DIM", "descriptor_parts", "decode_gaze",
           "GAZE_BINS", "IMAGENET_MEAN", "IMAGENET_STD"]

# (name, size) of the seven 1x1-conv heads of ReconNetWrapper, in order.
COEFF_SPLITS = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("txy", 2), ("tz", 1))
COEFF_DIM = sum(n for _, n in COEFF_SPLITS)  # 257
GAZE_BINS = 90
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _linear(cin: int, cout: int, rngs: nnx.Rngs, param_dtype, zero: bool = False) -> nnx.Linear:
    init = nnx.initializers.zeros if zero else nnx.initializers.lecun_normal()
    return nnx.Linear(cin, cout, kernel_init=init, bias_init=nnx.initializers.zeros, rngs=rngs,
                      param_dtype=param_dtype)


class Deep3DRecon(nnx.Module):
    """ResNet-50 + the seven coefficient heads (1x1 convs on the pooled feature = linear layers;
    zero-initialised, as the official constructor does)."""

    def __init__(self, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.backbone = ResNet50(rngs=rngs, param_dtype=param_dtype)
        self.final_layers = nnx.List([_linear(FEATURE_DIM, n, rngs, param_dtype, zero=True)
                                      for _, n in COEFF_SPLITS])

    def __call__(self, images: jax.Array) -> jax.Array:
        """images [B,224,224,3] RGB in [0,1] (aligned) -> coefficients [B,257]."""
        feat = self.backbone(images)
        return jnp.concatenate([head(feat) for head in self.final_layers], axis=-1)


def descriptor_parts(coeff: jax.Array) -> tuple[jax.Array, jax.Array]:
    """coefficients [...,257] -> (expression [...,64], pose [...,6] = angles 3 (rad) + translation 3)."""
    return coeff[..., 80:144], jnp.concatenate([coeff[..., 224:227], coeff[..., 254:257]], axis=-1)


class L2CSGaze(nnx.Module):
    """ResNet-50 + two 90-bin linear heads. (The official ``fc_finetune`` is vestigial: its
    weights are read from the checkpoint and dropped.)"""

    def __init__(self, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.backbone = ResNet50(rngs=rngs, param_dtype=param_dtype)
        self.fc_yaw_gaze = _linear(FEATURE_DIM, GAZE_BINS, rngs, param_dtype)
        self.fc_pitch_gaze = _linear(FEATURE_DIM, GAZE_BINS, rngs, param_dtype)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B,448,448,3] ImageNet-normalised RGB -> (first, second) logits [B,90] each."""
        feat = self.backbone(images)
        return self.fc_yaw_gaze(feat), self.fc_pitch_gaze(feat)

    def gaze(self, images: jax.Array) -> jax.Array:
        """images -> gaze0 [B,2] in radians (GoHD's order; see the module docstring)."""
        return decode_gaze(*self(images))


def decode_gaze(first: jax.Array, second: jax.Array) -> jax.Array:
    """Two [...,90] logit vectors -> [...,2] angles in radians (expected bin, 4° bins from −180°)."""
    idx = jnp.arange(GAZE_BINS, dtype=first.dtype)

    def one(logits):
        deg = jnp.sum(jax.nn.softmax(logits, axis=-1) * idx, axis=-1) * 4.0 - 180.0
        return deg * (math.pi / 180.0)

    return jnp.stack([one(first), one(second)], axis=-1)
