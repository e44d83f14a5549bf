"""Clip records: schema codec, resumable sharded writer, manifest checks, random-access reader."""

from __future__ import annotations

import json
import os

import msgpack
import numpy as np
import pytest

from data_pipelines import records, schema
from tests.fakes import FakeClips


def _write(root, n=5, per_shard=2, **kw):
    return records.write_dataset(root, n, kw.pop("make", FakeClips()), clips_per_shard=per_shard,
                                 progress=False, **kw)


def test_roundtrip_and_manifest(tmp_path):
    manifest = _write(tmp_path, n=5, per_shard=2, dataset_info={"name": "fake"})
    assert manifest["num_clips"] == 5 and len(manifest["shards"]) == 3
    assert [s["num_records"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["num_identities"] == 4
    assert manifest["num_frames"] == sum(8 + i % 3 for i in range(5))
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["shards"][0]["sha256"] == manifest["shards"][0]["sha256"]

    ds = records.ClipDataset(tmp_path, verify_hashes=True)
    assert len(ds) == 5
    fake = FakeClips()
    for i in (0, 4, 2):  # random access, any order
        clip, want = ds[i], fake(i)
        assert clip["clip_id"] == want["clip_id"] and clip["identity_id"] == want["identity_id"]
        np.testing.assert_array_equal(clip["descriptors"], want["descriptors"])
        np.testing.assert_array_equal(clip["audio"], want["audio"])
        np.testing.assert_array_equal(clip["aux"]["frame"], want["aux"]["frame"])
        frames = schema.decode_frames(clip, range(len(clip["frames"])))
        assert frames.shape == want["frames"].shape and frames.dtype == np.float32
        np.testing.assert_allclose((frames + 1) * 127.5, want["frames"], atol=3)  # JPEG q95
        assert clip["content_hash"] == ds.index[i]["hash"]
    with pytest.raises(IndexError):
        ds[5]


def test_jpeg_quality_is_applied(tmp_path):
    big = FakeClips(size=64)
    noisy = lambda i: {**big(i), "frames": np.random.default_rng(i).integers(0, 255, (8 + i % 3, 64, 64, 3), np.uint8)}  # noqa: E731
    low = records.write_dataset(tmp_path / "low", 2, noisy, jpeg_quality=20, progress=False)
    high = records.write_dataset(tmp_path / "high", 2, noisy, jpeg_quality=95, progress=False)
    assert low["shards"][0]["bytes"] < high["shards"][0]["bytes"]


def test_resume_skips_finished_shards(tmp_path):
    _write(tmp_path)
    shards = sorted(tmp_path.glob("*.array_record"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
    # Lose shard 1's commit marker, as if the process died right after renaming it.
    (tmp_path / (shards[1].name + ".done.json")).unlink()
    (tmp_path / "manifest.json").unlink()
    manifest = _write(tmp_path)
    assert manifest["num_clips"] == 5
    assert shards[0].stat().st_mtime_ns == mtimes[shards[0].name]
    assert shards[2].stat().st_mtime_ns == mtimes[shards[2].name]
    assert shards[1].stat().st_mtime_ns != mtimes[shards[1].name]


def test_crash_never_counts_a_half_written_shard(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, make=FakeClips(crash_on=(3,)))
    done = sorted(p.name for p in tmp_path.glob("*.done.json"))
    assert done == ["clips-00000-of-00003.array_record.done.json"]
    assert not (tmp_path / "clips-00001-of-00003.array_record").exists()  # only a .tmp
    with pytest.raises(records.DatasetError, match="never finished"):
        records.load_manifest(tmp_path)
    first = (tmp_path / "clips-00000-of-00003.array_record").stat().st_mtime_ns
    manifest = _write(tmp_path)
    assert manifest["num_clips"] == 5 and not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / "clips-00000-of-00003.array_record").stat().st_mtime_ns == first


def test_rerun_with_other_settings_is_refused(tmp_path):
    _write(tmp_path, dataset_info={"size": 16})
    with pytest.raises(records.DatasetError, match="other settings"):
        _write(tmp_path, dataset_info={"size": 32})


def test_bad_items_are_skipped_and_listed(tmp_path):
    manifest = _write(tmp_path, make=FakeClips(fail_on=(1,)))
    assert manifest["num_clips"] == 4 and manifest["num_skipped"] == 1
    assert manifest["skipped"][0]["item"] == 1 and "broken" in manifest["skipped"][0]["reason"]
    assert [r["clip_id"] for r in records.ClipDataset(tmp_path).index] == [
        "fake-0000", "fake-0002", "fake-0003", "fake-0004"]


def test_workers_give_identical_shards(tmp_path):
    a = _write(tmp_path / "a", workers=0)
    b = _write(tmp_path / "b", workers=1)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_truncated_shard_is_a_clear_error(tmp_path):
    _write(tmp_path)
    shard = tmp_path / "clips-00001-of-00003.array_record"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(records.DatasetError, match="truncated"):
        records.ClipDataset(tmp_path)


def test_missing_or_mismatched_manifest(tmp_path):
    with pytest.raises(records.DatasetError, match="not a folder"):
        records.load_manifest(tmp_path / "nope")
    with pytest.raises(records.DatasetError, match="no manifest.json"):
        records.load_manifest(tmp_path)
    _write(tmp_path)
    path = tmp_path / "manifest.json"
    good = json.loads(path.read_text())
    bad = dict(good, shards=[dict(good["shards"][0], file="clips-missing.array_record")] + good["shards"][1:])
    path.write_text(json.dumps(bad))
    with pytest.raises(records.DatasetError, match="missing"):
        records.load_manifest(tmp_path)
    path.write_text(json.dumps(dict(good, schema_version=99)))
    with pytest.raises(records.DatasetError, match="schema version"):
        records.load_manifest(tmp_path)
    path.write_text("{not json")
    with pytest.raises(records.DatasetError, match="not valid JSON"):
        records.load_manifest(tmp_path)


def _repack_chunk(record: bytes, **changes) -> bytes:
    """Re-encodes a chunk record with some arrays replaced, bypassing validation (a planted bad record)."""
    obj = msgpack.unpackb(record, raw=False)
    obj["fields"].update({k: schema._pack_array(v) for k, v in changes.items()})
    return msgpack.packb(obj, use_bin_type=True)


def test_decode_rejects_inconsistent_or_corrupt_records():
    clip = records.make_record_clip(FakeClips(frames=120)(0))
    recs, digest = schema.encode_clip(clip)
    layout = schema.ClipLayout(120)
    assert len(recs) == layout.num_records == 1 + 3 * 4 + 120 and digest == schema.records_digest(recs)
    assert recs[layout.frame_record(7)] == clip["frames"][7]  # a frame record is its JPEG bytes
    head = schema.decode_header(recs[0])
    assert (head["clip_id"], head["num_frames"], head["height"]) == ("fake-0000", 120, 16)
    k = layout.chunk_record(2, "per_frame")  # the last chunk: frames 100..119
    np.testing.assert_array_equal(schema.decode_chunk(recs[k], "per_frame", 2, 120)["descriptors"],
                                  clip["descriptors"][100:])
    short = _repack_chunk(recs[k], descriptors=np.zeros((3, 72), np.float32))
    with pytest.raises(schema.BadRecordError, match=r"chunk 7: descriptors has shape \(3, 72\), expected \(20, 72\)"):
        schema.decode_chunk(short, "per_frame", 2, 120, "chunk 7")
    with pytest.raises(schema.BadRecordError, match="holds chunk 2, expected 1"):
        schema.decode_chunk(recs[k], "per_frame", 1, 120)
    with pytest.raises(schema.BadRecordError, match="expected a schema-2 mel_80hz record"):
        schema.decode_chunk(recs[k], "mel_80hz", 2, 120)
    with pytest.raises(schema.BadRecordError, match="cannot decode"):
        schema.decode_chunk(recs[k][:-50], "per_frame", 2, 120)
    with pytest.raises(schema.BadRecordError, match="not finite"):
        schema.decode_chunk(_repack_chunk(recs[k], controls=np.full((20, 21), np.inf, np.float32)),
                            "per_frame", 2, 120)
    with pytest.raises(schema.BadRecordError, match="holds NaN"):
        schema.encode_clip(dict(clip, descriptors=np.full_like(clip["descriptors"], np.nan)))


def test_a_clip_reads_any_rows_from_its_chunks_as_from_whole_arrays(tmp_path):
    """``RecordClip.rows`` over the 2 s chunks equals indexing the whole arrays (DictClip), for
    every time field and aux, at chunk edges, the mels' extra last row, and any index shape."""
    fake = FakeClips(frames=149)  # 149..151 frames: 3 and 4 chunks

    def make(i):  # mels that differ row by row, so that a wrong row shows
        clip = fake(i)
        rng = np.random.default_rng(i)
        return dict(clip, **{k: rng.random(clip[k].shape, np.float32) for k in ("mel_80hz", "mel_100hz")})

    _write(tmp_path, n=3, per_shard=2, make=make)
    ds = records.ClipDataset(tmp_path)
    rng = np.random.default_rng(0)
    for i in range(3):
        whole, view = schema.DictClip(ds[i]), ds.view(i)
        assert view.num_frames == whole.num_frames == 149 + i
        for field in (*schema.TIME_FIELDS, "aux/frame"):
            n = whole.num_rows(field)
            assert view.num_rows(field) == n
            r = schema.ROWS_PER_CHUNK[schema.FIELD_GROUP.get(field, "per_frame")]
            edges = np.array([0, r - 1, r, r + 1, 2 * r, n - 2, n - 1])
            idx = np.concatenate([edges, rng.integers(0, n, 19)]).reshape(2, 13)
            np.testing.assert_array_equal(view.rows(field, idx), whole.rows(field, idx), err_msg=field)
        assert view.frames([0, whole.num_frames - 1]) == whole.frames([0, whole.num_frames - 1])
        with pytest.raises(IndexError):
            view.rows("descriptors", [whole.num_frames])


def test_verify_reports_a_corrupted_shard(tmp_path):
    _write(tmp_path)
    report = records.verify_dataset(tmp_path, progress=False)
    assert report == {"clips": 5, "bad": [], "shard_errors": []}
    shard = tmp_path / "clips-00002-of-00003.array_record"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    report = records.verify_dataset(tmp_path, progress=False)
    assert report["shard_errors"] and "sha256" in report["shard_errors"][0]


def test_pickled_dataset_reopens(tmp_path):
    import pickle
    _write(tmp_path)
    ds = records.ClipDataset(tmp_path)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[3]["clip_id"] == "fake-0003"
    assert os.path.samefile(clone.root, tmp_path)
