"""The descriptor estimators on the accelerator: batched, jitted, sharded over local devices.

``Estimators.from_files(deep3d=..., l2cs=..., lm3d=...)`` loads the official weights torch-free
(``epoch_20.pth``, ``L2CSNet_gaze360.pkl``; a ``.npz`` of the same state dict works too) and
``Estimators.__call__(deep3d_inputs [N,224,224,3] in [0,1], l2cs_inputs [N,448,448,3] uint8)``
returns (expression [N,64], pose [N,6], gaze [N,2]) as float32 numpy. Inputs are padded to a
fixed batch so that each estimator compiles once; the batch is split over all local devices
(a 1-D data mesh) when there are several.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.video.align import load_lm3d
from data_pipelines.video.faces import MissingModel

log = logging.getLogger(__name__)

__all__ = ["Estimators", "WEIGHTS_HELP", "load_state_dict_file", "find_lm3d"]

WEIGHTS_HELP = """\
gohd-preprocess needs the two official estimators' weights (it never writes made-up descriptors):
  --deep3d  Deep3DFaceRecon_pytorch/checkpoints/<name>/epoch_20.pth  (Deep3DFaceRecon's released
            model, from the Deep3DFaceRecon_pytorch README's model link)
  --lm3d    Deep3DFaceRecon_pytorch/BFM/similarity_Lm3D_all.mat  (ships in that repository; found
            without the flag beside epoch_20.pth or in a BFM/ folder up to three levels above it)
  --l2cs    L2CSNet_gaze360.pkl  (L2CS-Net's Gaze360 model, from the L2CS-Net README's link)
Put them anywhere (for example weights/) and pass the paths; torch is not needed to read them."""


def load_state_dict_file(path: str | Path, entry: str | None = None) -> Mapping:
    """A state dict from a torch checkpoint (read torch-free) or an ``.npz``; ``entry`` picks a
    sub-dict (``net_recon``) when the file holds one."""
    p = Path(path)
    if not p.is_file():
        raise MissingModel(f"{p}: no such file\n{WEIGHTS_HELP}")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            sd = {k: z[k] for k in z.files}
    else:
        from gohd_jax.interop.torch_checkpoint import load_torch_checkpoint

        sd = load_torch_checkpoint(p)
    if entry and isinstance(sd, Mapping) and entry in sd:
        sd = sd[entry]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{p}: expected a state dict, found {type(sd).__name__}")
    return sd


LM3D_NAME = "similarity_Lm3D_all.mat"


def find_lm3d(deep3d: str | Path) -> Path | None:
    """The 3D template beside the Deep3DFaceRecon checkpoint: the checkpoint's folder, or a
    ``BFM/`` folder up to three levels above it (``Deep3DFaceRecon_pytorch/checkpoints/<name>/
    epoch_20.pth`` -> ``Deep3DFaceRecon_pytorch/BFM/similarity_Lm3D_all.mat``)."""
    p = Path(deep3d).resolve().parent
    for folder in [p, *[q / "BFM" for q in [p, *list(p.parents)[:3]]]]:
        if (folder / LM3D_NAME).is_file():
            return folder / LM3D_NAME
    return None


class Estimators:
    """Deep3DFaceRecon + L2CS-Net, ready for batches of aligned crops."""

    def __init__(self, deep3d, l2cs, lm3d: np.ndarray, batch_size: int = 32):
        from gohd_jax.models.estimators import IMAGENET_MEAN, IMAGENET_STD, descriptor_parts

        self.lm3d = np.asarray(lm3d, np.float64)
        devices = jax.local_devices()
        self.batch_size = int(np.ceil(batch_size / len(devices)) * len(devices))
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        self._in = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        d_graph, d_state = nnx.split(deep3d)
        g_graph, g_state = nnx.split(l2cs)
        self._d_state = jax.device_put(d_state, rep)
        self._g_state = jax.device_put(g_state, rep)
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)

        @jax.jit
        def run(d_state, g_state, face224, face448):
            coeff = nnx.merge(d_graph, d_state)(face224)
            exp, pose = descriptor_parts(coeff)
            x = (face448.astype(jnp.float32) / 255.0 - mean) / std
            gaze = nnx.merge(g_graph, g_state).gaze(x)
            return exp, pose, gaze

        self._run = run

    @classmethod
    def from_files(cls, deep3d: str | Path, l2cs: str | Path, lm3d: str | Path,
                   batch_size: int = 32) -> "Estimators":
        from gohd_jax.interop.estimator_weights import deep3d_from_state_dict, l2cs_from_state_dict

        if deep3d and not lm3d:
            lm3d = find_lm3d(deep3d)
        missing = [f"--{n}" for n, v in (("deep3d", deep3d), ("l2cs", l2cs), ("lm3d", lm3d)) if not v]
        if missing:
            raise MissingModel(f"missing {', '.join(missing)}\n{WEIGHTS_HELP}")
        for p in (deep3d, l2cs, lm3d):
            if not Path(p).is_file():
                raise MissingModel(f"{p}: no such file\n{WEIGHTS_HELP}")
        d = deep3d_from_state_dict(load_state_dict_file(deep3d, "net_recon"))
        g = l2cs_from_state_dict(load_state_dict_file(l2cs))
        return cls(d, g, load_lm3d(lm3d), batch_size)

    def with_batch_size(self, batch_size: int) -> "Estimators":
        """The same estimators (weights and jitted function shared) run ``batch_size`` at a time."""
        import copy

        other = copy.copy(self)
        other.batch_size = int(np.ceil(batch_size / len(jax.local_devices())) * len(jax.local_devices()))
        return other

    def __call__(self, face224: np.ndarray, face448: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(face224)
        outs = []
        for i in range(0, n, self.batch_size):
            a, b = face224[i:i + self.batch_size], face448[i:i + self.batch_size]
            pad = self.batch_size - len(a)
            if pad:
                a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
                b = np.concatenate([b, np.zeros((pad,) + b.shape[1:], b.dtype)])
            res = self._run(self._d_state, self._g_state, jax.device_put(a, self._in),
                            jax.device_put(b, self._in))
            outs.append([np.asarray(r)[:len(a) - pad] for r in res])
        return tuple(np.concatenate([o[k] for o in outs]).astype(np.float32) for k in range(3))
