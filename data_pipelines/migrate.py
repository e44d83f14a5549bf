"""``gohd-data migrate OLD NEW``: a schema-1 dataset (one record per clip) -> schema 2 (records per
time chunk and per frame, ``data_pipelines.schema``).

Each clip's arrays and JPEG bytes are carried over unchanged (no re-encoding), so every stage's
pipeline yields the same samples from NEW as it did from OLD for the same seed. NEW is written by
the usual writer: atomic shards with commit markers, resumable (rerun the same command), sha256 of
every shard and a content hash per clip in its manifest. OLD is only read (its hashes checked).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import msgpack

from data_pipelines import records, schema

V1 = 1


def decode_v1(data: bytes, where: str, want_hash: str) -> dict:
    """A schema-1 record (msgpack ``{"v": 1, "hash", "body"}``) -> the clip dict; its body's
    sha256 must be the record's hash and ``want_hash`` (the manifest's)."""
    try:
        outer = msgpack.unpackb(data, raw=False)
        if not isinstance(outer, dict) or outer.get("v") != V1 or "body" not in outer:
            raise ValueError("not a schema-1 clip record")
        if hashlib.sha256(outer["body"]).hexdigest() != outer["hash"]:
            raise ValueError("content hash mismatch (the record is corrupted)")
        if outer["hash"] != want_hash:
            raise ValueError("content hash differs from the manifest")
        return msgpack.unpackb(outer["body"], raw=False, object_hook=schema._object_hook)
    except Exception as e:
        raise schema.BadRecordError(f"{where}: {e}") from None


def read_v1_manifest(root: Path) -> dict:
    path = root / records.MANIFEST
    if not path.is_file():
        raise records.DatasetError(f"no {records.MANIFEST} in {root}: not a clip dataset")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != records.FORMAT:
        raise records.DatasetError(f"{path} is not a {records.FORMAT} manifest")
    version = manifest.get("schema_version")
    if version == schema.SCHEMA_VERSION:
        raise records.DatasetError(f"{root} is already schema {version}: nothing to migrate")
    if version != V1:
        raise records.DatasetError(f"{root} has schema version {version}; migrate converts schema {V1}")
    for shard in manifest["shards"]:
        f = root / shard["file"]
        if not f.is_file() or f.stat().st_size != shard["bytes"]:
            raise records.DatasetError(f"shard {f} is missing or not the size its manifest gives")
    return manifest


class V1Clips:
    """Picklable item source for the writer: item i -> the clip dict of OLD's record i."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.files = [str(root / s["file"]) for s in manifest["shards"] if s["num_records"]]
        self.where = [(s["file"], k, r["hash"]) for s in manifest["shards"] if s["num_records"]
                      for k, r in enumerate(s["records"])]
        self._source = None

    def __len__(self) -> int:
        return len(self.where)

    def __call__(self, i: int) -> dict:
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        if self._source is None:
            self._source = ArrayRecordDataSource(self.files)
        file, k, want = self.where[i]
        clip = decode_v1(self._source[i], f"record {k} of {file}", want)
        clip["frames"] = [bytes(f) for f in clip["frames"]]
        return clip

    def __getstate__(self):
        return dict(self.__dict__, _source=None)


def migrate(old: str | os.PathLike, new: str | os.PathLike, *, workers: int = 0, progress: bool = True) -> dict:
    """Writes OLD's clips to NEW in schema 2; returns NEW's manifest. Clips per shard, JPEG
    quality, dataset info and the skipped list carry over (``dataset.migrated_from`` records
    OLD's schema)."""
    old, new = Path(old), Path(new)
    if old.resolve() == new.resolve():
        raise records.DatasetError("NEW must be another folder than OLD (OLD is only read)")
    manifest = read_v1_manifest(old)
    source = V1Clips(old, manifest)
    per_shard = max([s["num_records"] for s in manifest["shards"]] or [1])
    info = dict(manifest.get("dataset") or {}, migrated_from=f"schema {V1}")
    out = records.write_dataset(new, len(source), source, clips_per_shard=per_shard,
                                jpeg_quality=int(manifest.get("jpeg_quality", 95)), workers=workers,
                                progress=progress, dataset_info=info, extra_skipped=manifest.get("skipped", []))
    if out["num_clips"] != len(source):
        raise records.DatasetError(f"{out['num_skipped'] - manifest.get('num_skipped', 0)} clips of {old} could "
                                   f"not be converted (reasons in {new / records.MANIFEST})")
    return out
