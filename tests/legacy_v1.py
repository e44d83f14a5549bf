"""A schema-1 dataset writer (one msgpack record per clip, as the project wrote until 2026-12-06),
kept in the tests only: it makes the old datasets that ``gohd-data migrate`` converts. Its output
is pinned by ``tests/fixtures/golden_batches.json`` (recorded with the schema-1 code itself):
migrating what it writes must give those batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
import numpy as np

from data_pipelines import records, schema


def encode_v1(clip: dict) -> tuple[bytes, str]:
    h, w = schema.decode_jpeg(clip["frames"][0]).shape[:2]
    body = {"clip_id": str(clip["clip_id"]), "identity_id": str(clip["identity_id"]),
            "source_id": str(clip.get("source_id", "")), "fps": schema.FPS, "sample_rate": schema.SAMPLE_RATE,
            "height": int(h), "width": int(w), "frames": [bytes(f) for f in clip["frames"]],
            **{k: np.asarray(clip[k], np.float32) for k in schema.TIME_FIELDS},
            "aux": {k: np.asarray(v) for k, v in (clip.get("aux") or {}).items()}}
    packed = msgpack.packb(body, default=schema._default, use_bin_type=True)
    digest = hashlib.sha256(packed).hexdigest()
    return msgpack.packb({"v": 1, "hash": digest, "body": packed}, use_bin_type=True), digest


def write_v1(root: Path, clips: list[dict], clips_per_shard: int, dataset: dict | None = None) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    root.mkdir(parents=True)
    n = -(-len(clips) // clips_per_shard)
    shards = []
    for j in range(n):
        name = records.shard_name(j, n)
        writer = ArrayRecordWriter(str(root / name), "group_size:1,snappy")
        entries = []
        for clip in clips[j * clips_per_shard:(j + 1) * clips_per_shard]:
            data, digest = encode_v1(clip)
            writer.write(data)
            entries.append({"clip_id": clip["clip_id"], "identity_id": clip["identity_id"],
                            "num_frames": len(clip["frames"]), "hash": digest})
        writer.close()
        shards.append({"file": name, "num_records": len(entries), "bytes": (root / name).stat().st_size,
                       "sha256": records._sha256_file(root / name), "records": entries})
    frames = sum(len(c["frames"]) for c in clips)
    (root / records.MANIFEST).write_text(json.dumps({
        "format": records.FORMAT, "schema_version": 1, "dataset": dataset or {}, "jpeg_quality": 95,
        "num_clips": len(clips), "num_frames": frames, "seconds": frames / schema.FPS,
        "num_identities": len({c["identity_id"] for c in clips}), "num_skipped": 0, "skipped": [],
        "shards": shards}))
