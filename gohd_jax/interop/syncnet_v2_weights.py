"""syncnet_python's ``syncnet_v2.model`` -> ``SyncNetV2``, and the ``gohd-parity`` checker of the
``syncnet`` oracle (the network and the whole ``SyncNetInstance.evaluate`` LSE procedure).

The file (``download_model.sh``: robots.ox.ac.uk .../lipsync/data/syncnet_v2.model) is a plain
state dict saved with ``torch.save``; ``SyncNetInstance.loadParameters`` copies each of its
entries into ``S().state_dict()[name]``. ``load_torch_checkpoint`` reads it without torch, in
either of torch's formats (zip since 1.6, or the legacy pickle format of older saves). Names,
with no prefix (a DataParallel ``module.`` prefix on every key is stripped):

* ``netcnnaud.{0,4,8,11,14,18}.{weight [Cout,Cin,kh,kw], bias}`` (Conv2d) and
  ``netcnnaud.{1,5,9,12,15,19}.{weight, bias, running_mean, running_var}`` (BatchNorm2d);
* ``netcnnlip.{0,4,8,11,14,18}.{weight [Cout,Cin,kd,kh,kw], bias}`` (Conv3d) and
  ``netcnnlip.{1,5,...,19}.*`` (BatchNorm3d);
* ``netfcaud.{0,3}`` / ``netfclip.{0,3}`` ``.{weight [out,in], bias}`` (Linear) and
  ``netfcaud.1`` / ``netfclip.1`` (BatchNorm1d).

Conversion: Conv2d (O,I,kh,kw) -> (kh,kw,I,O); Conv3d (O,I,kd,kh,kw) -> (kd,kh,kw,I,O); Linear
(out,in) -> (in,out); BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var.
Strict: every name above must be present with its shape, and any other entry is an error,
except BatchNorm's ``num_batches_tracked`` (torch >= 0.4.1 saves it; older files do not), which
is accepted and dropped. (The official loader is laxer: it leaves missing entries at their init.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.interop.expression_weights import batchnorm_entries as _bn
from gohd_jax.interop.expression_weights import copy_entries, read_state_dict
from gohd_jax.models.syncnet_v2 import CONV_INDICES, EMBED_DIM, STAGES, SyncNetV2

__all__ = ["syncnet_v2_from_state_dict", "load_syncnet_v2", "parity_syncnet", "state_dict_names"]


def _entries(model: SyncNetV2) -> Iterator[tuple[str, Any, str]]:
    for net, convs, bns in (("netcnnaud", model.aud_convs, model.aud_bns),
                            ("netcnnlip", model.lip_convs, model.lip_bns)):
        for idx, conv, bn in zip(CONV_INDICES, convs, bns):
            yield f"{net}.{idx}.weight", conv.weight, "conv"
            yield f"{net}.{idx}.bias", conv.bias, "copy"
            yield from _bn(f"{net}.{idx + 1}", bn)
    for net, mlp in (("netfcaud", model.fcaud), ("netfclip", model.fclip)):
        yield f"{net}.0.weight", mlp.fc0.kernel, "linear"
        yield f"{net}.0.bias", mlp.fc0.bias, "copy"
        yield from _bn(f"{net}.1", mlp.bn1)
        yield f"{net}.3.weight", mlp.fc3.kernel, "linear"
        yield f"{net}.3.bias", mlp.fc3.bias, "copy"


def _transform(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":  # (O, I, *k) -> (*k, I, O), 2-D or 3-D
        return np.moveaxis(arr, (0, 1), (-1, -2))
    if how == "linear":
        return arr.T
    return arr


def _abstract(embed_dim: int, param_dtype) -> SyncNetV2:
    """A ``SyncNetV2`` whose variables are shapes only (no random init to compute)."""
    return nnx.eval_shape(lambda: SyncNetV2(embed_dim=embed_dim, rngs=nnx.Rngs(0), param_dtype=param_dtype))


def state_dict_names(model: SyncNetV2 | None = None) -> list[str]:
    """The official names the converter reads (``num_batches_tracked`` excluded), in order."""
    model = model if model is not None else _abstract(EMBED_DIM, jnp.float32)
    return [name for name, _, _ in _entries(model)]


def syncnet_v2_from_state_dict(state_dict: Mapping[str, Any], param_dtype=jnp.float32) -> SyncNetV2:
    """``syncnet_v2.model`` (or the oracle's weights) -> ``SyncNetV2``; strict on names and shapes
    (see the module docstring). The embedding size follows ``netfcaud.3.weight`` (1024 official)."""
    fc = state_dict.get("netfcaud.3.weight", state_dict.get("module.netfcaud.3.weight"))
    embed_dim = int(np.shape(fc)[0]) if fc is not None else 1024
    model = _abstract(embed_dim, param_dtype)  # every variable is then set from the state dict
    copy_entries(model, _entries(model), state_dict, _transform)
    left = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))
            if isinstance(v, jax.ShapeDtypeStruct)]
    if left:
        raise AssertionError(f"SyncNetV2 variables the state dict did not set: {left}")
    return model


def load_syncnet_v2(path: str | Path) -> SyncNetV2:
    """Reads syncnet_python's ``syncnet_v2.model`` torch-free -> ``SyncNetV2``."""
    return syncnet_v2_from_state_dict(read_state_dict(path, "syncnet_python's syncnet_v2.model"))


def _ncx(x) -> np.ndarray:
    """Channels-last [B,...,C] -> torch's [B,C,...]."""
    x = np.asarray(x)
    return np.moveaxis(x, -1, 1)


def parity_syncnet(io, state_dict, fp64_ref=None) -> dict[str, np.ndarray]:
    """The ``syncnet`` oracle: the two streams on ``aud_input`` / ``lip_input`` (torch layouts),
    and ``eval.lse.lse_scores`` on ``lse_video`` [1,3,T,224,224] uint8 (evaluate's tensor: BGR)
    and ``lse_audio`` (int16, 16 kHz). ``window_index`` and ``lse_clip_start_frame`` only say where
    the inputs come from and are not used."""
    if state_dict is None:
        raise ValueError("the syncnet oracle needs its weights (manifest.json)")
    from gohd_jax.eval.lse import lse_scores

    model = syncnet_v2_from_state_dict(state_dict)

    @nnx.jit
    def streams(m, mfcc, frames):
        return m.audio_activations(mfcc), m.lip_activations(frames)

    mfcc = jnp.asarray(np.asarray(io["aud_input"], np.float32).transpose(0, 2, 3, 1))  # [B,13,20,1]
    frames = jnp.asarray(np.asarray(io["lip_input"], np.float32).transpose(0, 2, 3, 4, 1))
    aud, lip = streams(model, mfcc, frames)
    out = {}
    for stage in STAGES:
        out[f"aud_{stage}"] = _ncx(aud[stage])
        out[f"lip_{stage}"] = _ncx(lip[stage])
    out["aud_emb"], out["lip_emb"] = np.asarray(aud["emb"]), np.asarray(lip["emb"])
    out["lip_feat"] = np.asarray(lip["feat"])

    video = np.asarray(io["lse_video"])[0].transpose(1, 2, 3, 0)  # [T,224,224,3], BGR as evaluate's
    res = lse_scores(model, video, np.asarray(io["lse_audio"]), channel_order="bgr")
    out.update({f"lse_{k}": v for k, v in res.arrays().items()})
    return out
