"""gohd-preprocess: real videos -> clip records; bad inputs; resume; sharding; the real estimators.

Most tests use a cheap stand-in for the two ResNet-50 estimators (``FakeEstimators``: the
descriptors are statistics of the estimator inputs, so misaligned or missing frames still show);
``test_real_estimators_in_the_pipeline`` runs the ported Deep3DFaceRecon and L2CS-Net (weights
rebuilt from the reference manifests) and checks the stored descriptors against a direct call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from data_pipelines import pipelines, schema
from data_pipelines.records import ClipDataset, load_manifest
from data_pipelines.video import align, preprocess as pp
from data_pipelines.video.decode import AudioStream, SkipVideo, frames_25fps, open_video
from data_pipelines.video.faces import FaceModels, crop_and_resize, official_crop_box
from data_pipelines.video.segment import SegmentConfig, cut_score, segment
from tests.conftest import require_shared

# A plausible 5-point 3D template (eyes, nose tip, mouth corners; x right, y up): the real one is
# Deep3DFaceRecon's similarity_Lm3D_all.mat, which is not ours to ship.
LM3D = np.array([[-0.31, 0.29, 0.0], [0.31, 0.29, 0.0], [0.0, 0.0, 0.25], [-0.25, -0.34, 0.0],
                 [0.25, -0.34, 0.0]])


class FakeEstimators:
    """The ``Estimators`` interface, cheap: expression = per-channel means of the aligned face,
    pose = its mean and the mean of the gaze crop, gaze = the gaze crop's means."""

    batch_size = 16
    lm3d = LM3D

    def __call__(self, face224, face448):
        n = len(face224)
        a = face224.reshape(n, -1, 3).mean(1)
        b = face448.reshape(n, -1, 3).mean(1).astype(np.float32) / 255.0
        exp = np.tile(a, (1, 22))[:, :64]
        pose = np.concatenate([a, b], 1)
        return exp.astype(np.float32), pose.astype(np.float32), b[:, :2].copy()


@pytest.fixture(scope="module")
def faces():
    return FaceModels()


def _videos():
    return sorted(require_shared("assets", "gohd_examples", "driving_videos").glob("*.mp4"))


def _synthetic_talking_head(seconds, size=256, seed=0):
    """Frames (RGB uint8 [T,size,size,3]) and 16 kHz audio of a synthetic talking head (the
    project's generator: a face dlib finds on every frame, speech-like audio); no shared folder."""
    from data_pipelines.synthetic.generator import SynthConfig, generate_clip

    clip = generate_clip(SynthConfig(size=size, seconds=seconds, num_identities=1, seed=seed), 0)
    return clip["frames"], clip["audio"]


def _read(path, seconds=None):
    """Frames (RGB uint8) and 16 kHz audio of a video, optionally its first ``seconds``."""
    info = open_video(path)
    frames = [f for _, f in frames_25fps(info)]
    if seconds:
        frames = frames[:int(seconds * 25)]
    with AudioStream(info) as a:
        wav = a.read(0, len(frames) * 640)
    return np.stack(frames), wav


