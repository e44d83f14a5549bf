"""The metric networks of ``gohd-eval``, loaded from the files their users hold, each behind a
``batching.DeviceBatcher`` (fixed batches gathered across clips, sharded over the local devices).

* ``SyncNetScorer`` (LSE-C/D): items are 5-frame windows of syncnet face crops and 20-frame MFCC
  windows (``gohd_jax.eval.lse``); ``scores`` turns a clip's two feature sets into LSE-C, LSE-D
  and the AV offset.
* ``InceptionFeatures`` (FID): items are frames resized to 299x299 on the host (``prepare``), in
  [0, 1]; outputs are the 2048-d pool features.
* ``ArcFaceEmbedder`` (CSIM): items are 112x112 faces aligned by five landmarks (``align``);
  outputs are the 512-d embeddings.

Every network runs in float32 with ``Precision.HIGHEST`` (the parity setting), on every backend:
metric values must not depend on the accelerator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from gohd_jax.eval.batching import DeviceBatcher

__all__ = ["LazyItems", "WeightsError", "Networks", "SyncNetScorer", "InceptionFeatures", "ArcFaceEmbedder",
           "load_networks"]


class WeightsError(ValueError):
    """A weight file that cannot be read as the network it was given for (one line)."""


class LazyItems:
    """A clip's batcher items made one at a time: ``len()`` and ``[i]`` -> ``fn(i)``."""

    def __init__(self, n: int, fn):
        self._n, self._fn = int(n), fn

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        return self._fn(i)


