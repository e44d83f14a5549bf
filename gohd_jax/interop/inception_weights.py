"""pytorch-fid's FID Inception weights -> ``FIDInceptionV3``, and the ``gohd-parity`` checker of
the ``fid_inception`` oracle.

Source: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's ``FID_WEIGHTS_URL``), a plain
state dict of torchvision ``Inception3(num_classes=1008, aux_logits=False)`` names, read torch-free
by ``interop.torch_checkpoint``:

* ``Conv2d_1a_3x3 … Conv2d_4a_3x3``, ``Mixed_5b … Mixed_7c.<branch>``, each a BasicConv2d with
  ``.conv.weight`` [out,in,kh,kw] -> [kh,kw,in,out] and ``.bn.{weight,bias,running_mean,
  running_var}`` -> BatchNorm scale, bias, mean, var (``.bn.num_batches_tracked`` dropped);
* ``fc.weight`` [1008,2048] / ``fc.bias`` [1008]: the ImageNet-2015 classifier, unused by FID
  (the features stop at the average pool): read, shape-checked and dropped.

Strict: every other name must be used and every port weight present with its shape. A
``module.`` (DataParallel) prefix is stripped. The ``blocks.<i>.<j>.*`` names of pytorch-fid's
own ``InceptionV3.state_dict()`` are not accepted (save the weight file, not the wrapper).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.interop.expression_weights import copy_entries, strip_prefix
from gohd_jax.models.inception_fid import FEATURE_DIM, BasicConv2d, FIDInceptionV3

__all__ = ["load_state_dict", "fid_inception_from_state_dict", "load_fid_inception",
           "parity_fid_inception", "FC_CLASSES"]

FC_CLASSES = 1008  # the TF-2015 graph's classifier (1000 ImageNet classes + 8 unused)


def _entries(model: FIDInceptionV3) -> Iterator[tuple[str, Any, str]]:
    for path, node in nnx.iter_graph(model):
        if isinstance(node, BasicConv2d):
            name = ".".join(str(p) for p in path)
            yield f"{name}.conv.weight", node.weight, "conv"
            yield f"{name}.bn.weight", node.bn.scale, "copy"
            yield f"{name}.bn.bias", node.bn.bias, "copy"
            yield f"{name}.bn.running_mean", node.bn.mean, "copy"
            yield f"{name}.bn.running_var", node.bn.var, "copy"


def _transform(arr: np.ndarray, how: str) -> np.ndarray:
    return arr.transpose(2, 3, 1, 0) if how == "conv" else arr


def _check_fc(sd: Mapping[str, Any]) -> None:
    """The unused classifier, if present, must still be the FID graph's (2048 -> 1008)."""
    expected = {"fc.weight": (FC_CLASSES, FEATURE_DIM), "fc.bias": (FC_CLASSES,)}
    for name, shape in expected.items():
        if name in sd and tuple(np.shape(sd[name])) != shape:
            raise ValueError(f"{name}: shape {tuple(np.shape(sd[name]))} != {shape} (is this the "
                             f"FID Inception weight file pt_inception-2015-12-05?)")
    extra = sorted(k for k in sd if k.startswith("fc.") and k not in expected)
    if extra:
        raise KeyError(f"unused state-dict entries: {extra[:8]}")


def load_state_dict(model: FIDInceptionV3, state_dict: Mapping[str, Any]) -> FIDInceptionV3:
    """Copies the FID Inception state dict into ``model`` in place (strict names and shapes;
    ``fc.*`` checked and dropped, ``num_batches_tracked`` dropped)."""
    sd = strip_prefix(state_dict)
    _check_fc(sd)
    return copy_entries(model, _entries(model), sd, _transform, ignore=("fc.",))


