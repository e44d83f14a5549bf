"""Lip-sync scores of a clip with a trained SyncNet expert: AV offset, LSE-D and LSE-C.

As the public SyncNet evaluation (joonson/syncnet_python ``SyncNetInstance.evaluate``, which
Wav2Lip's LSE-D / LSE-C numbers come from), with our expert's embeddings in place of the
original SyncNet's:

* per frame t (with 2 frames of context on each side), the face embedding v_t of the mouth
  boxes (``SyncNetConfig.face_box``; Wav2Lip: the lower half) of frames t-2 .. t+2
  and the audio embedding a_t of the Wav2Lip mel window of frame t;
* for every offset k in [-vshift, vshift] (15 frames as there), the distance
  d_t(k) = |v_t - a_{t+k}|_2, where audio embeddings outside the clip are zero (as the
  reference's zero padding);
* mdist(k) = mean_t d_t(k); **offset** = the argmin k (positive: the audio is late; the
  reference reports vshift - argmin, i.e. the opposite sign); **LSE-D** = min_k mdist(k) (lower is
  better); **LSE-C** = median_k mdist(k) - min_k mdist(k) (higher is better).

Differences from the reference, by design: our expert's embeddings are L2-normalised (it is
trained with Wav2Lip's cosine BCE), so distances lie in [0, 2] and the numbers are not on the
scale of published LSE values; compare methods with the same expert only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_embeddings", "sync_scores", "VSHIFT"]

VSHIFT = 15


def _embed(model, mel, faces, face_size, face_box):
    from gohd_jax.models.syncnet import face_input

    return model(mel[..., None], face_input(faces, face_size, face_box), train=False)


_EMBED = None  # the jitted _embed, made on first use (one compile per model shape and batch size)


def clip_embeddings(model, mel_windows: np.ndarray, frames: np.ndarray, *, face_size=None,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(audio [T,D], face [T,D]) embeddings of a clip; ``mel_windows`` [T,80,16] (per frame),
    ``frames`` uint8 [T,H,W,3] whole face crops (the expert's ``cfg.face_box`` is
    taken here). Face windows at the clip's ends repeat the edge frames. Every batch is padded to
    ``batch_size`` rows, so clips of any length share one compilation."""
    global _EMBED
    import jax.numpy as jnp
    from flax import nnx

    if _EMBED is None:
        _EMBED = nnx.jit(_embed, static_argnames=("face_size", "face_box"))
    t = len(frames)
    if len(mel_windows) != t:
        raise ValueError(f"{len(mel_windows)} mel windows for {t} frames")
    face_size = tuple(face_size or model.cfg.face_size)
    idx = np.clip(np.arange(t)[:, None] + np.arange(-2, 3)[None], 0, t - 1)
    a_out, v_out = [], []
    for s in range(0, t, batch_size):
        rows = np.minimum(np.arange(s, s + batch_size), t - 1)  # the last batch repeats frame T-1
        a, v = _EMBED(model, jnp.asarray(mel_windows[rows], jnp.float32), jnp.asarray(frames[idx[rows]]),
                      face_size=face_size, face_box=tuple(model.cfg.face_box))
        n = min(batch_size, t - s)
        a_out.append(np.asarray(a)[:n])
        v_out.append(np.asarray(v)[:n])
    return np.concatenate(a_out), np.concatenate(v_out)


def sync_scores(audio_emb: np.ndarray, face_emb: np.ndarray, vshift: int = VSHIFT) -> dict[str, float]:
    """{"offset", "lse_d", "lse_c"} from per-frame embeddings [T,D] (see the module docstring)."""
    t, d = face_emb.shape
    padded = np.concatenate([np.zeros((vshift, d)), audio_emb, np.zeros((vshift, d))])
    offsets = np.arange(-vshift, vshift + 1)
    dists = np.stack([np.linalg.norm(face_emb - padded[vshift + k: vshift + k + t], axis=-1)
                      for k in offsets], axis=1)  # [T, 2 vshift + 1]
    mdist = dists.mean(axis=0)
    best = int(np.argmin(mdist))
    return {"offset": int(offsets[best]), "lse_d": float(mdist[best]),
            "lse_c": float(np.median(mdist) - mdist[best])}
