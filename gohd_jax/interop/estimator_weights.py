"""Official estimator state dicts -> ``Deep3DRecon`` and ``L2CSGaze``, and the ``gohd-parity``
checkers of the ``deep3d_recon`` and ``l2cs`` oracles.

Sources (read torch-free by ``interop.torch_checkpoint``):

* Deep3DFaceRecon: ``epoch_20.pth['net_recon']``; names ``backbone.<torchvision resnet>`` and
  ``final_layers.{0..6}.{weight [out,2048,1,1], bias}``.
* L2CS-Net: ``L2CSNet_gaze360.pkl``, a plain state dict (sometimes saved with DataParallel's
  ``module.`` prefix, which is stripped); names ``<torchvision resnet>``, ``fc_yaw_gaze``,
  ``fc_pitch_gaze`` and the vestigial ``fc_finetune`` (read and dropped).

ResNet names: ``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1,2,3}``, ``.bn{1,2,3}``,
``.downsample.{0 (conv), 1 (BN)}``. Conv weights (out, in, kh, kw) -> (kh, kw, in, out); BN
``weight, bias, running_mean, running_var`` -> scale, bias, mean, var (``num_batches_tracked``
dropped); Linear (out, in) -> (in, out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.interop.expression_weights import batchnorm_entries as _bn
from gohd_jax.interop.expression_weights import copy_entries
from gohd_jax.models.estimators import Deep3DRecon, L2CSGaze, decode_gaze, descriptor_parts
from gohd_jax.models.resnet import ResNet50

__all__ = ["load_state_dict", "deep3d_from_state_dict", "l2cs_from_state_dict", "load_deep3d",
           "load_l2cs", "parity_deep3d_recon", "parity_l2cs"]


def _resnet(prefix: str, net: ResNet50) -> Iterator[tuple[str, Any, str]]:
    yield f"{prefix}conv1.weight", net.conv1.weight, "conv"
    yield from _bn(f"{prefix}bn1", net.bn1)
    for s, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), start=1):
        for i, block in enumerate(stage):
            p = f"{prefix}layer{s}.{i}"
            for k in (1, 2, 3):
                yield f"{p}.conv{k}.weight", getattr(block, f"conv{k}").weight, "conv"
                yield from _bn(f"{p}.bn{k}", getattr(block, f"bn{k}"))
            if block.downsample is not None:
                yield f"{p}.downsample.0.weight", block.downsample[0].weight, "conv"
                yield from _bn(f"{p}.downsample.1", block.downsample[1])


def _entries(model: nnx.Module) -> Iterator[tuple[str, Any, str]]:
    if isinstance(model, Deep3DRecon):
        yield from _resnet("backbone.", model.backbone)
        for i, head in enumerate(model.final_layers):
            yield f"final_layers.{i}.weight", head.kernel, "conv1x1"
            yield f"final_layers.{i}.bias", head.bias, "copy"
    elif isinstance(model, L2CSGaze):
        yield from _resnet("", model.backbone)
        for name in ("fc_yaw_gaze", "fc_pitch_gaze"):
            yield f"{name}.weight", getattr(model, name).kernel, "linear"
            yield f"{name}.bias", getattr(model, name).bias, "copy"
    else:
        raise TypeError(f"no official weights for {type(model).__name__}")


def _transform(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":
        return arr.transpose(2, 3, 1, 0)
    if how == "conv1x1":  # [out, in, 1, 1] -> [in, out]
        return arr.reshape(arr.shape[0], -1).T
    if how == "linear":
        return arr.T
    return arr


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, Any], *,
                    ignore: tuple[str, ...] = ()) -> nnx.Module:
    """Copies an official state dict into ``model`` in place: strict on names and shapes
    (entries whose names start with one of ``ignore`` may be present and are dropped)."""
    return copy_entries(model, _entries(model), state_dict, _transform, ignore=ignore)


def deep3d_from_state_dict(state_dict: Mapping[str, Any], param_dtype=jnp.float32) -> Deep3DRecon:
    """``epoch_20.pth['net_recon']`` (or the oracle's weights) -> ``Deep3DRecon``."""
    model = Deep3DRecon(rngs=nnx.Rngs(0), param_dtype=param_dtype)
    return load_state_dict(model, state_dict)


def l2cs_from_state_dict(state_dict: Mapping[str, Any], param_dtype=jnp.float32) -> L2CSGaze:
    """``L2CSNet_gaze360.pkl`` (or the oracle's weights) -> ``L2CSGaze`` (``fc_finetune`` dropped)."""
    model = L2CSGaze(rngs=nnx.Rngs(0), param_dtype=param_dtype)
    return load_state_dict(model, state_dict, ignore=("fc_finetune.",))


def load_deep3d(path: str | Path) -> Deep3DRecon:
    """Reads Deep3DFaceRecon's ``epoch_20.pth`` (its ``net_recon`` entry) torch-free."""
    from gohd_jax.interop.torch_checkpoint import load_torch_checkpoint

    ckpt = load_torch_checkpoint(path)
    sd = ckpt.get("net_recon", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a dict with 'net_recon' (Deep3DFaceRecon's epoch_20.pth)")
    return deep3d_from_state_dict(sd)


def load_l2cs(path: str | Path) -> L2CSGaze:
    """Reads ``L2CSNet_gaze360.pkl`` torch-free."""
    from gohd_jax.interop.torch_checkpoint import load_torch_checkpoint

    sd = load_torch_checkpoint(path)
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state dict (L2CSNet_gaze360.pkl)")
    return l2cs_from_state_dict(sd)


def _nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))


def parity_deep3d_recon(io, state_dict, fp64_ref=None):
    if state_dict is None:
        raise ValueError("the deep3d_recon oracle needs its weights (manifest.json)")
    model = deep3d_from_state_dict(state_dict)

    @nnx.jit
    def run(m, x):
        feat = m.backbone(x)
        coeff = jnp.concatenate([h(feat) for h in m.final_layers], axis=-1)
        return feat, coeff

    feat, coeff = run(model, _nhwc(io["img_input"]))
    exp, pose = descriptor_parts(coeff)
    return {"coeff": np.asarray(coeff), "backbone_feat": np.asarray(feat), "exp": np.asarray(exp),
            "pose": np.asarray(pose)}


def parity_l2cs(io, state_dict, fp64_ref=None):
    if state_dict is None:
        raise ValueError("the l2cs oracle needs its weights (manifest.json)")
    model = l2cs_from_state_dict(state_dict)
    first, second = nnx.jit(lambda m, x: m(x))(model, _nhwc(io["img_input"]))
    test = decode_gaze(jnp.asarray(io["decode_test_logits_first"], jnp.float32),
                       jnp.asarray(io["decode_test_logits_second"], jnp.float32))
    return {"logits_fc_yaw_gaze": np.asarray(first), "logits_fc_pitch_gaze": np.asarray(second),
            "gaze0": np.asarray(decode_gaze(first, second)), "decode_test_gaze0": np.asarray(test)}