def fid_inception_from_state_dict(state_dict: Mapping[str, Any], param_dtype=jnp.float32,
                                  **model_kw) -> FIDInceptionV3:
    """``pt_inception-2015-12-05-6726825d.pth`` (or the oracle's weights) -> ``FIDInceptionV3``.
    ``model_kw``: ``resize_input``, ``normalize_input``, ``precision`` of the model."""
    # Abstract parameters (no random init): the strict copy fills every one of them.
    model = nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0), param_dtype=param_dtype,
                                                  **model_kw))
    load_state_dict(model, state_dict)
    abstract = [p for p, v in nnx.iter_graph(model)
                if isinstance(v, nnx.Variable) and isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract:  # cannot happen while _entries covers every BasicConv2d
        raise RuntimeError(f"parameters left unset by the state dict: {abstract[:4]}")
    return model


def load_fid_inception(path: str | Path, **model_kw) -> FIDInceptionV3:
    """Reads ``pt_inception-2015-12-05-6726825d.pth`` torch-free and builds the model."""
    from gohd_jax.interop.expression_weights import read_state_dict

    sd = read_state_dict(path, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    return fid_inception_from_state_dict(sd, **model_kw)


def _nchw(x: jax.Array) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def _streamed(fid_lib, act, batch: int = 16):
    """(mean, cov) through the streaming accumulator, fed in batches as an evaluation would."""
    stats = fid_lib.FrechetStats()
    for i in range(0, len(act), batch):
        stats.add(np.asarray(act[i:i + batch], np.float32))
    return stats.statistics()


def parity_fid_inception(io, state_dict, fp64_ref=None):
    """The ``fid_inception`` oracle: the network on ``img_input`` (NCHW [B,3,H,W] in [0,1]) and
    the Frechet distance on the stored activation sets (float64, ``gohd_jax.eval.fid``)."""
    from gohd_jax.eval import fid as fid_lib

    if state_dict is None:
        raise ValueError("the fid_inception oracle needs its weights (manifest.json)")
    model = fid_inception_from_state_dict(state_dict)
    images = jnp.asarray(np.asarray(io["img_input"], np.float32).transpose(0, 2, 3, 1))
    blocks = nnx.jit(lambda m, x: m.blocks(x))(model, images)
    out = {"block0_input": _nchw(blocks["block0_input"]), "block0": _nchw(blocks["block0"]),
           "block1": _nchw(blocks["block1"]), "block2": _nchw(blocks["block2"]),
           "block3_out": _nchw(blocks["block3"]),
           "pool_features": np.asarray(blocks["block3"])[:, 0, 0, :]}

    # 64 samples of 2048-d: rank-deficient covariances, sqrtm comes out complex.
    mu1, sigma1 = _streamed(fid_lib, io["fd_act1"])
    mu2, sigma2 = _streamed(fid_lib, io["fd_act2"])
    fd, parts = fid_lib.frechet_distance(mu1, sigma1, mu2, sigma2, return_parts=True)
    n = 64
    out.update(fd_mu1=mu1, fd_mu2=mu2, fd_sigma1_diag=np.diagonal(sigma1).copy(),
               fd_sigma2_diag=np.diagonal(sigma2).copy(),
               fd_sigma1_block64=sigma1[:n, :n].copy(), fd_sigma2_block64=sigma2[:n, :n].copy(),
               fd_trace_sigma1=np.float64(parts.trace_sigma1),
               fd_trace_sigma2=np.float64(parts.trace_sigma2),
               fd_tr_covmean=np.float64(parts.tr_covmean),
               fd_sqrtm_is_complex=np.int64(parts.sqrtm_is_complex), fid=np.float64(fd))

    # 256 samples of 64-d: full-rank covariances.
    smu1, ssig1 = _streamed(fid_lib, io["fd_small_act1"])
    smu2, ssig2 = _streamed(fid_lib, io["fd_small_act2"])
    sfd, sparts = fid_lib.frechet_distance(smu1, ssig1, smu2, ssig2, return_parts=True)
    out.update(fd_small_mu1=smu1, fd_small_mu2=smu2, fd_small_sigma1=ssig1, fd_small_sigma2=ssig2,
               fd_small_tr_covmean=np.float64(sparts.tr_covmean), fd_small_fid=np.float64(sfd))
    return out
