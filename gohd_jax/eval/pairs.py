"""Which clips ``gohd-eval`` compares: generated videos, the real videos and source portraits that go
with them, matched by file name.

* Folders: every video in ``--generated`` (sorted by name); its real video is the file of
  ``--real`` with the same stem (``clip7.mp4`` <-> ``clip7.avi``), its source portrait the image
  of ``--sources`` with the same stem. A generated clip without a real one is still scored (LSE,
  CSIM) and left out of PSNR/SSIM; real videos without a generated one still count for FID's real
  set.
* A ``gohd animate --manifest`` CSV: its ``out`` column gives the generated videos (relative paths
  are relative to the CSV's folder, as ``gohd animate`` reads them), ``image`` the source
  portraits; real videos, when given, again come from ``--real`` by stem.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

__all__ = ["Pair", "pairs_from_dirs", "pairs_from_manifest", "real_only", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str               # the generated clip's stem (rows of the report)
    generated: Path
    real: Path | None = None
    source: Path | None = None


def _videos(folder: Path) -> dict[str, Path]:
    from data_pipelines.video.decode import VIDEO_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS}


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def pairs_from_dirs(generated: str | Path, real: str | Path | None = None,
                    sources: str | Path | None = None) -> list[Pair]:
    gen = _videos(Path(generated))
    if not gen:
        raise FileNotFoundError(f"{generated}: no videos (looked for .mp4, .avi, .mkv, ...)")
    reals = _videos(Path(real)) if real else {}
    srcs = _images(Path(sources)) if sources else {}
    return [Pair(name, path, reals.get(name), srcs.get(name)) for name, path in gen.items()]


def pairs_from_manifest(manifest: str | Path, real: str | Path | None = None) -> list[Pair]:
    manifest = Path(manifest)
    base = manifest.parent
    reals = _videos(Path(real)) if real else {}
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "out"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{manifest}: not a gohd animate manifest (no column {', '.join(sorted(missing))})")
        pairs = []
        for row in reader:
            out = Path(row["out"]) if Path(row["out"]).is_absolute() else base / row["out"]
            image = Path(row["image"]) if Path(row["image"]).is_absolute() else base / row["image"]
            pairs.append(Pair(out.stem, out, reals.get(out.stem), image))
    if not pairs:
        raise ValueError(f"{manifest}: no rows")
    return pairs


def real_only(real: str | Path | None, pairs: list[Pair]) -> list[Path]:
    """Real videos with no generated clip of the same name (FID's real set only)."""
    if not real:
        return []
    paired = {p.real for p in pairs if p.real is not None}
    return [p for p in _videos(Path(real)).values() if p not in paired]
