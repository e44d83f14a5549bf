"""gohd-preprocess on Apache Beam (``--runner``): the same records and manifest as the local driver;
a video that raises is a counted skip, a worker killed mid-commit leaves nothing listed, a rerun
skips finished videos.

The equivalence test runs the real estimators (weights rebuilt from the reference manifests) on
the first 1.6 s of each real example clip, with Beam's DirectRunner on 2 worker processes started
by the ``gohd-preprocess`` CLI. The fault tests run the pipeline in this process (DirectRunner,
one worker, so that a patched function reaches the worker) with ``FakeEstimators``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="the [beam] extra is not installed (make test installs it)")

from data_pipelines.records import ClipDataset, load_manifest  # noqa: E402
from data_pipelines.video import beam as bp, preprocess as pp  # noqa: E402
from data_pipelines.video.faces import FaceModels  # noqa: E402
from data_pipelines.video.output import LocalOutput, marker_name  # noqa: E402
from data_pipelines.video.segment import SegmentConfig  # noqa: E402
from tests.conftest import require_shared  # noqa: E402
from tests.test_preprocess import FakeEstimators, _read, _synthetic_talking_head, _videos, write_video  # noqa: E402

CFG = pp.PreprocessConfig(segment=SegmentConfig(min_seconds=1.0))


def fake_models(work=None):
    """What a worker loads in ``setup``: dlib and the cheap stand-in estimators."""
    return FaceModels(), FakeEstimators()


def _synthetic_videos(folder, n=2, seconds=1.6):
    folder.mkdir(parents=True)
    frames, wav = _synthetic_talking_head(seconds)
    for i in range(n):
        write_video(folder / f"{i}_person{i}_000.mp4", frames[i:], audio=wav[i * 640:])
    return pp.list_videos([folder])


def _record_hashes(out):
    """video file name -> (the sha256 of its ArrayRecord file, its clips' content hashes)."""
    m = load_manifest(out)
    return {s["file"].split("/")[-1].rsplit("-", 1)[0]: (s["sha256"], [r["hash"] for r in s["records"]])
            for s in m["shards"]}


def _without_time(manifest):
    return {k: v for k, v in manifest.items() if k != "created"}


@pytest.mark.slow
def test_beam_and_local_drivers_write_the_same_records_and_manifest(tmp_path):
    from gohd_jax.interop import oracle_weights as ow

    src = tmp_path / "in"
    src.mkdir()
    for v in _videos():  # the first 1.6 s (40 frames) of each real example clip
        frames, wav = _read(v, seconds=1.6)
        write_video(src / v.name, frames, audio=wav)
    weights = {}
    for kind in ("deep3d_recon", "l2cs"):
        man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
        weights[kind] = tmp_path / f"{kind}.npz"
        np.savez(weights[kind], **{k: np.asarray(v) for k, v in ow.make_state_dict(man, ow.manifest_seed(man)).items()})
    lm3d = require_shared("assets", "deep3d", "BFM", "similarity_Lm3D_all.mat")
    flags = ["--videos", str(src), "--deep3d", str(weights["deep3d_recon"]), "--l2cs", str(weights["l2cs"]),
             "--lm3d", str(lm3d), "--no-progress", "--batch-size", "8", "--min-seconds", "1.0"]  # 40 frames
    # one compile of the estimators for the three processes (the local run's, then both workers')
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}
    cmd = [sys.executable, "-m", "data_pipelines.video.cli"]
    local = subprocess.run(cmd + flags + ["--out", str(tmp_path / "local")], capture_output=True, text=True,
                           timeout=900, env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    beam = subprocess.run(cmd + flags + ["--out", str(tmp_path / "beam"), "--runner", "direct",
                                         "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert beam.returncode == 0, beam.stderr[-3000:]
    assert "beam (DirectRunner): 2 videos processed" in beam.stdout, beam.stdout

    # the same records, byte for byte, and the same manifest (but for its creation time)
    a, b = _record_hashes(tmp_path / "local"), _record_hashes(tmp_path / "beam")
    assert len(a) == 2 and a == b
    assert _without_time(load_manifest(tmp_path / "local")) == _without_time(load_manifest(tmp_path / "beam"))
    ds = ClipDataset(tmp_path / "beam", verify_hashes=True)
    assert len(ds) == 2 and all(abs(r["num_frames"] - 40) <= 1 for r in ds.index)
    assert np.isfinite(ds[0]["descriptors"]).all()
    # the report is merged from both workers' videos
    report = json.loads((tmp_path / "beam" / bp.REPORT).read_text())
    assert report["videos_processed"] == 2 and report["clips_written"] == 2
    assert report["video_frames_decoded"] == json.loads(
        (tmp_path / "local" / "report-0-of-1.json").read_text())["video_frames_decoded"]
    assert report["frames_per_second"] > 0 and report["stages"]["frames"]["estimators"] >= 78


def test_a_video_that_raises_is_a_counted_skip_and_a_rerun_tries_it_again(tmp_path, monkeypatch):
    videos = _synthetic_videos(tmp_path / "in")
    bad = videos[1]
    real_detect = pp.detect_faces

    def detect(info, *a, **kw):
        if str(info.path) == bad:
            raise RuntimeError("decoder crashed")
        return real_detect(info, *a, **kw)

    monkeypatch.setattr(pp, "detect_faces", detect)
    out = str(tmp_path / "ds")
    r = bp.run(videos, out, CFG, fake_models, "direct")
    assert r["videos_processed"] == 2 and r["videos_with_clips"] == 1
    assert r["counters"] == {"videos": 2, "frames": r["video_frames_decoded"], "clips": 1, "skipped": 1}
    assert r["videos_skipped"] == {"error": 1}
    assert r["errors"] == [{"video": "1_person1_000.mp4", "reason": "error",
                            "detail": "RuntimeError: decoder crashed"}]
    m = load_manifest(out)
    assert m["num_clips"] == 1 and [s["reason"] for s in m["skipped"]] == ["error"]
    assert LocalOutput(out).done(pp.video_key(bad)) is None  # not committed: retried next time

    monkeypatch.setattr(pp, "detect_faces", real_detect)
    r = bp.run(videos, out, CFG, fake_models, "direct")
    assert (r["videos_already_done"], r["videos_processed"], r["clips_written"]) == (1, 1, 1)
    m = load_manifest(out)
    assert m["num_clips"] == 2 and m["num_skipped"] == 0


class Killed(BaseException):
    """What a killed worker does to the code it was running: nothing after it runs."""


def test_a_worker_killed_mid_commit_leaves_nothing_listed_and_a_rerun_redoes_the_video(tmp_path, monkeypatch):
    videos = _synthetic_videos(tmp_path / "in")
    out = str(tmp_path / "ds")
    victim = pp.video_key(videos[0])
    real_put = bp.BeamOutput.put

    def put(self, local, name):
        if victim in name:  # half the records written where they belong, then the worker dies
            data = open(local, "rb").read()
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(data[:len(data) // 2])
            raise Killed()
        return real_put(self, local, name)

    monkeypatch.setattr(bp.BeamOutput, "put", put)
    with pytest.raises(RuntimeError, match="Killed.*ProcessVideos"):  # the pipeline fails (no retry here)
        bp.run(videos, out, CFG, fake_models, "direct")
    half = tmp_path / "ds" / "videos" / f"{victim}.array_record"
    assert half.is_file() and not (tmp_path / "ds" / marker_name(victim)).exists()
    # nothing lists the half-written file: not the video's done check, not a manifest
    assert LocalOutput(out).done(victim) is None
    m = pp.write_manifest(LocalOutput(out), pp.plan_of(CFG))
    assert all(victim not in s["file"] for s in m["shards"])

    monkeypatch.setattr(bp.BeamOutput, "put", real_put)
    r = bp.run(videos, out, CFG, fake_models, "direct")  # the retry
    assert r["videos_processed"] + r["videos_already_done"] == 2
    ds = ClipDataset(out, verify_hashes=True)  # every listed file whole, every clip's hash right
    assert len(ds) == 2 and ds.manifest["num_skipped"] == 0
    assert all(ds[i]["descriptors"].shape[1] == 72 for i in range(len(ds)))

    # a rerun over the same output skips finished videos and leaves their files alone
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "videos").iterdir()}
    r = bp.run(videos, out, CFG, fake_models, "direct")
    assert (r["videos_already_done"], r["videos_processed"]) == (2, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "videos").iterdir()} == stamps
    assert load_manifest(out)["num_clips"] == 2
    from data_pipelines.records import DatasetError

    with pytest.raises(DatasetError, match="other settings"):  # refused before any work
        bp.run(videos, out, pp.PreprocessConfig(detect_size=320), fake_models, "direct")


def test_the_cli_passes_unknown_flags_to_beam_only_with_a_runner(tmp_path):
    from data_pipelines.video import cli

    with pytest.raises(SystemExit):
        cli.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o"), "--direct_num_workers=2"])
    # the README's Dataflow flags all go to Beam, none taken for ours (no abbreviations)
    beam_flags = ["--project", "P", "--region", "R", "--temp_location", "gs://B/tmp", "--max_num_workers", "200",
                  "--num_workers", "3", "--labels", "a=b", "--machine_type", "g2-standard-8"]
    args, rest = cli.build_parser().parse_known_args(["--videos", "gs://B/raw/", "--out", "gs://B/o", "--runner",
                                                      "dataflow", *beam_flags])
    assert rest == beam_flags and args.videos == ["gs://B/raw/"] and args.num_shards is None
    res = subprocess.run([sys.executable, "-m", "data_pipelines.video.cli", "--runner", "direct", "--videos",
                          str(tmp_path), "--out", str(tmp_path / "o"), "--deep3d", "x.pth"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no videos found" in res.stderr
    (tmp_path / "a.mp4").write_bytes(b"x")
    res = subprocess.run([sys.executable, "-m", "data_pipelines.video.cli", "--runner", "direct", "--videos",
                          str(tmp_path), "--out", str(tmp_path / "o"), "--deep3d", "missing.pth"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "missing --l2cs" in res.stderr and "no such file: --deep3d missing.pth" in res.stderr
    assert not (tmp_path / "o").exists()


def test_the_tfds_builder_on_beam_gives_the_local_drivers_records_and_grain_reads_them(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    from apache_beam.options.pipeline_options import PipelineOptions

    from data_pipelines import pipelines
    from data_pipelines.tfds import TfdsClips
    from data_pipelines.tfds.gohd_video import gohd_video_dataset_builder as gv

    manual = tmp_path / "raw"
    manual.mkdir()
    videos = _synthetic_videos(manual / "videos", n=4)  # identities person0..person3: one held out
    (manual / "weights").mkdir()
    monkeypatch.setattr(gv, "load_models", lambda manual_dir, batch_size: fake_models)
    monkeypatch.setattr(gv.Builder, "BUILDER_CONFIGS", [gv.VideoBuilderConfig(name="default", min_seconds=1.0)])
    builder = gv.Builder(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), beam_options=PipelineOptions(["--runner=DirectRunner"])))

    pp.preprocess(videos, tmp_path / "local", faces=FaceModels(), estimators=FakeEstimators(), cfg=CFG,
                  progress=False)
    local = {r["clip_id"]: r["hash"] for r in ClipDataset(tmp_path / "local").index}
    got = {}
    for split in ("train", "heldout"):
        clips = TfdsClips(tfds.data_source(builder.info.full_name.split("/")[0], split=split,
                                           data_dir=str(tmp_path / "tfds")))
        got[split] = {r["clip_id"]: r["hash"] for r in clips.index}
        for i in range(len(clips)):  # each clip whole: its records decode to the hash TFDS stored
            from data_pipelines import schema

            assert schema.records_digest(clips.read(i, range(clips.index[i]["record_count"]))) == \
                clips.index[i]["hash"]
    assert len(got["heldout"]) == 1 and len(got["train"]) == 3
    assert {**got["train"], **got["heldout"]} == local  # the same clips, the same content
    ds = pipelines.make_dataset("animator", clips, split="all", shard_index=0, shard_count=1)
    assert next(iter(ds))["source"].shape == (256, 256, 3)


def test_gohd_tfds_build_takes_beam_options_and_says_what_the_manual_dir_lacks(tmp_path):
    manual = tmp_path / "raw"
    _synthetic_videos(manual / "videos", n=1, seconds=1.2)
    builder = os.path.join(os.path.dirname(__file__), "..", "data_pipelines", "tfds", "gohd_video")
    res = subprocess.run([sys.executable, "-m", "data_pipelines.tfds.cli", "build", builder,
                          f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}",
                          "--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "missing epoch_20.pth, L2CSNet_gaze360.pkl, similarity_Lm3D_all.mat" in res.stderr, res.stderr[-2000:]


def test_videos_and_output_in_a_bucket(tmp_path, monkeypatch, gcs_bucket):
    """gs:// videos listed, copied to the worker and processed; records and markers written to a
    gs:// output through FileSystems (a local GCS emulator): the same clips as the local driver."""
    from apache_beam.io.filesystems import FileSystems

    env, bucket = gcs_bucket
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    local_videos = _synthetic_videos(tmp_path / "in")
    for v in local_videos:
        with open(v, "rb") as src, FileSystems.create(f"{bucket}/raw/sub/{os.path.basename(v)}") as dst:
            dst.write(src.read())
    videos = bp.list_videos([f"{bucket}/raw/"])
    assert videos == [f"{bucket}/raw/sub/{os.path.basename(v)}" for v in local_videos]
    (tmp_path / "list.txt").write_text("\n".join(videos) + "\n")  # a local list of bucket paths
    assert bp.list_videos([str(tmp_path / "list.txt")]) == videos
    r = bp.run(videos, f"{bucket}/ds", CFG, fake_models, "direct")
    assert r["videos_processed"] == 2 and r["clips_written"] == 2
    out = bp.BeamOutput(f"{bucket}/ds")
    manifest = out.read_json("manifest.json")
    assert manifest["num_clips"] == 2 and len(out.markers()) == 2
    for shard in manifest["shards"]:  # every listed file whole in the bucket
        assert out.size(shard["file"]) == shard["bytes"]
    local = pp.preprocess(local_videos, tmp_path / "local", faces=FaceModels(), estimators=FakeEstimators(),
                          cfg=CFG, progress=False)
    assert local["clips_written"] == 2
    # the bucket's dataset, copied here, is whole (every hash) and holds the local driver's clips
    # (their ids differ: a video's key hashes its path, gs://... here)
    got = tmp_path / "from-bucket"
    (got / "videos").mkdir(parents=True)
    for name in ["manifest.json", *(s["file"] for s in manifest["shards"])]:
        (got / name).write_bytes(out.read(name))
    a, b = ClipDataset(got, verify_hashes=True), ClipDataset(tmp_path / "local")
    a_clips = sorted((a[i] for i in range(len(a))), key=lambda c: c["source_id"])
    b_clips = sorted((b[i] for i in range(len(b))), key=lambda c: c["source_id"])
    for x, y in zip(a_clips, b_clips, strict=True):
        assert x["source_id"] == y["source_id"] and x["frames"] == y["frames"]
        np.testing.assert_array_equal(x["descriptors"], y["descriptors"])
        np.testing.assert_array_equal(x["audio"], y["audio"])
    # a rerun over the bucket skips both; a listed video that cannot be read is a counted skip
    r = bp.run(videos + [f"{bucket}/raw/gone.mp4"], f"{bucket}/ds", CFG, fake_models, "direct")
    assert r["videos_already_done"] == 2 and r["videos_skipped"] == {"error": 1}
    assert r["errors"][0]["video"] == "gone.mp4" and out.read_json("manifest.json")["num_clips"] == 2
