"""Where ``gohd-preprocess`` commits its work: a folder on this machine, or (through Apache Beam's
``FileSystems``, ``data_pipelines.video.beam``) any path Beam can write, ``gs://`` included.

Both drivers commit a video the same way: its ArrayRecord file, written first to a local
temporary file (ArrayRecord writes local files only), is put under ``videos/<key>.array_record``,
and then, last, its marker ``videos/<key>.array_record.done.json`` (records, drops, timing, the
file's size and SHA-256). A video counts as done only when its marker exists and the file it names
has the size the marker gives, so a process killed between the two (or in the middle of the copy)
leaves nothing the manifest lists: the video is redone by the next run.

Subclasses give five primitives on names relative to the output root: ``read``, ``write``
(atomic), ``size``, ``put`` (a local file in) and ``markers`` (the marker names there).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from data_pipelines import records

VIDEOS = "videos"
MARKER_SUFFIX = ".array_record.done.json"


def record_name(key: str) -> str:
    return f"{VIDEOS}/{key}.array_record"


def marker_name(key: str) -> str:
    return f"{VIDEOS}/{key}{MARKER_SUFFIX}"


class Output:
    """The output root of a preprocessing run (see the module docstring)."""

    root: str

    # ------------------------------------------------------------------ primitives
    def read(self, name: str) -> bytes | None:
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def size(self, name: str) -> int | None:
        raise NotImplementedError

    def put(self, local: Path, name: str) -> None:
        raise NotImplementedError

    def markers(self) -> list[str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared logic
    def read_json(self, name: str) -> dict | None:
        data = self.read(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def write_json(self, name: str, obj) -> None:
        self.write(name, json.dumps(obj, indent=1, sort_keys=True).encode())

    def done(self, key: str) -> dict | None:
        """The video's marker if it finished (its file present with the marker's size), else None."""
        m = self.read_json(marker_name(key))
        if m is None:
            return None
        if m.get("num_records", 0) and self.size(m["file"]) != m.get("bytes"):
            return None
        return m

    def commit(self, key: str, local_file: Path | None, marker: dict) -> None:
        """Puts the video's records (``local_file``; None for a video without clips) in place,
        then its marker, last."""
        if local_file is not None:
            self.put(local_file, marker["file"])
        self.write_json(marker_name(key), marker)

    def check_plan(self, plan: dict) -> None:
        """Writes ``plan.json``, or refuses an output written with other settings."""
        plan = json.loads(json.dumps(plan, sort_keys=True))
        old = self.read_json(records.PLAN)
        if old is None:
            self.write_json(records.PLAN, plan)
        elif old != plan:
            raise records.DatasetError(f"{self.root} holds clips preprocessed with other settings; choose "
                                       f"another --out or delete it")

    def finished_markers(self, known: dict[str, dict] | None = None) -> list[dict]:
        """Every finished video's marker, sorted by key; ``known`` (key -> marker, checked already)
        saves reading those again."""
        known = known or {}
        out = []
        for name in sorted(self.markers()):
            key = name[:-len(MARKER_SUFFIX)]
            m = known.get(key) if key in known else self.done(key)
            if m is not None:
                out.append(m)
        return out

    def write_manifest(self, plan: dict, *, known: dict[str, dict] | None = None,
                       errors: list[dict] | None = None) -> dict:
        """``manifest.json`` from every finished video's marker (plus this run's ``errors``:
        skips that are not committed, so that a rerun tries those videos again)."""
        markers = self.finished_markers(known)
        skipped = [s for m in markers for s in m["skipped"]] + list(errors or [])
        manifest = records.manifest_from_shards([m for m in markers if m["num_records"]], plan, skipped)
        self.write_json(records.MANIFEST, manifest)
        return manifest


class LocalOutput(Output):
    """A folder on this machine (atomic writes by rename)."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root)
        self.root = str(self.path)
        (self.path / VIDEOS).mkdir(parents=True, exist_ok=True)

    def read(self, name):
        p = self.path / name
        return p.read_bytes() if p.is_file() else None

    def write(self, name, data):
        tmp = self.path / f"{name}.{os.getpid()}.tmp"  # several processes may write one file
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)

    def size(self, name):
        p = self.path / name
        return p.stat().st_size if p.is_file() else None

    def put(self, local, name):
        dest = self.path / name
        if Path(local).parent == dest.parent:
            os.replace(local, dest)
        else:
            tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)

    def markers(self):
        return [p.name for p in (self.path / VIDEOS).glob(f"*{MARKER_SUFFIX}")]