class SyncNetScorer:
    """LSE on ``SyncNetV2``: ``windows(crops_rgb, audio)`` -> (lip items, MFCC items) of a clip,
    ``scores(lip_features, audio_features)`` -> {lse_c, lse_d, lse_offset}."""

    def __init__(self, model, batch_size: int = 32):
        import jax.numpy as jnp

        graphdef, state = nnx.split(model)

        def lip(params, x):  # uint8 [B,5,224,224,3], BGR
            return nnx.merge(graphdef, params).embed_lip(x.astype(jnp.float32))

        def aud(params, x):  # float32 [B,13,20,1]
            return nnx.merge(graphdef, params).embed_audio(x)

        self.lip = DeviceBatcher(lip, state, batch_size, name="syncnet lip")
        self.aud = DeviceBatcher(aud, state, batch_size, name="syncnet audio")

    @staticmethod
    def windows(crops: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """crops: RGB uint8 [T,224,224,3] (``clips.syncnet_crops``), audio float [N] at 16 kHz ->
        (video windows [n,5,224,224,3] BGR, a strided view: no copy; MFCC windows [n,13,20,1]),
        n = evaluate's window count. ValueError for a clip too short for one window."""
        from gohd_jax.eval import lse

        pcm = lse.audio_int16(audio)
        n = lse.num_windows(len(crops), len(pcm))
        if n < 1:
            raise ValueError(f"too short for LSE: {len(crops)} frames, {len(pcm) / 16000:.2f} s of audio "
                             f"(needs {lse.WINDOW_FRAMES + 1} frames of both)")
        mfcc32 = lse.mfcc(pcm).astype(np.float32)
        bgr = crops[..., ::-1]
        video = np.moveaxis(np.lib.stride_tricks.sliding_window_view(bgr, lse.WINDOW_FRAMES, axis=0), -1, 1)[:n]
        cols = lse.MFCC_PER_FRAME * np.arange(n)[:, None] + np.arange(lse.MFCC_WINDOW)  # [n, 20]
        audio_windows = np.ascontiguousarray(mfcc32[:, cols].transpose(1, 0, 2)[..., None])  # [n,13,20,1]
        return video, audio_windows

    @staticmethod
    def scores(lip_features: np.ndarray, audio_features: np.ndarray) -> dict:
        from gohd_jax.eval import lse

        s = lse.sync_distances(lip_features, audio_features, vshift=lse.VSHIFT)
        return {"lse_c": float(s["conf"]), "lse_d": float(s["min_dist"]), "lse_offset": int(s["offset"])}


class InceptionFeatures:
    """pytorch-fid's InceptionV3 pool features: ``prepare(frames uint8 [T,H,W,3])`` -> float32
    [T,299,299,3] in [0, 1] (the wrapper's own bilinear resize, done on the host so that frames of
    any size share one compiled batch)."""

    SIZE = 299

    def __init__(self, model, batch_size: int = 32):
        graphdef, state = nnx.split(model)

        def apply(params, x):
            return nnx.merge(graphdef, params)(x)

        self.batcher = DeviceBatcher(apply, state, batch_size, name="inception")

    def prepare(self, frames: np.ndarray) -> "LazyItems":
        """frames uint8 [T,H,W,3] -> T items float32 [299,299,3] in [0, 1], each made when the
        batcher takes it (a clip's resized frames are never all held at once)."""
        from gohd_jax.eval.clips import resize_bilinear

        return LazyItems(len(frames), lambda i: resize_bilinear(frames[i].astype(np.float32) / 255.0,
                                                                self.SIZE, self.SIZE))


class ArcFaceEmbedder:
    """ArcFace embeddings of aligned faces: ``align(frames, landmarks68)`` -> uint8 [T,112,112,3],
    ``cosine(reference [512], embeddings [T,512])`` -> [T]."""

    def __init__(self, model, batch_size: int = 32):
        graphdef, state = nnx.split(model)

        def apply(params, x):  # uint8 RGB [B,112,112,3] -> [B,512]
            from gohd_jax.eval.csim import network_input

            return nnx.merge(graphdef, params)(network_input(x))

        self.batcher = DeviceBatcher(apply, state, batch_size, name="arcface")

    @staticmethod
    def align(frames: np.ndarray, landmarks: np.ndarray) -> LazyItems:
        """Items uint8 [112,112,3]: frame i aligned by the five points of its 68 landmarks."""
        from gohd_jax.eval import csim

        return LazyItems(len(frames), lambda i: csim.align_face(frames[i], csim.five_points_from_68(landmarks[i])))

    @staticmethod
    def cosine(reference: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        from gohd_jax.eval import csim

        return csim.cosine_similarity(reference, embeddings)


@dataclasses.dataclass
class Networks:
    syncnet: SyncNetScorer | None = None
    inception: InceptionFeatures | None = None
    arcface: ArcFaceEmbedder | None = None
    estimators: Any = None  # data_pipelines.video.estimate.Estimators (Deep3DFaceRecon + L2CS)


def _load(kind: str, path, loader):
    try:
        return loader(path)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise WeightsError(f"--{kind} {path}: cannot be read as {kind} weights "
                           f"({' '.join(str(e).split())[:300]})") from None


def load_networks(*, syncnet=None, inception=None, arcface=None, deep3d=None, l2cs=None, lm3d=None,
                  batch_size: int = 32) -> Networks:
    """The networks whose files are given (paths or None) -> ``Networks``; ``WeightsError`` (one line)
    for a file that is not what it should be. The descriptor estimators need ``deep3d`` and
    ``l2cs`` (``lm3d`` is found beside ``deep3d`` when not given)."""
    nets = Networks()
    if deep3d or l2cs:
        from data_pipelines.video.estimate import Estimators
        from data_pipelines.video.faces import MissingModel

        try:
            nets.estimators = Estimators.from_files(deep3d, l2cs, lm3d, batch_size=batch_size)
        except MissingModel as e:
            raise WeightsError(str(e)) from None
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise WeightsError(f"--deep3d/--l2cs: cannot be read as the estimators' weights "
                               f"({' '.join(str(e).split())[:300]})") from None
    if syncnet:
        from gohd_jax.interop.syncnet_v2_weights import load_syncnet_v2

        nets.syncnet = SyncNetScorer(_load("syncnet", Path(syncnet), load_syncnet_v2), batch_size)
    if inception:
        from gohd_jax.interop.inception_weights import load_fid_inception

        nets.inception = InceptionFeatures(_load("inception", Path(inception), load_fid_inception), batch_size)
    if arcface:
        from gohd_jax.interop.arcface_weights import load_arcface

        nets.arcface = ArcFaceEmbedder(_load("arcface", Path(arcface), load_arcface), batch_size)
    return nets
