"""ArcFace's improved ResNet (``iresnet50`` / ``iresnet100``) in Flax NNX, NHWC, inference only:
the identity embedder behind the CSIM metric (``gohd_jax.eval.csim``).

Official code: deepinsight/insightface ``recognition/arcface_torch/backbones/iresnet.py`` (the
torch models of the arcface_torch model zoo, ``backbone.pth``) and, exported from the same code,
insightface's ONNX recognition models (``buffalo_l/w600k_r50.onnx``, ``antelopev2/glintr100.onnx``;
``gohd_jax.interop.arcface_weights`` reads both).

Architecture, with torch's names (so a state dict maps one to one):

* stem: ``conv1`` 3x3/1 (3 -> 64, no bias) -> ``bn1`` -> ``prelu`` (one slope per channel);
* ``layer1`` .. ``layer4``: ``layers[s]`` ``IBasicBlock``\\ s of width 64, 128, 256, 512, each
  stage starting with a stride-2 block that has a ``downsample`` (1x1/2 conv + BN). A block is
  ``bn1 -> conv1 3x3/1 -> bn2 -> prelu -> conv2 3x3/stride -> bn3``, plus the (projected) input;
  there is no activation after the sum;
* head: ``bn2`` (BatchNorm2d of the [7,7,512] map) -> dropout (identity at inference) ->
  flatten -> ``fc`` (Linear 25088 -> 512) -> ``features`` (BatchNorm1d of the embedding).

Every BatchNorm runs with its running statistics, eps 1e-5 (the ONNX loader folds other eps
values into the variance). ``iresnet50``: layers (3, 4, 14, 3); ``iresnet100``: (3, 13, 30, 3).

Layout: NHWC. torch flattens the [512,7,7] map in (C, H, W) order; this port flattens its
[7,7,512] map in (H, W, C) order, so ``fc.kernel`` holds torch's ``fc.weight`` with its input
axis permuted to (H, W, C) (the converter does it); the result is the same linear map.

Input: aligned RGB faces [B,112,112,3] scaled to [-1, 1] (``(pixel - 127.5) / 127.5``). The
spatial size must be 112 (the head's Linear expects a 7x7 map). ``IResNetConfig.input_scale``
/ ``input_shift`` apply ``x * scale + shift`` first (per channel, RGB): identity for the
arcface_torch models; an ONNX graph that normalises its own input (leading Sub/Mul nodes, the
mxnet-converted models) gets the affine that reproduces what insightface feeds it.

Numerics: float32 parameters; convolutions and the Linear run at ``lax.Precision.HIGHEST`` by
default (a metric network: its numbers must not depend on the accelerator's matmul shortcuts).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

__all__ = ["IResNetConfig", "IResNet", "IBasicBlock", "PReLU", "iresnet50", "iresnet100",
           "LAYERS_R50", "LAYERS_R100", "WIDTHS", "INPUT_SIZE", "EMBEDDING_DIM", "BN_EPS",
           "INTERMEDIATES"]

LAYERS_R50 = (3, 4, 14, 3)
LAYERS_R100 = (3, 13, 30, 3)
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112
EMBEDDING_DIM = 512
BN_EPS = 1e-5
FC_GRID = 7  # 112 / 2**4
# The keys of ``IResNet.intermediates`` (NHWC for the maps).
INTERMEDIATES = ("layer1_out", "layer2_out", "layer3_out", "layer4_out", "bn2_out", "fc_out",
                 "embedding")


@dataclass(frozen=True)
class IResNetConfig:
    """``layers``: IBasicBlocks per stage (``LAYERS_R50``, ``LAYERS_R100``, or any 4 counts >= 1).
    ``num_features``: embedding size (512 for every insightface model).
    ``input_scale`` / ``input_shift``: per-channel (R, G, B) affine applied to the input first
    (identity by default; see the module docstring)."""
    layers: tuple[int, int, int, int] = LAYERS_R100
    num_features: int = EMBEDDING_DIM
    input_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        layers = tuple(int(n) for n in self.layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet needs 4 stages of >= 1 block each, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        for name in ("input_scale", "input_shift"):
            v = tuple(float(a) for a in getattr(self, name))
            if len(v) != 3:
                raise ValueError(f"{name} must hold 3 (R, G, B) values, got {v!r}")
            object.__setattr__(self, name, v)

    @property
    def name(self) -> str:
        """``"r50"``, ``"r100"`` or ``"iresnet<l1>-<l2>-<l3>-<l4>"``."""
        return {LAYERS_R50: "r50", LAYERS_R100: "r100"}.get(
            self.layers, "iresnet" + "-".join(map(str, self.layers)))

    @property
    def has_input_affine(self) -> bool:
        return self.input_scale != (1.0, 1.0, 1.0) or self.input_shift != (0.0, 0.0, 0.0)


def _fan_in_normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> jax.Array:
    """N(0, 1/fan_in) drawn with numpy from a seed taken off ``rngs`` (one jax.random draw per
    shape would compile once per shape: ~10 s for r100; real weights overwrite these anyway)."""
    key = rngs.params()
    fan_in = int(np.prod(shape[:-1]))
    if isinstance(key, jax.core.Tracer):  # under nnx.eval_shape / jit: stay traceable
        return jax.random.normal(key, shape, dtype) / np.sqrt(fan_in)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    w = np.random.default_rng(seed).standard_normal(shape, np.float32) / np.sqrt(fan_in)
    return jnp.asarray(w, dtype)


class Conv(nnx.Module):
    """Bias-free conv, weight [kh,kw,Cin,Cout] (torch [Cout,Cin,kh,kw]), symmetric padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32, precision=lax.Precision.HIGHEST):
        self.stride, self.padding, self.precision = stride, padding, precision
        self.weight = nnx.Param(_fan_in_normal(rngs, (kernel, kernel, cin, cout), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        return lax.conv_general_dilated(x, self.weight[...].astype(x.dtype), (self.stride,) * 2,
                                        ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=self.precision)


class PReLU(nnx.Module):
    """``max(x, 0) + weight * min(x, 0)``, one slope per channel (last axis), weight [C]."""

    def __init__(self, channels: int, *, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.full((channels,), 0.25, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.weight[...].astype(x.dtype) * x)


def _bn(c: int, rngs: nnx.Rngs, param_dtype) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=0.9, epsilon=BN_EPS, use_running_average=True, rngs=rngs,
                         param_dtype=param_dtype)


class IBasicBlock(nnx.Module):
    """``bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3/stride -> bn3`` + input (projected by
    ``downsample`` = [1x1/stride conv, BN] when the shape changes). [B,H,W,Cin] ->
    [B,H/stride,W/stride,planes]."""

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, precision=lax.Precision.HIGHEST):
        kw = dict(rngs=rngs, param_dtype=param_dtype, precision=precision)
        self.bn1 = _bn(cin, rngs, param_dtype)
        self.conv1 = Conv(cin, planes, 3, 1, 1, **kw)
        self.bn2 = _bn(planes, rngs, param_dtype)
        self.prelu = PReLU(planes, param_dtype=param_dtype)
        self.conv2 = Conv(planes, planes, 3, stride, 1, **kw)
        self.bn3 = _bn(planes, rngs, param_dtype)
        project = stride != 1 or cin != planes
        self.downsample = (nnx.List([Conv(cin, planes, 1, stride, **kw), _bn(planes, rngs, param_dtype)])
                           if project else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        skip = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return out + skip


class IResNet(nnx.Module):
    """ArcFace's iresnet: aligned faces [B,112,112,3] in [-1, 1] (RGB) -> embeddings [B,512]
    (not L2-normalised; cosine similarity normalises). See the module docstring."""

    def __init__(self, config: IResNetConfig = IResNetConfig(), *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, precision=lax.Precision.HIGHEST):
        self.config = config
        kw = dict(rngs=rngs, param_dtype=param_dtype, precision=precision)
        self.conv1 = Conv(3, WIDTHS[0], 3, 1, 1, **kw)
        self.bn1 = _bn(WIDTHS[0], rngs, param_dtype)
        self.prelu = PReLU(WIDTHS[0], param_dtype=param_dtype)
        cin, stages = WIDTHS[0], []
        for planes, blocks in zip(WIDTHS, config.layers):
            stage = []
            for i in range(blocks):
                stage.append(IBasicBlock(cin, planes, 2 if i == 0 else 1, **kw))
                cin = planes
            stages.append(nnx.List(stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = _bn(WIDTHS[-1], rngs, param_dtype)
        self.fc = nnx.Linear(WIDTHS[-1] * FC_GRID * FC_GRID, config.num_features, rngs=rngs,
                             param_dtype=param_dtype, precision=precision)
        self.features = _bn(config.num_features, rngs, param_dtype)

    def _check(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"IResNet wants aligned faces [B,{INPUT_SIZE},{INPUT_SIZE},3] (NHWC, "
                             f"[-1, 1]), got shape {tuple(x.shape)}")

    def intermediates(self, x: jax.Array) -> dict[str, jax.Array]:
        """[B,112,112,3] -> {``layer1_out`` [B,56,56,64], ``layer2_out`` [B,28,28,128],
        ``layer3_out`` [B,14,14,256], ``layer4_out`` [B,7,7,512], ``bn2_out`` [B,7,7,512],
        ``fc_out`` [B,512], ``embedding`` [B,512]} (maps NHWC)."""
        self._check(x)
        cfg = self.config
        if cfg.has_input_affine:
            x = x * jnp.asarray(cfg.input_scale, x.dtype) + jnp.asarray(cfg.input_shift, x.dtype)
        out: dict[str, jax.Array] = {}
        x = self.prelu(self.bn1(self.conv1(x)))
        for s, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            for block in stage:
                x = block(x)
            out[f"layer{s}_out"] = x
        x = self.bn2(x)
        out["bn2_out"] = x
        x = self.fc(x.reshape(x.shape[0], -1))  # (H, W, C) order; fc.kernel is permuted to match
        out["fc_out"] = x
        out["embedding"] = self.features(x)
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B,112,112,3] in [-1, 1] -> embeddings [B,512]."""
        return self.intermediates(x)["embedding"]


def iresnet50(*, rngs: nnx.Rngs | None = None, **kw) -> IResNet:
    """``IResNet`` with layers (3, 4, 14, 3) (``w600k_r50``, ``ms1mv3_arcface_r50``)."""
    return IResNet(IResNetConfig(LAYERS_R50), rngs=rngs or nnx.Rngs(0), **kw)


def iresnet100(*, rngs: nnx.Rngs | None = None, **kw) -> IResNet:
    """``IResNet`` with layers (3, 13, 30, 3) (``glintr100``, ``ms1mv3_arcface_r100``)."""
    return IResNet(IResNetConfig(LAYERS_R100), rngs=rngs or nnx.Rngs(0), **kw)
