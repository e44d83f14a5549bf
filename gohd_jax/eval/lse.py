"""LSE-D and LSE-C (a.k.a. Sync-D / Sync-C): syncnet_python's ``SyncNetInstance.evaluate`` on
``SyncNetV2`` (``gohd_jax.models.syncnet_v2``), batched and jitted.

The procedure, as evaluate runs it on one face track (video at 25 fps, audio at 16 kHz):

1. MFCC of the whole audio: ``python_speech_features.mfcc(audio, 16000)`` with its defaults
   (25 ms windows every 10 ms, i.e. 100 MFCC frames a second; 26 mel filters, NFFT 512,
   pre-emphasis 0.97, lifter 22, c0 replaced by the log frame energy), on the **int16** samples
   as ``scipy.io.wavfile`` reads them (no scaling to [-1, 1]), in float64 -> [13, T_mfcc];
   then cast to float32 for the network.
2. ``min_length = min(video frames, floor(audio samples / 640))`` (640 samples = one 25 fps
   frame) and ``N = min_length - 5`` windows (evaluate's ``lastframe``; note that this drops
   the last possible 5-frame window). Window i is video frames ``i .. i+4`` and MFCC frames
   ``4i .. 4i+19`` (0.2 s each). Our embedding batches have a fixed size (default 20, as
   run_syncnet.py's ``--batch_size``); the last one is padded by repeating its last window and
   the padding is dropped, so a clip of any length compiles the network once per batch size.
3. Embeddings: ``im_feat = embed_lip(windows)``, ``cc_feat = embed_audio(windows)``, [N, 1024].
4. ``calc_pdist``: the audio features are padded with ``vshift`` zero rows at both ends, and
   ``dists[i, k] = || im_feat[i] - cc_pad[i + k] + 1e-6 ||_2`` for k = 0 .. 2*vshift (torch's
   ``pairwise_distance`` adds eps = 1e-6 to the difference), i.e. video window i against audio
   window ``i + k - vshift`` (a zero vector outside the clip) -> [N, 2*vshift+1].
5. ``mdist = mean_i dists`` [2*vshift+1]; **LSE-D** = ``min(mdist)``; ``minidx = argmin``;
   ``median`` = torch's median of mdist (the lower middle value; mdist has an odd length);
   **LSE-C** = ``median - min``; **AV offset** = ``vshift - minidx`` (frames; positive when the
   best match pairs video window i with audio window i - offset, i.e. the audio leads).
6. Framewise confidence: ``scipy.signal.medfilt(median - dists[:, minidx], 9)`` (zero padded at
   the ends), [N]. evaluate prints it; the oracle stores it.

Face crops: what syncnet_python feeds evaluate, and what a caller must pass here.
``run_pipeline.py`` converts the video to 25 fps (``ffmpeg -r 25``) and the audio to 16 kHz
mono int16, runs the S3FD face detector on every frame (``facedet_scale`` 0.25, confidence
0.9), splits shots with PySceneDetect, links detections into tracks (IoU > 0.5, at most 25
missed frames, at least ``min_track`` = 100 frames, mean face size > 100 px; boxes linearly
interpolated), smooths each track's box centre and half-size ``s = max(w, h) / 2`` with a
13-frame median filter, and crops with ``cs = crop_scale = 0.4``: after padding the frame with
the value 110, the square rows ``[cy - s, cy + s (1 + 2 cs))``, columns ``[cx - s (1 + cs),
cx + s (1 + cs))`` (side 2.8 s: 1.4 times the face box, extended downward to take in the mouth
and chin), resized with ``cv2.resize`` to 224 x 224, written as an XVID .avi with the track's
audio. evaluate then decodes that file to JPEGs with ffmpeg and reads them with ``cv2.imread``:
**the tensor the network sees holds BGR frames**, raw 0..255 values (the oracle's
``lse_video`` is that tensor, and its face pixels have the red channel last).

We do not run S3FD: the caller feeds face crops from our own face track. Pass ``frames`` uint8
[T, 224, 224, 3] at 25 fps, one crop per frame, framed as above (the square 1.4x face box
extended downward, mouth and chin inside), and ``audio`` at 16 kHz mono, aligned with frame 0.
``channel_order`` says what the frames hold: ``"rgb"`` (default; our pipeline's order) is
flipped to BGR here, ``"bgr"`` (frames as cv2 reads them) is used as is. Float audio is taken
as [-1, 1] and converted to int16 as ffmpeg's ``pcm_s16le`` does (``clip(rint(x * 32768))``),
since the MFCC's c0 depends on the sample scale.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["LSEResult", "lse_scores", "mfcc", "audio_int16", "num_windows", "embed_windows", "window_batch",
           "sync_distances", "VSHIFT", "BATCH_SIZE", "SAMPLE_RATE", "FPS", "SAMPLES_PER_FRAME",
           "CROP_SIZE", "WINDOW_FRAMES", "MFCC_PER_FRAME", "MFCC_WINDOW"]

VSHIFT = 15  # run_syncnet.py's --vshift default
BATCH_SIZE = 20  # run_syncnet.py's --batch_size default
SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
CROP_SIZE = 224
WINDOW_FRAMES = 5
MFCC_PER_FRAME = 4  # 100 MFCC frames a second / 25 fps
MFCC_WINDOW = 20
MEDFILT = 9  # the framewise confidence's median filter


@dataclasses.dataclass(frozen=True)
class LSEResult:
    """One clip's scores and the intermediates of the procedure (module docstring, steps 1-6).

    lse_c: LSE-C = median - min of mdist (higher is better). lse_d: LSE-D = min of mdist (lower is
    better). offset: AV offset in frames, ``vshift - minidx``. framewise_conf: [N] float32.
    mfcc: [13, T_mfcc] float64. im_feat, cc_feat: [N, 1024] float32. dists: [N, 2*vshift+1]
    float32. mdist: [2*vshift+1]. minidx: argmin of mdist. median: median of mdist.
    """
    lse_c: float
    lse_d: float
    offset: int
    framewise_conf: np.ndarray
    mfcc: np.ndarray
    im_feat: np.ndarray
    cc_feat: np.ndarray
    dists: np.ndarray
    mdist: np.ndarray
    minidx: int
    median: float
    vshift: int

    @property
    def num_windows(self) -> int:
        return int(self.dists.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The procedure's arrays under the oracle's names (without the ``lse_`` prefix)."""
        f32 = np.float32
        return {"mfcc": self.mfcc, "cct": self.mfcc.astype(f32)[None, None],
                "im_feat": self.im_feat, "cc_feat": self.cc_feat, "dists": self.dists,
                "mdist": self.mdist, "min_dist": np.asarray(self.lse_d, f32),
                "minidx": np.asarray(self.minidx, np.int64), "median": np.asarray(self.median, f32),
                "conf": np.asarray(self.lse_c, f32), "offset": np.asarray(self.offset, np.int64),
                "framewise_conf": self.framewise_conf}


