"""Golden batches: what every stage's pipeline yields on a fixed synthetic dataset, as sha256
digests, so that a change of the record layout can be shown to leave every sample unchanged.

``tests/fixtures/golden_batches.json`` holds the digests the schema-1 layout (one record per
clip) gave on 2026-12-06, recorded before the layout changed::

    python -m tests.golden_batches record DIR   # writes DIR (the dataset) and the JSON

The dataset: 6 synthetic clips of 4.4 s (110 frames: not a multiple of any time chunk) at 32 px,
4 identities, seed 7, 4 clips per shard.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "golden_batches.json"
NUM_CLIPS, CLIPS_PER_SHARD = 6, 4
CASES = {  # name -> (stage, split, make_dataset keyword arguments)
    "animator": ("animator", "all", {}),
    "motion_mel100": ("motion", "all", {"window": 50}),
    "motion_release": ("motion", "all", {"window": 50, "condition": "release"}),
    "motion_heldout": ("motion", "heldout", {"window": 30}),
    "expression": ("expression", "all", {"window": 30}),
    "sync_faces": ("sync", "all", {"sync_negatives": 3}),
    "sync_mouth": ("sync", "all", {"sync_faces": False, "sync_negatives": 2}),
}
BATCHES, BATCH_SIZE, SEED = 3, 4, 11


def synth_config():
    from data_pipelines.synthetic.generator import SynthConfig

    return SynthConfig(size=32, seconds=4.4, num_identities=4, seed=7)


def write(root) -> None:
    from data_pipelines.synthetic.cli import write_synthetic_dataset

    write_synthetic_dataset(root, synth_config(), NUM_CLIPS, clips_per_shard=CLIPS_PER_SHARD, workers=0)


def digest(batch: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        a = np.ascontiguousarray(batch[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def batch_digests(data) -> dict[str, list[str]]:
    """{case: [sha256 of batch 0, 1, 2]} for ``data`` (a dataset folder or clip source)."""
    from data_pipelines import pipelines

    out = {}
    for name, (stage, split, kw) in CASES.items():
        ds = pipelines.make_dataset(stage, data, seed=SEED, split=split, shard_index=0, shard_count=1, **kw)
        it = pipelines.make_iterator(ds, BATCH_SIZE)
        out[name] = [digest(next(it)) for _ in range(BATCHES)]
    return out


if __name__ == "__main__":
    if sys.argv[1:2] != ["record"] or len(sys.argv) != 3:
        sys.exit("usage: python -m tests.golden_batches record DIR")
    root = Path(sys.argv[2])
    write(root)
    FIXTURE.write_text(json.dumps(batch_digests(root), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
