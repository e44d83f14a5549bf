"""The schema-2 record layout (records per 2 s time chunk and per frame): every stage's samples
equal the schema-1 layout's (golden batches), ``gohd-data migrate`` converts old datasets and old
ones are refused with the command to run, and a sample's bytes do not grow with the clip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from data_pipelines import cli, pipelines, records, schema
from data_pipelines.synthetic.generator import generate_clip
from tests import golden_batches as golden
from tests.fakes import FakeClips
from tests.legacy_v1 import write_v1


@pytest.fixture(scope="module")
def golden_clips():
    cfg = golden.synth_config()
    return [records.make_record_clip(generate_clip(cfg, i)) for i in range(golden.NUM_CLIPS)]


def test_every_stage_yields_the_schema_1_batches(tmp_path):
    """The synthetic writer's schema-2 dataset gives, for the same seed, the batches the schema-1
    layout gave (sha256 of each batch, recorded with the schema-1 code on 2026-12-06)."""
    golden.write(tmp_path / "v2")
    want = json.loads(golden.FIXTURE.read_text())
    assert golden.batch_digests(tmp_path / "v2") == want


def test_migrate_converts_an_old_dataset_to_the_same_samples(tmp_path, golden_clips, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    write_v1(old, golden_clips, golden.CLIPS_PER_SHARD, dataset={"generator": "gohd-synth", "size": 32})
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    # An old dataset is refused with the command that converts it.
    with pytest.raises(records.DatasetError, match=f"gohd-data migrate {old} NEW_FOLDER"):
        pipelines.make_dataset("motion", old, shard_index=0, shard_count=1)
    assert cli.main(["info", str(old)]) == 1
    assert f"convert it with `gohd-data migrate {old} NEW_FOLDER`" in capsys.readouterr().err

    assert cli.main(["migrate", str(old), str(new)]) == 0
    assert "migrated_from=schema 1" in capsys.readouterr().out
    assert golden.batch_digests(new) == json.loads(golden.FIXTURE.read_text())
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # OLD only read
    assert records.verify_dataset(new, progress=False) == {"clips": 6, "bad": [], "shard_errors": []}
    manifest = records.load_manifest(new)
    assert [s["num_records"] for s in manifest["shards"]] == [4, 2]  # clips per shard carried over
    for i, clip in enumerate(records.ClipDataset(new)[j] for j in range(6)):
        assert clip["frames"] == golden_clips[i]["frames"]  # JPEG bytes unchanged, not re-encoded

    mtimes = {p.name: p.stat().st_mtime_ns for p in new.glob("*.array_record")}
    assert cli.main(["migrate", str(old), str(new)]) == 0  # a rerun keeps the finished shards
    assert {p.name: p.stat().st_mtime_ns for p in new.glob("*.array_record")} == mtimes
    assert cli.main(["migrate", str(new), str(tmp_path / "again")]) == 1
    assert "already schema 2: nothing to migrate" in capsys.readouterr().err


def test_a_corrupt_old_clip_fails_the_migration_by_name(tmp_path, golden_clips, capsys):
    old = tmp_path / "old"
    write_v1(old, golden_clips[:2], 2)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["shards"][0]["records"][1]["hash"] = "0" * 64
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["migrate", str(old), str(tmp_path / "new")]) == 1
    err = capsys.readouterr().err
    assert "1 clips of" in err and "could not be converted" in err
    skipped = json.loads((tmp_path / "new" / "manifest.json").read_text())["skipped"]
    assert "record 1 of clips-00000-of-00001.array_record: content hash differs" in skipped[0]["reason"]


def _mean_bytes(data, stage, **kw) -> float:
    ds = pipelines.make_dataset(stage, data, split="all", shard_index=0, shard_count=1, count_bytes=True, **kw)
    it = pipelines.make_iterator(ds, 8)
    return float(np.mean([next(it)["bytes_read"] for _ in range(6)]))


def test_bytes_per_sample_do_not_grow_with_the_clip(tmp_path):
    """Clips of 8 s and of 60 s: a windowed stage's sample reads about the same bytes (its
    window's chunks and frames), while a whole clip grows 7.5x; counted at the ArrayRecord read.
    The sync expert's negatives come from anywhere in the clip, one chunk each: bounded by
    2 + negatives chunks, not by the clip (on a short clip they share chunks more often)."""
    short, long = tmp_path / "short", tmp_path / "long"
    records.write_dataset(short, 4, FakeClips(frames=200, size=64), clips_per_shard=4, progress=False)
    records.write_dataset(long, 4, FakeClips(frames=1500, size=64), clips_per_shard=4, progress=False)
    clip_bytes = {d: sum(s["bytes"] for s in records.load_manifest(d)["shards"]) / 4 for d in (short, long)}
    assert clip_bytes[long] > 7 * clip_bytes[short]
    for stage, kw in (("animator", {}), ("motion", {}), ("expression", {}), ("sync", {"sync_negatives": 3})):
        a, b = _mean_bytes(short, stage, **kw), _mean_bytes(long, stage, **kw)
        assert 0.7 < b / a < (1.3 if stage != "sync" else 2.0), (stage, a, b)
        assert a < 0.5 * clip_bytes[short] and b < 0.1 * clip_bytes[long], (stage, a, b)
    # A motion window (150 frames) spans at most 4 chunks of 64 KB of 100 Hz mel and 20 KB of
    # per-frame data; no JPEG.
    assert _mean_bytes(short, "motion") < 4 * 90e3


def test_old_and_new_fields_of_a_clip_agree(tmp_path, golden_clips):
    """``ClipDataset[i]`` (the whole clip, as eval and verify read it) gives back what was written."""
    golden.write(tmp_path / "v2")
    ds = records.ClipDataset(tmp_path / "v2", verify_hashes=True)
    for i in (0, 5):
        got, want = ds[i], golden_clips[i]
        for k in schema.TIME_FIELDS:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got["frames"] == want["frames"] and set(got["aux"]) == set(want["aux"])
    shutil.rmtree(tmp_path / "v2")


@pytest.mark.parametrize("condition", ["mel100", "release"])
def test_heldout_motion_reads_chunks_as_the_whole_clip_gives(tmp_path, condition):
    """The motion evaluation's held-out clips (read through the chunks) equal the conditions and
    poses computed from whole clips with ``audio.frame_cond_*``."""
    from data_pipelines import audio
    from gohd_jax.eval import motion as M

    fake = FakeClips(frames=160, identities=2)

    def make(i):  # mels that differ row by row, so that a wrong row shows
        clip = fake(i)
        rng = np.random.default_rng(i)
        return dict(clip, **{k: rng.random(clip[k].shape, np.float32) for k in ("mel_80hz", "mel_100hz")})

    records.write_dataset(tmp_path, 6, make, clips_per_shard=6, progress=False)
    held = M.heldout_motion(tmp_path, condition=condition, heldout_fraction=0.5)
    ds = records.ClipDataset(tmp_path)
    idx = pipelines.select_clips(ds.index, split="heldout", heldout_fraction=0.5, min_frames=M.WINDOW)
    t = held["cond"].shape[1]
    for k, i in enumerate(idx):
        clip = ds[i]
        n = len(clip["frames"])
        cond = (audio.frame_cond_100hz(clip["mel_100hz"], n) if condition == "mel100"
                else audio.frame_cond_release(clip["mel_80hz"], n))
        np.testing.assert_array_equal(held["cond"][k], cond[:t])
        np.testing.assert_array_equal(held["pose"][k], clip["descriptors"][:t, schema.POSE])


def test_gohd_data_bench_counts_bytes_and_pays_the_injected_latency(tmp_path, capsys):
    records.write_dataset(tmp_path, 4, FakeClips(frames=200, size=32), clips_per_shard=4, progress=False)
    assert cli.main(["bench", str(tmp_path), "--stage", "motion", "--batches", "2", "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["stage"] == "motion" and fast["samples"] == 16 and fast["samples_per_s"] > 0
    assert fast["bytes_per_sample"] == pytest.approx(_mean_bytes(tmp_path, "motion"), rel=0.3)
    # 2 read requests per motion sample (its mel chunks, its descriptor chunks), 40 ms each; of
    # the 3 timed batches, Grain's prefetch (16 samples) may have read 2 during the warm-up
    assert cli.main(["bench", str(tmp_path), "--stage", "motion", "--batches", "3", "--json",
                     "--read-latency-ms", "40"]) == 0
    slow = json.loads(capsys.readouterr().out)
    assert slow["seconds"] >= 8 * 2 * 0.04 * 0.9 and slow["read_latency_ms"] == 40
    assert cli.main(["bench", str(tmp_path), "--stage", "motion", "--batches", "1"]) == 0
    assert "| motion | 0 | 1 | 0 |" in capsys.readouterr().out
