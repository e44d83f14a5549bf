"""A TFDS ArrayRecord data source seen as a clip source for the Grain pipelines."""

from __future__ import annotations

import logging

from data_pipelines import records, schema

log = logging.getLogger(__name__)


def record_features():
    """The features of a schema-2 TFDS builder: one example per clip record, in order; the header
    example of a clip (offset 0) carries its ids, frame count, record count and content hash (empty
    / 0 on the others)."""
    import numpy as np
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "record": tfds.features.Tensor(shape=(), dtype=np.object_),  # the record's bytes
        "offset": tfds.features.Scalar(np.int32),  # its place in its clip (0: the header)
        "clip_id": tfds.features.Text(), "identity_id": tfds.features.Text(),
        "content_hash": tfds.features.Text(), "num_frames": tfds.features.Scalar(np.int32),
        "record_count": tfds.features.Scalar(np.int32),
    })


def record_example(record: bytes, offset: int, entry: dict) -> dict:
    """One example of ``record_features``: a clip's record ``offset``; ``entry`` is the clip's
    manifest entry (``records.index_entry``)."""
    head = offset == 0
    return {"record": record, "offset": offset,
            "clip_id": entry["clip_id"] if head else "", "identity_id": entry["identity_id"] if head else "",
            "content_hash": entry["hash"] if head else "", "num_frames": entry["num_frames"] if head else 0,
            "record_count": entry["record_count"] if head else 0}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class TfdsClips:
    """Wraps ``tfds.data_source(name, split=...)`` of a schema-2 builder (one example per clip
    record, ``gohd_synthetic``) so that ``pipelines.make_dataset`` reads it like a
    ``ClipDataset``: ``clips.view(i)`` reads only the records a sample uses, ``clips[i]`` is the
    whole clip dict, and ``clips.index`` lists ``clip_id``, ``identity_id``, ``num_frames``.

    The index is built from the clips' header examples alone (one read per clip, jumping by
    each header's record count). TFDS splits are already by identity, so build pipelines with
    ``split="all"``.
    """

    def __init__(self, source, name: str = "tfds"):
        self.source = source
        self.root = name
        self.index: list[dict] = []
        self._first: list[int] = []
        p, n = 0, len(source)
        while p < n:
            ex = source[p]
            if int(ex["offset"]) != 0:
                raise records.DatasetError(f"{name}: example {p} is not a clip's header (offset {ex['offset']}); "
                                           f"build it with a schema-{schema.SCHEMA_VERSION} builder")
            count = int(ex["record_count"])
            if p + count > n:
                log.warning("%s: the last clip (%s) has %d of its %d records: left out", name,
                            _text(ex["clip_id"]), n - p, count)
                break
            self.index.append({"clip_id": _text(ex["clip_id"]), "identity_id": _text(ex["identity_id"]),
                               "num_frames": int(ex["num_frames"]), "hash": _text(ex["content_hash"]),
                               "first_record": 0, "record_count": count})
            self._first.append(p)
            p += count

    def __len__(self) -> int:
        return len(self.index)

    def location(self, i: int) -> tuple[str, int]:
        return self.root, self._first[i]

    def read(self, i: int, offsets) -> list[bytes]:
        """The bytes of clip ``i``'s records ``offsets`` (``records.ClipDataset.read``)."""
        data = [bytes(self.source[self._first[i] + int(o)]["record"]) for o in offsets]
        records._count_read(sum(len(d) for d in data))
        return data

    def view(self, i: int) -> records.RecordClip:
        return records.RecordClip(self, int(i))

    def __getitem__(self, i: int) -> dict:
        return self.view(i).load()

    def __repr__(self) -> str:
        return f"TfdsClips({self.root!r}, clips={len(self)})"