def audio_int16(audio) -> np.ndarray:
    """16 kHz mono samples -> int16 as evaluate reads them: int16 kept; float taken as [-1, 1]
    and converted as ffmpeg's pcm_s16le (``clip(rint(x * 32768), -32768, 32767)``)."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be mono samples [N], got shape {a.shape}")
    if a.dtype == np.int16:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return np.clip(np.rint(a.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    raise TypeError(f"audio must be int16 or float in [-1, 1], got {a.dtype}")


def mfcc(audio) -> np.ndarray:
    """evaluate's MFCC: ``python_speech_features.mfcc(int16 audio, 16000)`` transposed ->
    float64 [13, T_mfcc], T_mfcc = 1 + ceil((N - 400) / 160) (1 when N <= 400)."""
    try:
        import python_speech_features
    except ImportError as e:  # an optional dependency (the "eval" extra)
        raise ImportError("LSE needs python_speech_features (pip install 'gohd-jax[eval]')") from e
    return np.ascontiguousarray(python_speech_features.mfcc(audio_int16(audio), SAMPLE_RATE).T)


def num_windows(num_frames: int, num_samples: int) -> int:
    """evaluate's window count: ``min(frames, floor(samples / 640)) - 5``."""
    return min(int(num_frames), int(num_samples) // SAMPLES_PER_FRAME) - WINDOW_FRAMES


@functools.partial(jax.jit, static_argnums=(0, 4))
def _embed_batch(graphdef, state, frames, mfcc_windows, flip: bool):
    model = nnx.merge(graphdef, state)
    x = frames.astype(jnp.float32)
    if flip:
        x = x[..., ::-1]
    return model.embed_lip(x), model.embed_audio(mfcc_windows)


def window_batch(frames: np.ndarray, mfcc32: np.ndarray, idx) -> tuple[np.ndarray, np.ndarray]:
    """The network inputs of windows ``idx`` [B]: (video uint8 [B,5,224,224,3] = frames i..i+4,
    MFCC float32 [B,13,20,1] = MFCC frames 4i..4i+19), from frames [T,224,224,3] and mfcc32
    [13, T_mfcc]. (For callers that batch the two streams themselves; channel order unchanged.)"""
    idx = np.asarray(idx)
    video = frames[idx[:, None] + np.arange(WINDOW_FRAMES)]
    audio = mfcc32[:, MFCC_PER_FRAME * idx[:, None] + np.arange(MFCC_WINDOW)]  # [13,B,20]
    return video, np.ascontiguousarray(audio.transpose(1, 0, 2)[..., None], dtype=np.float32)


def embed_windows(model, frames: np.ndarray, mfcc32: np.ndarray, n: int, *,
                  batch_size: int = BATCH_SIZE, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(im_feat, cc_feat), each [n, D], of windows 0 .. n-1: frames uint8 [T,224,224,3] (the
    channel order the network gets, after ``flip`` of the last axis), mfcc32 float32 [13, T_mfcc].
    Fixed-size batches (the last padded by repetition), one compilation per batch size."""
    graphdef, state = nnx.split(model)
    ims, ccs = [], []
    for s in range(0, n, batch_size):
        win_v, win_a = window_batch(frames, mfcc32, np.minimum(np.arange(s, s + batch_size), n - 1))
        im, cc = _embed_batch(graphdef, state, jnp.asarray(win_v), jnp.asarray(win_a), bool(flip))
        keep = min(batch_size, n - s)
        ims.append(im[:keep])
        ccs.append(cc[:keep])
    return np.asarray(jnp.concatenate(ims)), np.asarray(jnp.concatenate(ccs))


def _distances(im_feat: np.ndarray, cc_feat: np.ndarray, vshift: int) -> dict[str, np.ndarray]:
    """Steps 4-6 in float32 numpy: a few MFLOPs per clip, so no jit (a jitted form compiled once
    per clip length)."""
    from scipy.signal import medfilt

    n = im_feat.shape[0]
    ccp = np.pad(cc_feat, ((vshift, vshift), (0, 0)))
    dists = np.stack([np.sqrt(np.sum(np.square(im_feat - ccp[k:k + n] + np.float32(1e-6)), axis=1))
                      for k in range(2 * vshift + 1)], axis=1)  # [N, 2 vshift + 1]
    mdist = dists.mean(axis=0)
    minidx = int(np.argmin(mdist))
    min_dist = mdist[minidx]
    median = np.sort(mdist)[vshift]  # torch.median: the lower middle value (odd length: the middle)
    with warnings.catch_warnings():  # under 9 windows scipy warns that it zero-pads: as evaluate does
        warnings.simplefilter("ignore", UserWarning)
        framewise = medfilt(median - dists[:, minidx], MEDFILT).astype(np.float32)
    return dict(dists=dists, mdist=mdist, minidx=np.int64(minidx), min_dist=min_dist, median=median,
                conf=median - min_dist, offset=np.int64(vshift - minidx), framewise_conf=framewise)


def sync_distances(im_feat, cc_feat, *, vshift: int = VSHIFT) -> dict[str, np.ndarray]:
    """Steps 4-6 on features [N, D] (video, audio): {dists [N, 2v+1], mdist, minidx, min_dist
    (LSE-D), median, conf (LSE-C), offset, framewise_conf [N]} as numpy."""
    im_feat, cc_feat = np.asarray(im_feat, np.float32), np.asarray(cc_feat, np.float32)
    if im_feat.ndim != 2 or im_feat.shape != cc_feat.shape or len(im_feat) < 1:
        raise ValueError(f"features must be two [N, D] arrays of one shape with N >= 1, got "
                         f"{im_feat.shape} and {cc_feat.shape}")
    if int(vshift) != vshift or vshift < 0:
        raise ValueError(f"vshift must be an integer >= 0, got {vshift}")
    return {k: np.asarray(v) for k, v in _distances(im_feat, cc_feat, int(vshift)).items()}


def lse_scores(model, frames: np.ndarray, audio: np.ndarray, *, vshift: int = VSHIFT,
               batch_size: int = BATCH_SIZE, channel_order: str = "rgb") -> LSEResult:
    """LSE-C, LSE-D, AV offset and framewise confidence of one face track.

    model: ``SyncNetV2`` (``interop.syncnet_v2_weights.load_syncnet_v2('syncnet_v2.model')``).
    frames: uint8 [T, 224, 224, 3], 25 fps face crops (module docstring), ``channel_order``
    "rgb" (default) or "bgr". audio: [N] at 16 kHz, int16 or float in [-1, 1], starting with
    frame 0. Needs ``min(T, N // 640) >= 6`` (evaluate's ``min_length - 5`` windows).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"frames must be face crops [T, {CROP_SIZE}, {CROP_SIZE}, 3], got shape "
                         f"{frames.shape}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (0..255), got {frames.dtype}")
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if int(vshift) != vshift or vshift < 0:
        raise ValueError(f"vshift must be an integer >= 0, got {vshift}")
    pcm = audio_int16(audio)
    n = num_windows(len(frames), len(pcm))
    if n < 1:
        raise ValueError(f"LSE needs at least {WINDOW_FRAMES + 1} frames of video and of audio "
                         f"({SAMPLES_PER_FRAME} samples each at 16 kHz); got {len(frames)} frames "
                         f"and {len(pcm)} samples")
    cc = mfcc(pcm)
    im_feat, cc_feat = embed_windows(model, frames, cc.astype(np.float32), n, batch_size=int(batch_size),
                                     flip=channel_order == "rgb")
    s = sync_distances(im_feat, cc_feat, vshift=int(vshift))
    return LSEResult(lse_c=float(s["conf"]), lse_d=float(s["min_dist"]), offset=int(s["offset"]),
                     framewise_conf=s["framewise_conf"], mfcc=cc, im_feat=im_feat, cc_feat=cc_feat,
                     dists=s["dists"], mdist=s["mdist"], minidx=int(s["minidx"]),
                     median=float(s["median"]), vshift=int(vshift))
