"""torchvision's ResNet-50 (v1.5: the stride on the 3x3 conv) in Flax NNX, NHWC, inference only.

The backbone both official descriptor estimators share: Deep3DFaceRecon's coefficient regressor
and L2CS-Net. Layout as torchvision names it (``conv1, bn1, layer1 … layer4``, each a list of
``Bottleneck(conv1 1x1, conv2 3x3 stride, conv3 1x1 ×4, downsample = conv 1x1 + BN)``), so the
official state dicts map one to one (``gohd_jax.interop.estimator_weights``).

``ResNet50(x)``: images [B,H,W,3] (normalised as the estimator wants) -> pooled features
[B,2048] (global average over the final [B,H/32,W/32,2048] map). BatchNorm runs with its running
statistics (eval mode, eps 1e-5), as the official estimators do at inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

__all__ = ["ResNet50", "Bottleneck", "STAGES", "FEATURE_DIM"]

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)
EXPANSION = 4
FEATURE_DIM = 512 * EXPANSION


class Conv(nnx.Module):
    """Bias-free conv, weight [kh,kw,Cin,Cout] (torch [Cout,Cin,kh,kw]), symmetric padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.stride, self.padding = stride, padding
        std = (2.0 / (kernel * kernel * cout)) ** 0.5  # torchvision: kaiming_normal, fan_out
        self.weight = nnx.Param(std * jax.random.normal(rngs.params(), (kernel, kernel, cin, cout),
                                                        param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        return lax.conv_general_dilated(x, self.weight[...].astype(x.dtype), (self.stride,) * 2,
                                        ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(c: int, rngs: nnx.Rngs, param_dtype) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, use_running_average=True, rngs=rngs,
                         param_dtype=param_dtype)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BN after each, ReLU, identity or projected skip."""

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        cout = planes * EXPANSION
        self.conv1, self.bn1 = Conv(cin, planes, 1, **kw), _bn(planes, rngs, param_dtype)
        self.conv2, self.bn2 = Conv(planes, planes, 3, stride, 1, **kw), _bn(planes, rngs, param_dtype)
        self.conv3, self.bn3 = Conv(planes, cout, 1, **kw), _bn(cout, rngs, param_dtype)
        project = stride != 1 or cin != cout
        self.downsample = (nnx.List([Conv(cin, cout, 1, stride, **kw), _bn(cout, rngs, param_dtype)])
                           if project else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + skip)


class ResNet50(nnx.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool) + 4 stages of Bottlenecks + global mean pool."""

    def __init__(self, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.conv1 = Conv(3, 64, 7, 2, 3, **kw)
        self.bn1 = _bn(64, rngs, param_dtype)
        cin, layers = 64, []
        for planes, blocks, stride in STAGES:
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(cin, planes, stride if i == 0 else 1, **kw))
                cin = planes * EXPANSION
            layers.append(nnx.List(stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def features(self, x: jax.Array) -> jax.Array:
        """[B,H,W,3] -> the final feature map [B,ceil(H/32),ceil(W/32),2048]."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet50 wants images [B,H,W,3] (NHWC), got shape {tuple(x.shape)}")
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B,H,W,3] -> pooled features [B,2048]."""
        return jnp.mean(self.features(x), axis=(1, 2))
