"""The TFDS builder of the synthetic dataset: built without TensorFlow, read by Grain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

BUILDER = Path(__file__).resolve().parent.parent / "data_pipelines" / "tfds" / "gohd_synthetic"


def test_build_without_tensorflow_and_read_with_grain(tmp_path):
    cmd = [sys.executable, "-c",
           "import sys; from data_pipelines.tfds.cli import main; rc = main(sys.argv[1:]); "
           "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; sys.exit(rc)",
           "build", str(BUILDER), "--config=tiny", f"--data_dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = list(tmp_path.glob("gohd_synthetic/tiny/2.0.0/*.array_record*"))
    assert {p.name.split(".")[0] for p in built} == {"gohd_synthetic-train", "gohd_synthetic-heldout"}

    import tensorflow_datasets as tfds

    from data_pipelines import pipelines, schema
    from data_pipelines.tfds import TfdsClips

    train = TfdsClips(tfds.data_source("gohd_synthetic/tiny", split="train", data_dir=str(tmp_path)))
    held = TfdsClips(tfds.data_source("gohd_synthetic/tiny", split="heldout", data_dir=str(tmp_path)))
    assert len(train) == 12 and len(held) == 4
    assert not {r["identity_id"] for r in train.index} & {r["identity_id"] for r in held.index}
    clip = train[0]
    t = len(clip["frames"])
    assert clip["descriptors"].shape == (t, 72) and clip["audio"].shape == (t * 640,)
    assert schema.decode_jpeg(clip["frames"][0]).shape == (64, 64, 3)
    # The same clip as the generator gives it, and a sample reads only its records.
    from data_pipelines import records
    from data_pipelines.synthetic.generator import SynthConfig, generate_clip

    want = records.make_record_clip(generate_clip(SynthConfig(size=64, seconds=4.0, num_identities=4, seed=0),
                                                  int(clip["clip_id"].rsplit("c", 1)[1])))
    assert clip["frames"] == want["frames"] and np.array_equal(clip["mel_80hz"], want["mel_80hz"])
    recs = schema.encode_clip(want)[0]
    assert clip["content_hash"] == schema.records_digest(recs)
    ds = pipelines.make_dataset("animator", train, split="all", shard_index=0, shard_count=1, count_bytes=True)
    sample = next(pipelines.make_iterator(ds, 4))
    assert sample["source"].shape == (4, 64, 64, 3)
    assert sample["bytes_read"].max() < 0.2 * sum(len(r) for r in recs)  # not the whole clip

    ds = pipelines.make_dataset("expression", train, split="all", shard_index=0, shard_count=1)
    batch = next(pipelines.make_iterator(ds, 2))
    assert batch["mel_windows"].shape == (2, 30, 80, 16)
    assert np.isfinite(batch["mel_windows"]).all()
