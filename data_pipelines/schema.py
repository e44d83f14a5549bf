"""The clip records: one talking-head clip, as stored in ArrayRecord shards (schema 2).

The clip is the unit of the manifest and of identity splits, but not of reading: a clip is a run
of records in its shard, so that a sample reads only what it uses, and its bytes do not grow
with the clip's length.

* one **header** record: ids, frame size, frame count;
* for every **time chunk** of ``CHUNK_FRAMES`` frames (2 s), one record per **group**:
  ``per_frame`` (descriptors, controls, aux), ``mel_80hz``, ``mel_100hz``, ``audio``;
* one record per **frame**: its JPEG bytes, nothing else.

``ClipLayout`` gives each record's offset from the clip's first; the manifest gives each clip's
first record (``first_record``) and count (``record_count``), so a reader needs no header to find
a chunk or a frame. Header and chunk records are msgpack maps with ``v`` (the schema version) and
``kind``; arrays are ``{"dtype", "shape", "data"}`` maps of little-endian C-order bytes, so a
record is readable with nothing but msgpack and numpy. The clip's content hash is sha256 over its
records (``records_digest``). Schema 1 (one record per clip) converts with ``gohd-data migrate``.

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

import dataclasses
import hashlib
import io
from typing import Any

import msgpack
import numpy as np
from PIL import Image

SCHEMA_VERSION = 2
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

# Time chunks: 50 frames = 2 s = 32,000 samples = 160 rows at 80 Hz = 200 rows at 100 Hz.
CHUNK_FRAMES = 50
GROUPS = ("per_frame", "mel_80hz", "mel_100hz", "audio")
GROUP_FIELDS = {"per_frame": ("descriptors", "controls"), "mel_80hz": ("mel_80hz",),
                "mel_100hz": ("mel_100hz",), "audio": ("audio",)}
FIELD_GROUP = {f: g for g, fs in GROUP_FIELDS.items() for f in fs}
TIME_FIELDS = ("audio", "descriptors", "controls", "mel_80hz", "mel_100hz")
FIELD_TAIL = {"audio": (), "descriptors": (DESCRIPTOR_DIM,), "controls": (CONTROL_DIM,),
              "mel_80hz": (MEL_BINS,), "mel_100hz": (MEL_BINS,)}
ROWS_PER_CHUNK = {"per_frame": CHUNK_FRAMES, "audio": CHUNK_FRAMES * SAMPLES_PER_FRAME,
                  "mel_80hz": CHUNK_FRAMES * SAMPLES_PER_FRAME // 200,
                  "mel_100hz": CHUNK_FRAMES * SAMPLES_PER_FRAME // 160}


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
    for field in TIME_FIELDS:
        got, want = tuple(np.shape(clip[field])), (num_rows(field, t), *FIELD_TAIL[field])
        if got != want:
            raise BadRecordError(f"{name}: {field} has shape {got} but {t} frames need {want}")
        if clip[field].dtype != np.float32:
            raise BadRecordError(f"{name}: {field} is {clip[field].dtype}, expected float32")
        if not np.all(np.isfinite(clip[field])):
            raise BadRecordError(f"{name}: {field} holds NaN or Inf")
    for key, arr in (clip.get("aux") or {}).items():
        if len(arr) != t:
            raise BadRecordError(f"{name}: aux[{key!r}] has {len(arr)} rows but the clip has {t} frames")


# ----------------------------------------------------------------------------- time chunks

def num_rows(field: str, num_frames: int) -> int:
    """Rows of a time field for a clip of ``num_frames`` frames (``aux/<key>``: one per frame)."""
    group = FIELD_GROUP.get(field, "per_frame")
    t = int(num_frames)
    return {"per_frame": t, "audio": t * SAMPLES_PER_FRAME, "mel_80hz": 1 + t * SAMPLES_PER_FRAME // 200,
            "mel_100hz": 1 + t * SAMPLES_PER_FRAME // 160}[group]


@dataclasses.dataclass(frozen=True)
class ClipLayout:
    """Where a clip's records sit among its shard's records, from its first one (offset 0): the
    header, then for each time chunk k one record per group (``GROUPS`` order), then one record
    per frame. Chunk k holds rows ``[k R, (k + 1) R)`` of each group (R = ``ROWS_PER_CHUNK``); the
    last chunk holds the rest (the mels' extra row included)."""

    num_frames: int

    @property
    def num_chunks(self) -> int:
        return -(-self.num_frames // CHUNK_FRAMES)

    @property
    def num_records(self) -> int:
        return 1 + self.num_chunks * len(GROUPS) + self.num_frames

    def chunk_record(self, k: int, group: str) -> int:
        return 1 + int(k) * len(GROUPS) + GROUPS.index(group)

    def frame_record(self, i: int) -> int:
        return 1 + self.num_chunks * len(GROUPS) + int(i)

    def chunk_of(self, group: str, rows: np.ndarray) -> np.ndarray:
        return np.minimum(np.asarray(rows) // ROWS_PER_CHUNK[group], self.num_chunks - 1)

    def chunk_rows(self, group: str, k: int) -> tuple[int, int]:
        lo = int(k) * ROWS_PER_CHUNK[group]
        field = GROUP_FIELDS[group][0]
        hi = num_rows(field, self.num_frames) if k == self.num_chunks - 1 else lo + ROWS_PER_CHUNK[group]
        return lo, hi


def _pack(obj: dict) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def _group_arrays(clip: dict, group: str) -> dict[str, np.ndarray]:
    if group != "per_frame":
        return {group: np.asarray(clip[group], np.float32)}
    out = {k: np.asarray(clip[k], np.float32) for k in GROUP_FIELDS["per_frame"]}
    out.update({f"aux/{k}": np.asarray(v) for k, v in (clip.get("aux") or {}).items()})
    return out


def encode_clip(clip: dict) -> tuple[list[bytes], str]:
    """Serialises a clip (frames already JPEG bytes) -> (its records in ``ClipLayout`` order,
    content hash hex: sha256 over the records, each preceded by its length).

    ``clip`` needs every field of the schema table except fps/sample_rate/height/width,
    which are filled in. The clip is validated first.
    """
    validate_clip(clip)
    t = len(clip["frames"])
    h, w = decode_jpeg(clip["frames"][0]).shape[:2]
    layout = ClipLayout(t)
    aux = {k: np.asarray(v) for k, v in (clip.get("aux") or {}).items()}
    header = {"v": SCHEMA_VERSION, "kind": "header", "clip_id": str(clip["clip_id"]),
              "identity_id": str(clip["identity_id"]), "source_id": str(clip.get("source_id", "")),
              "fps": FPS, "sample_rate": SAMPLE_RATE, "height": int(h), "width": int(w), "num_frames": t,
              "chunk_frames": CHUNK_FRAMES,
              "aux": {k: {"dtype": a.dtype.newbyteorder("<").str, "shape": list(a.shape[1:])} for k, a in aux.items()}}
    arrays = {group: _group_arrays(clip, group) for group in GROUPS}
    out = [_pack(header)]
    for k in range(layout.num_chunks):
        for group in GROUPS:
            lo, hi = layout.chunk_rows(group, k)
            fields = {name: a[lo:hi] for name, a in arrays[group].items()}
            out.append(_pack({"v": SCHEMA_VERSION, "kind": group, "chunk": k, "fields": fields}))
    out.extend(bytes(f) for f in clip["frames"])
    return out, records_digest(out)


def records_digest(recs) -> str:
    """The content hash of a clip: sha256 over its records, each preceded by its length (8 bytes)."""
    h = hashlib.sha256()
    for r in recs:
        h.update(len(r).to_bytes(8, "little"))
        h.update(r)
    return h.hexdigest()


def _unpack(data: bytes, where: str, kind: str) -> dict:
    try:
        obj = msgpack.unpackb(data, raw=False, object_hook=_object_hook)
    except Exception as e:  # msgpack/numpy errors on corrupted bytes
        raise BadRecordError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("v") != SCHEMA_VERSION or obj.get("kind") != kind:
        got = (obj.get("v"), obj.get("kind")) if isinstance(obj, dict) else type(obj).__name__
        raise BadRecordError(f"{where}: expected a schema-{SCHEMA_VERSION} {kind} record, got {got}")
    return obj


def decode_header(data: bytes, where: str = "header record") -> dict:
    """A clip's header record -> {clip_id, identity_id, source_id, fps, sample_rate, height, width,
    num_frames, chunk_frames, aux}."""
    h = _unpack(data, where, "header")
    if h.get("chunk_frames") != CHUNK_FRAMES:
        raise BadRecordError(f"{where}: chunks of {h.get('chunk_frames')} frames, this code reads {CHUNK_FRAMES}")
    return h


def decode_chunk(data: bytes, group: str, k: int, num_frames: int, where: str = "chunk record") -> dict:
    """Chunk ``k`` of ``group`` -> {field: array of the chunk's rows}, each checked against the
    shape the clip's length gives, float32 and finite (aux arrays: row count only)."""
    obj = _unpack(data, where, group)
    if obj.get("chunk") != k:
        raise BadRecordError(f"{where}: holds chunk {obj.get('chunk')}, expected {k}")
    lo, hi = ClipLayout(num_frames).chunk_rows(group, k)
    fields = obj["fields"]
    for name in GROUP_FIELDS[group]:
        a = fields.get(name)
        want = (hi - lo, *FIELD_TAIL[name])
        if a is None or tuple(a.shape) != want:
            raise BadRecordError(f"{where}: {name} has shape {None if a is None else tuple(a.shape)}, expected {want}")
        if a.dtype != np.float32 or not np.all(np.isfinite(a)):
            raise BadRecordError(f"{where}: {name} is not finite float32")
    for name, a in fields.items():
        if name.startswith("aux/") and len(a) != hi - lo:
            raise BadRecordError(f"{where}: {name} has {len(a)} rows, expected {hi - lo}")
    return fields


class DictClip:
    """A whole clip dict (``decode``d, or from TFDS) seen through the interface the samplers read:
    ``num_frames``, ``clip_id``, ``num_rows(field)``, ``rows(field, idx)``, ``frame(i)`` (JPEG
    bytes), ``frames(indices)``. Fields: the schema's time fields and ``aux/<key>``."""

    def __init__(self, clip: dict):
        self.clip = clip
        self.clip_id = str(clip["clip_id"])
        self.num_frames = len(clip["frames"])

    def _array(self, field: str) -> np.ndarray:
        if field.startswith("aux/"):
            return np.asarray(self.clip["aux"][field[4:]])
        return np.asarray(self.clip[field])

    def num_rows(self, field: str) -> int:
        return len(self._array(field))

    def rows(self, field: str, idx) -> np.ndarray:
        return self._array(field)[np.asarray(idx)]

    def frame(self, i: int) -> bytes:
        return self.clip["frames"][int(i)]

    def frames(self, indices) -> list[bytes]:
        return [self.frame(i) for i in indices]


def decode_frames(clip: dict, indices) -> np.ndarray:
    """Decodes frames ``indices`` of a clip dict -> float32 [n,H,W,3] in [-1, 1]."""
    out = np.stack([decode_jpeg(clip["frames"][int(i)]) for i in np.atleast_1d(indices)])
    return out.astype(np.float32) / 127.5 - 1.0
