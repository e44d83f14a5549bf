"""The clip record: one talking-head clip, as stored in ArrayRecord shards.

One record holds one clip. The same schema serves the synthetic generator and
real preprocessed video. A record is a msgpack map ``{"v", "hash", "body"}``:
``body`` is the msgpack-packed field map below, ``hash`` the sha256 of ``body``
(the clip's content hash), ``v`` the schema version. Arrays are stored as
``{"dtype", "shape", "data"}`` maps of little-endian C-order bytes, so a record
is readable with nothing but msgpack and numpy.

Fields (T = number of video frames at 25 fps):

=================  ===========================  ==========================================
field              type / shape                 meaning
=================  ===========================  ==========================================
clip_id            str                          unique clip name
identity_id        str                          the person (held-out splits go by this)
source_id          str                          where it came from (``synthetic``, a video)
fps                int                          25
sample_rate        int                          16000
height, width      int                          frame size in pixels
frames             list of T bytes              JPEG-encoded RGB frames
audio              float32 [T*640]              mono waveform, 16 kHz, in [-1, 1]
descriptors        float32 [T, 72]              expression 64, Euler angles 3 (rad),
                                                translation 3, gaze 2 (rad)
controls           float32 [T, 21]              blink ratio 1, brow features 20
mel_80hz           float32 [1 + T*640//200, 80] Wav2Lip mel, 80 rows/s, in [-4, 4]
mel_100hz          float32 [1 + T*640//160, 80] AudioConfig mel, 100 rows/s, in [0, 1]
aux                map of str -> array [T,...]  optional per-frame ground truth
                                                (synthetic data: phonemes, blinks...)
=================  ===========================  ==========================================
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import msgpack
import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
DESCRIPTOR_DIM = 72
CONTROL_DIM = 21
MEL_BINS = 80

# Slices of the 72-d descriptor.
EXPRESSION = slice(0, 64)
ANGLES = slice(64, 67)
TRANSLATION = slice(67, 70)
POSE = slice(64, 70)
GAZE = slice(70, 72)

FIELDS: dict[str, str] = {
    "clip_id": "str: unique clip name",
    "identity_id": "str: the person; held-out splits go by this",
    "source_id": "str: origin (synthetic, or the source video)",
    "fps": "int: video frame rate, 25",
    "sample_rate": "int: audio sample rate, 16000",
    "height": "int: frame height in pixels",
    "width": "int: frame width in pixels",
    "frames": "list[bytes] [T]: JPEG-encoded RGB frames",
    "audio": "float32 [T*640]: mono waveform in [-1, 1]",
    "descriptors": "float32 [T,72]: expression 64, Euler angles 3 (rad), translation 3, gaze 2 (rad)",
    "controls": "float32 [T,21]: blink ratio 1, brow features 20",
    "mel_80hz": "float32 [1+T*640//200, 80]: Wav2Lip mel, 80 rows/s, [-4, 4]",
    "mel_100hz": "float32 [1+T*640//160, 80]: AudioConfig mel, 100 rows/s, [0, 1]",
    "aux": "dict[str, array [T,...]]: optional per-frame ground truth",
}


class BadRecordError(ValueError):
    """A record that cannot be decoded or whose fields disagree with each other."""


def _pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"__nd__": True, "dtype": a.dtype.newbyteorder("<").str, "shape": list(a.shape),
            "data": a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()}


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a clip record")


def _object_hook(obj: dict) -> Any:
    if obj.get("__nd__"):
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """Encodes one uint8 RGB frame [H,W,3] as JPEG bytes (4:2:0 above quality 90 is kept 4:4:4)."""
    buf = io.BytesIO()
    Image.fromarray(frame, mode="RGB").save(buf, format="JPEG", quality=int(quality),
                                            subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decodes JPEG bytes to uint8 RGB [H,W,3]."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def validate_clip(clip: dict, where: str = "clip") -> None:
    """Raises BadRecordError unless every field of ``clip`` agrees with the schema and the others."""
    missing = [k for k in ("clip_id", "identity_id", "frames", "audio", "descriptors", "controls",
                           "mel_80hz", "mel_100hz") if k not in clip]
    if missing:
        raise BadRecordError(f"{where}: missing fields {missing}")
    t = len(clip["frames"])
    name = f"{where} ({clip['clip_id']})"
    if t == 0:
        raise BadRecordError(f"{name}: no frames")
    checks = [
        ("audio", clip["audio"].shape, (t * SAMPLES_PER_FRAME,)),
        ("descriptors", clip["descriptors"].shape, (t, DESCRIPTOR_DIM)),
        ("controls", clip["controls"].shape, (t, CONTROL_DIM)),
        ("mel_80hz", clip["mel_80hz"].shape, (1 + t * SAMPLES_PER_FRAME // 200, MEL_BINS)),
        ("mel_100hz", clip["mel_100hz"].shape, (1 + t * SAMPLES_PER_FRAME // 160, MEL_BINS)),
    ]
    for field, got, want in checks:
        if tuple(got) != want:
            raise BadRecordError(f"{name}: {field} has shape {tuple(got)} but {t} frames need {want}")
    for field in ("audio", "descriptors", "controls", "mel_80hz", "mel_100hz"):
        if clip[field].dtype != np.float32:
            raise BadRecordError(f"{name}: {field} is {clip[field].dtype}, expected float32")
        if not np.all(np.isfinite(clip[field])):
            raise BadRecordError(f"{name}: {field} holds NaN or Inf")
    for key, arr in (clip.get("aux") or {}).items():
        if len(arr) != t:
            raise BadRecordError(f"{name}: aux[{key!r}] has {len(arr)} rows but the clip has {t} frames")


def encode_record(clip: dict) -> tuple[bytes, str]:
    """Serialises a clip (frames already JPEG bytes) -> (record bytes, content hash hex).

    ``clip`` needs every field of the schema table except fps/sample_rate/height/width,
    which are filled in. The clip is validated first.
    """
    validate_clip(clip)
    h, w = decode_jpeg(clip["frames"][0]).shape[:2]
    body_fields = {
        "clip_id": str(clip["clip_id"]), "identity_id": str(clip["identity_id"]),
        "source_id": str(clip.get("source_id", "")), "fps": FPS, "sample_rate": SAMPLE_RATE,
        "height": int(h), "width": int(w), "frames": [bytes(f) for f in clip["frames"]],
        **{k: np.asarray(clip[k], np.float32)
           for k in ("audio", "descriptors", "controls", "mel_80hz", "mel_100hz")},
        "aux": {k: np.asarray(v) for k, v in (clip.get("aux") or {}).items()},
    }
    body = msgpack.packb(body_fields, default=_default, use_bin_type=True)
    digest = hashlib.sha256(body).hexdigest()
    return msgpack.packb({"v": SCHEMA_VERSION, "hash": digest, "body": body}, use_bin_type=True), digest


def decode_record(data: bytes, where: str = "record", verify_hash: bool = False) -> dict:
    """Record bytes -> clip dict (frames stay JPEG bytes; arrays are read-only views).

    Raises BadRecordError with ``where`` in the message on any corruption.
    """
    try:
        outer = msgpack.unpackb(data, raw=False)
        if not isinstance(outer, dict) or "body" not in outer:
            raise ValueError("not a clip record")
        if outer.get("v") != SCHEMA_VERSION:
            raise BadRecordError(f"{where}: schema version {outer.get('v')}, this code reads "
                                 f"{SCHEMA_VERSION}; rewrite the dataset with this version")
        if verify_hash and hashlib.sha256(outer["body"]).hexdigest() != outer["hash"]:
            raise BadRecordError(f"{where}: content hash mismatch (the record is corrupted)")
        clip = msgpack.unpackb(outer["body"], raw=False, object_hook=_object_hook)
    except BadRecordError:
        raise
    except Exception as e:  # msgpack/numpy errors on corrupted bytes
        raise BadRecordError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None
    clip["content_hash"] = outer["hash"]
    validate_clip(clip, where)
    return clip


def decode_frames(clip: dict, indices) -> np.ndarray:
    """Decodes frames ``indices`` of a clip -> float32 [n,H,W,3] in [-1, 1]."""
    out = np.stack([decode_jpeg(clip["frames"][int(i)]) for i in np.atleast_1d(indices)])
    return out.astype(np.float32) / 127.5 - 1.0