def write_video(path, frames, *, fps=25, audio=None, rotation=0, times=None, codec="libx264"):
    """Encodes RGB uint8 frames [T,H,W,3] (+ mono 16 kHz audio) with PyAV. ``times``: per-frame
    timestamps in seconds (variable frame rate); ``rotation``: display-matrix degrees."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        if times is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
            vs.time_base = Fraction(1, 1000)
        if rotation:
            vs.set_display_rotation(rotation)
        if audio is not None:
            aus = out.add_stream("aac", rate=16000)
            aus.layout = "mono"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if times is not None:
                vf.pts = int(round(times[i] * 1000))
                vf.time_base = Fraction(1, 1000)
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if audio is not None:
            n = aus.codec_context.frame_size or 1024
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            for k in range(0, len(pcm), n):
                af = av.AudioFrame.from_ndarray(pcm[None, k:k + n], format="s16", layout="mono")
                af.sample_rate = 16000
                af.pts = k
                for p in aus.encode(af):
                    out.mux(p)
            for p in aus.encode():
                out.mux(p)


def _run(videos, out, faces, estimators=None, **kw):
    return pp.preprocess([str(v) for v in videos], out, faces=faces, estimators=estimators or FakeEstimators(),
                         progress=False, **kw)


# ------------------------------------------------------------------------------------ real videos


def test_real_videos_become_valid_shards(tmp_path, faces):
    videos = _videos()
    out = tmp_path / "ds"
    report = _run(videos, out, faces)
    assert report["videos_with_clips"] == 2 and report["clips_written"] >= 2, report
    ds = ClipDataset(out, verify_hashes=True)
    for v in videos:
        info = open_video(v)
        src, wav = _read(v)
        clips = [ds[i] for i in range(len(ds)) if ds.index[i]["clip_id"].startswith(pp.video_key(v))]
        assert clips, f"no clip from {v.name}"
        total = sum(len(c["frames"]) for c in clips)
        # the examples are one shot each: their clips cover the whole video (audio 14.98 s)
        assert abs(total - 25 * min(info.duration_s, 14.98)) <= 1
        for c in clips:
            t = len(c["frames"])
            assert c["audio"].shape == (t * 640,) and c["descriptors"].shape == (t, 72)
            assert c["mel_80hz"].shape == (1 + t * 640 // 200, 80) and c["mel_100hz"].shape == (1 + t * 640 // 160, 80)
            assert c["identity_id"] == "WRA_" + v.stem.split("_WRA_")[1].rsplit("_", 1)[0]
            first = schema.decode_jpeg(c["frames"][0])
            assert first.shape == (256, 256, 3)
            # aligned: the record's frame k is the video's frame source_frame[k]
            k = int(c["aux"]["source_frame"][t // 2])
            crop = crop_and_resize(src[k], c["aux"]["crop_box"][t // 2])
            mid = schema.decode_jpeg(c["frames"][t // 2]).astype(float)
            assert np.abs(mid - crop).mean() < 3.0
            assert np.abs(mid - crop_and_resize(src[min(k + 5, len(src) - 1)], c["aux"]["crop_box"][0])).mean() > \
                np.abs(mid - crop).mean()
            # audio aligned with the frames: the record's samples are the video's
            s = int(c["aux"]["source_frame"][0]) * 640
            np.testing.assert_allclose(c["audio"], wav[s:s + t * 640], atol=1e-6)
            blink = c["controls"][:, 0]
            assert 0.05 < np.median(blink) < 0.6, "eye aspect ratio of open eyes is about 0.2-0.35"
            assert np.isfinite(c["descriptors"]).all() and c["descriptors"].std(0).max() > 0
    # the training pipelines read it
    for stage in ("animator", "motion", "expression"):
        sample = next(iter(pipelines.make_dataset(stage, out, heldout_fraction=0.0, shard_index=0,
                                                  shard_count=1)))
        assert all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in sample.values()
                   if np.asarray(v).dtype.kind == "f")
    # resume: a rerun does nothing and leaves the dataset as it was
    before = load_manifest(out)
    again = _run(videos, out, faces)
    assert again["videos_processed"] == 0 and again["videos_already_done"] == 2
    assert load_manifest(out)["shards"] == before["shards"]


def test_real_estimators_in_the_pipeline(tmp_path, faces):
    """The ported estimators (reference weights) inside the pipeline: a 1.6 s cut of a real video;
    stored descriptors = a direct call on the stored crop and landmarks."""
    from data_pipelines.video.estimate import Estimators
    from gohd_jax.interop import oracle_weights as ow
    from gohd_jax.interop.estimator_weights import deep3d_from_state_dict, l2cs_from_state_dict

    sds = {}
    for kind in ("deep3d_recon", "l2cs"):
        man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
        sds[kind] = ow.make_state_dict(man, ow.manifest_seed(man))
    est = Estimators(deep3d_from_state_dict(sds["deep3d_recon"]), l2cs_from_state_dict(sds["l2cs"]), LM3D,
                     batch_size=16)
    frames, wav = _read(_videos()[0], seconds=1.6)
    write_video(tmp_path / "cut.mp4", frames, audio=wav)
    rep = _run([tmp_path / "cut.mp4"], tmp_path / "ds", faces, est, cfg=pp.PreprocessConfig(
        segment=SegmentConfig(min_seconds=1.0)))
    assert rep["clips_written"] == 1, rep
    clip = ClipDataset(tmp_path / "ds")[0]
    t = len(clip["frames"])
    assert abs(t - 40) <= 1
    # recompute frames 0 and t-1 from the video itself with the stored crop and landmarks
    info = open_video(tmp_path / "cut.mp4")
    video = [f for _, f in frames_25fps(info)]
    picks = [0, t - 1]
    f224, f448 = [], []
    for i in picks:
        face = crop_and_resize(video[int(clip["aux"]["source_frame"][i])], clip["aux"]["crop_box"][i])
        lm = clip["aux"]["landmarks"][i].astype(np.float64)
        f224.append(align.deep3d_input(face, lm, LM3D))
        f448.append(align.l2cs_input(face, align.gaze_box(lm)))
    exp, pose, gaze = est(np.stack(f224), np.stack(f448))
    want = np.concatenate([exp, pose, gaze], 1)
    np.testing.assert_allclose(clip["descriptors"][picks], want, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(clip["descriptors"][:, 70:]) <= np.pi)


# ------------------------------------------------------------------------------------ bad input


def test_bad_inputs_are_counted_skips_and_odd_ones_are_handled(tmp_path, faces):
    frames, wav = _synthetic_talking_head(3.2)  # 80 frames at 256 px, 3.2 s of audio
    d = tmp_path / "in"
    d.mkdir()
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "notes.mkv").write_text("not a video at all\n")
    write_video(d / "silent_track_missing.mp4", frames)  # no audio stream
    noise = np.random.default_rng(1).integers(0, 256, (75, 128, 128, 3), dtype=np.uint8)
    write_video(d / "noface.mov", noise, audio=wav[:75 * 640])
    good = d / "good.mp4"
    write_video(good, frames, audio=wav)
    (d / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    # rotation: pixels stored turned a quarter, the display matrix turns them back upright
    write_video(d / "rotated.mp4", np.ascontiguousarray(np.rot90(frames, k=-1, axes=(1, 2))), audio=wav,
                rotation=90)
    # variable frame rate: frames at irregular times, about 30 fps on average
    times = np.cumsum(np.random.default_rng(2).uniform(0.02, 0.047, len(frames)))
    times -= times[0]
    write_video(d / "vfr.mp4", frames, audio=wav, times=times)
    rep = _run(pp.list_videos([d]), tmp_path / "ds", faces, cfg=pp.PreprocessConfig(
        segment=SegmentConfig(min_seconds=1.0)))
    markers = {json.loads(p.read_text())["video"]: json.loads(p.read_text())
               for p in (tmp_path / "ds" / "videos").glob("*.done.json")}
    reasons = {k: [s["reason"] for s in m["skipped"]] for k, m in markers.items()}
    assert reasons["random.mp4"] == ["not_a_video"]
    assert reasons["notes.mkv"] == ["not_a_video"]
    assert reasons["silent_track_missing.mp4"] == ["no_audio"]
    assert reasons["noface.mov"] == ["no_face"]
    assert reasons["truncated.mp4"] and reasons["truncated.mp4"][0] in ("not_a_video", "corrupt", "no_usable_clip")
    for name in ("good.mp4", "rotated.mp4", "vfr.mp4"):
        assert reasons[name] == [] and markers[name]["num_records"] >= 1, (name, markers[name])
    assert sum(rep["videos_skipped"].values()) == 5 and rep["videos_with_clips"] == 3
    info = open_video(d / "rotated.mp4")
    assert info.rotation == 90 and (info.width, info.height) == (256, 256)
    vfr_frames = sum(r["num_frames"] for r in markers["vfr.mp4"]["records"])
    vfr_seconds = times[-1] + (times[-1] - times[-2])
    assert abs(vfr_frames - 25 * min(vfr_seconds, 3.2)) <= 2  # audio is 3.2 s
    assert ClipDataset(tmp_path / "ds").manifest["num_skipped"] == 5


def test_cli_without_weights_says_what_to_download_and_writes_nothing(tmp_path):
    out = tmp_path / "ds"
    res = subprocess.run([sys.executable, "-m", "data_pipelines.video.cli", "--videos",
                          str(require_shared("assets", "gohd_examples", "driving_videos")), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "epoch_20.pth" in res.stderr and "L2CSNet_gaze360.pkl" in res.stderr
    assert "similarity_Lm3D_all.mat" in res.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------ sharding


def test_shards_split_the_list_and_one_merge_writes_the_manifest(tmp_path, faces):
    frames, wav = _read(_videos()[1], seconds=2.4)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        write_video(d / f"{i}_person{i}_000.mp4", frames[i:], audio=wav[i * 640:])
    videos = pp.list_videos([d])
    cfg = pp.PreprocessConfig(segment=SegmentConfig(min_seconds=1.0))
    r0 = _run(videos, tmp_path / "ds", faces, cfg=cfg, shard_index=0, num_shards=2)
    assert r0["dataset_clips"] is None and not (tmp_path / "ds" / "manifest.json").exists()
    with pytest.raises(pp.ShardsUnfinished, match="shards 1 of 2 have not finished"):
        pp.merge(tmp_path / "ds")
    r1 = _run(videos, tmp_path / "ds", faces, cfg=cfg, shard_index=1, num_shards=2)
    assert (r0["videos_this_shard"], r1["videos_this_shard"]) == (2, 1)
    assert not (tmp_path / "ds" / "manifest.json").exists()  # no shard races another to write it
    from data_pipelines.video import cli as pcli

    assert pcli.main(["--merge", "--out", str(tmp_path / "ds")]) == 0
    ds = ClipDataset(tmp_path / "ds")
    assert len(ds) == 3 and {r["identity_id"] for r in ds.index} == {"person0", "person1", "person2"}
    with pytest.raises(Exception, match="other settings"):
        _run(videos, tmp_path / "ds", faces, cfg=pp.PreprocessConfig(detect_size=320))


def test_the_shard_comes_from_the_scheduler_without_jax_distributed():
    from data_pipelines.video.cli import scheduler_shard

    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_NNODES": "8", "SLURM_LOCALID": "0"}
    assert scheduler_shard(None, None, slurm) == (8, 5)
    assert scheduler_shard(4, 1, slurm) == (4, 1)
    assert scheduler_shard(None, None, {}) == (1, 0)


# ------------------------------------------------------------------------------------ units


def test_official_crop_box():
    # 100x100 face in a big frame: up 10 px, then 40% more on each side
    assert official_crop_box((100, 100, 200, 200), 1000, 1000) == (60, 50, 240, 230)
    # near the top-left corner the crop shrinks on every side by the overshoot
    l, t, r, b = official_crop_box((10, 10, 110, 110), 1000, 1000)
    assert l >= 0 and t >= 0 and (r - l) == (b - t)
    # and near the bottom-right corner too (the release let crops run off there)
    l, t, r, b = official_crop_box((880, 880, 990, 990), 1000, 1000)
    assert r <= 1000 and b <= 1000


def test_segment_boundaries():
    lm = np.random.default_rng(0).uniform(0, 1, (68, 2)) * 100 + 50
    n = 200
    lms = [lm + 0.1 * i for i in range(n)]
    dets = [(50, 50, 150, 150)] * n
    thumbs = np.zeros((n, 32, 32), np.float32)
    thumbs[120:] = 0.5  # a shot cut at frame 120
    scores = [cut_score(a, b) for a, b in zip([None] + list(thumbs[:-1]), thumbs)]
    lms[60] = lm + 80   # a jump at 60 (and back at 61)
    dets[90] = lms[90] = None  # a one-frame face loss: bridged
    for k in range(150, 160):  # a ten-frame loss: a boundary
        dets[k] = lms[k] = None
    clips, counts = segment(dets, lms, scores, SegmentConfig(min_seconds=1.0, smooth=1))
    spans = [(c.start, c.stop) for c in clips]
    # frame 60 alone is a one-frame run (too short); 120-150 is 1.2 s
    assert spans == [(0, 60), (61, 120), (120, 150), (160, 200)], spans
    assert counts["shot_cut"] == 1 and counts["box_jump"] == 2 and counts["too_short"] == 1
    assert counts["no_face_frames"] == 10


def test_decode_resamples_50fps_to_25(tmp_path):
    frames = np.zeros((50, 64, 64, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(50) * 5)[:, None, None]
    write_video(tmp_path / "fast.mp4", frames, fps=50, audio=np.zeros(16000, np.float32))
    info = open_video(tmp_path / "fast.mp4")
    out = [f for _, f in frames_25fps(info)]
    assert len(out) == 25
    red = np.array([f[..., 0].mean() for f in out])
    np.testing.assert_allclose(red, np.arange(25) * 10, atol=4)  # every second source frame
    with pytest.raises(SkipVideo, match="missing"):
        open_video(tmp_path / "nope.mp4")


def test_lm3d_template_is_found_in_the_deep3d_layout(tmp_path):
    from scipy.io import savemat

    from data_pipelines.video.estimate import find_lm3d

    ckpt = tmp_path / "Deep3DFaceRecon_pytorch" / "checkpoints" / "model_name" / "epoch_20.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert find_lm3d(ckpt) is None
    bfm = tmp_path / "Deep3DFaceRecon_pytorch" / "BFM"
    bfm.mkdir()
    lm68 = np.random.default_rng(0).normal(size=(68, 3))
    savemat(bfm / "similarity_Lm3D_all.mat", {"lm": lm68})
    found = find_lm3d(ckpt)
    assert found == bfm / "similarity_Lm3D_all.mat"
    np.testing.assert_allclose(align.load_lm3d(found), align.five_points(lm68))
