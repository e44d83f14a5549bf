"""A TFDS ArrayRecord data source seen as a clip source for the Grain pipelines."""

from __future__ import annotations

import numpy as np

from data_pipelines import schema

_TEXT = ("clip_id", "identity_id", "source_id")


class TfdsClips:
    """Wraps ``tfds.data_source(name, split=...)`` so that ``pipelines.make_dataset``
    reads it like a ``ClipDataset``: ``clips[i]`` is a clip dict in the schema's
    form and ``clips.index`` lists ``clip_id``, ``identity_id``, ``num_frames``.

    TFDS splits are already by identity, so build pipelines with ``split="all"``.
    """

    def __init__(self, source, name: str = "tfds"):
        self.source = source
        self.root = name
        self.index = []
        for i in range(len(source)):
            meta = self._meta(source[i])
            self.index.append(meta)

    @staticmethod
    def _text(v) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _meta(self, ex) -> dict:
        return {"clip_id": self._text(ex["clip_id"]), "identity_id": self._text(ex["identity_id"]),
                "num_frames": len(ex["frames"]), "hash": self._text(ex["content_hash"])}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        ex = dict(self.source[int(i)])
        for k in (*_TEXT, "content_hash"):
            ex[k] = self._text(ex[k])
        ex["frames"] = [bytes(f) for f in ex["frames"]]
        ex["aux"] = {k[len("aux_"):]: np.asarray(ex.pop(k)) for k in list(ex) if k.startswith("aux_")}
        schema.validate_clip(ex, f"tfds record {i}")
        return ex

    def __repr__(self) -> str:
        return f"TfdsClips({self.root!r}, clips={len(self)})"
