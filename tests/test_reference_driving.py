"""Multi-modal driving: controls from reference videos or ``gohd describe`` files (issue 24).

Fast tests use descriptor files made here (random tracks: what the estimators would measure is not
the point); the slow ones describe a real clip of ``gohd_examples`` with the ported estimators
(oracle-manifest weights) through the CLI."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from data_pipelines.video.describe import Description, DescriptionError, fill_gaps
from gohd_jax.infer import cli
from gohd_jax.infer import reference as R
from tests.conftest import require_shared

SR = 16000


def _description(t: int, seed: int = 0, audio_s: float = 0.0) -> Description:
    rng = np.random.default_rng(seed)
    desc = rng.normal(0, 0.1, (t, 72)).astype(np.float32)
    ctrl = rng.normal(0, 0.1, (t, 21)).astype(np.float32)
    ctrl[:, 0] = 0.3 + 0.05 * rng.random(t)
    ctrl[t // 2, 0] = 0.02  # a blink
    return Description(desc, ctrl, np.ones(t, bool), np.tile(np.array([1, 2, 3, 4], np.int32), (t, 1)),
                       np.zeros((t, 68, 2), np.float32), rng.normal(0, 0.1, int(audio_s * SR)).astype(np.float32),
                       f"ref{seed}.mp4")


def test_fit_length_trims_and_plays_ping_pong(caplog):
    track = np.arange(4)[:, None] * np.ones((1, 2))
    np.testing.assert_array_equal(R.fit_length(track, 3)[:, 0], [0, 1, 2])
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(R.fit_length(track, 11)[:, 0], [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2])
    assert "ping-pong" in caplog.text
    np.testing.assert_array_equal(R.fit_length(track[:1], 3)[:, 0], [0, 0, 0])
    with pytest.raises(R.ReferenceError, match="no frames"):
        R.fit_length(track[:0], 3)


def test_pose_modes_and_blink_scaling():
    pose = np.array([[0.1, 0, 0, 1, 2, 3], [0.3, 0, 0, 1, 2, 5]], np.float32)
    pose0 = np.array([0.0, 0.2, 0, 0, 0, 0], np.float32)
    np.testing.assert_allclose(R.pose_track(pose, pose0, "relative"), [pose0, pose0 + [0.2, 0, 0, 0, 0, 2]],
                               atol=1e-7)
    np.testing.assert_array_equal(R.pose_track(pose, pose0, "absolute"), pose)
    with pytest.raises(R.ReferenceError, match="relative or absolute"):
        R.pose_track(pose, pose0, "sideways")
    ratio = np.array([0.3] * 9 + [0.0], np.float32)  # open, open, ..., closed
    np.testing.assert_allclose(R.blink_track(ratio, 0.25), [0.25] * 9 + [0.0], atol=1e-7)
    with pytest.raises(R.ReferenceError, match="never open"):
        R.blink_track(np.zeros(5), 0.25)


def test_description_file_round_trip_and_refusals(tmp_path):
    d = _description(7, audio_s=0.3)
    d.save(tmp_path / "d.npz")
    back = Description.load(tmp_path / "d.npz")
    for k in ("descriptors", "controls", "face_found", "crop_box", "audio"):
        np.testing.assert_array_equal(getattr(back, k), getattr(d, k))
    assert back.source == "ref0.mp4" and len(back) == 7
    np.savez(tmp_path / "bad.npz", descriptors=np.zeros((5, 70)), controls=np.zeros((5, 21)), face_found=np.ones(5))
    with pytest.raises(DescriptionError, match=r"\[T>0,72\]"):
        Description.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DescriptionError, match="made by gohd describe"):
        Description.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DescriptionError, match="not a descriptor file"):
        Description.load(tmp_path / "junk.npz")


def test_lost_frames_are_interpolated():
    values = np.array([[0.0], [9.0], [2.0], [9.0], [4.0]], np.float32)
    found = np.array([True, False, True, False, True])
    np.testing.assert_allclose(fill_gaps(values, found)[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(fill_gaps(values, np.array([False, True, True, True, False]))[:, 0],
                               [9, 9, 2, 9, 9])


@pytest.fixture(scope="module")
def setup(tiny_bundle_dir):
    """The tiny engine, the command's context (no estimators) and a portrait and 1.1 s of speech."""
    from gohd_jax.infer.animate import Animate, Sampling

    args = cli.build_parser().parse_args(["animate", "--checkpoint", str(tiny_bundle_dir)])
    ctx = cli.Context(args)
    engine = Animate(ctx.bundle, sampling=Sampling("ddim", 2), render_batch=8)
    img = np.asarray(Image.new("RGB", (80, 80), (120, 90, 70)))
    t = np.arange(int(1.1 * SR)) / SR
    wav = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return ctx, engine, img, wav


def _drive(setup, d0=None, **values):
    ctx, engine, img, wav = setup
    controls = {**cli.CONTROL_DEFAULTS, **values}
    job, _ = cli.make_job(ctx, "clip", img, wav, where="face", pose_scale=1.0, exp_scale=1.0, seed=3,
                          descriptor_file=d0, **controls)
    return job, engine.drive([job], [engine.features(job)])[0]


@pytest.mark.slow  # ~25 s with the tiny engine's set-up; make test keeps to its 10-minute budget
def test_each_reference_control_changes_only_what_it_names(setup, tmp_path):
    """pose / exp / gaze / blink from a descriptor file, one at a time against the audio-driven
    clip (same seed): the renderer's descriptors change in the named field only, and that field
    is the reference's track (pose rebased on the source's pose; blinks scaled to its eyes)."""
    d0 = np.random.default_rng(5).normal(0, 0.1, 72).astype(np.float32)
    np.save(tmp_path / "d0.npy", d0)
    ref = _description(40, seed=1)
    ref.save(tmp_path / "ref.npz")
    path = str(tmp_path / "ref.npz")
    job, base = _drive(setup, str(tmp_path / "d0.npy"))
    n = len(base["descriptors"])
    assert n == 28  # 1.1 s of audio
    fields = {"exp": slice(0, 64), "pose": slice(64, 70), "gaze": slice(70, 72)}

    def changed(drive):
        d, b = drive["descriptors"], base["descriptors"]
        return {k for k, s in fields.items() if not np.array_equal(d[:, s], b[:, s])}

    _, pose = _drive(setup, str(tmp_path / "d0.npy"), pose=path)
    assert changed(pose) == {"pose"}
    np.testing.assert_allclose(pose["pose"], d0[64:70] + ref.pose[:n] - ref.pose[:1], atol=1e-6)
    _, absolute = _drive(setup, str(tmp_path / "d0.npy"), pose=path, pose_mode="absolute")
    np.testing.assert_allclose(absolute["pose"], ref.pose[:n], atol=1e-7)
    _, gaze = _drive(setup, str(tmp_path / "d0.npy"), gaze=path)
    assert changed(gaze) == {"gaze"}
    np.testing.assert_array_equal(gaze["gaze"], ref.gaze[:n])
    _, exp = _drive(setup, str(tmp_path / "d0.npy"), exp=path)
    assert changed(exp) == {"exp"}
    np.testing.assert_array_equal(exp["exp"], ref.exp[:n])
    blink_job, blink = _drive(setup, str(tmp_path / "d0.npy"), blink=path)
    assert changed(blink) == {"exp"}  # blinks live in the expression coefficients
    want_eye = R.blink_track(ref.blink[:n], float(blink_job.control0[0]))
    np.testing.assert_allclose(blink["controls"][:, 0], want_eye, atol=1e-6)
    assert not np.allclose(base["controls"][:, 0], want_eye, atol=1e-3)


@pytest.mark.slow  # ~5 s on the tiny engine; make test keeps to its 10-minute budget
def test_drive_takes_all_four_and_a_flag_overrides_one(setup, tmp_path):
    """--drive = pose, exp, gaze and blinks from one reference; --gaze B beside it takes gaze from
    B; a reference shorter than the clip plays ping-pong."""
    a, b = _description(40, seed=1), _description(12, seed=2)
    a.save(tmp_path / "a.npz"), b.save(tmp_path / "b.npz")
    args = cli.build_parser().parse_args(["animate", "--drive", str(tmp_path / "a.npz"), "--gaze",
                                          str(tmp_path / "b.npz")])
    values = cli.control_values(args)
    assert values == {"pose": str(tmp_path / "a.npz"), "exp": str(tmp_path / "a.npz"),
                      "gaze": str(tmp_path / "b.npz"), "blink": str(tmp_path / "a.npz")}
    _, drive = _drive(setup, None, **values)
    n = len(drive["descriptors"])
    np.testing.assert_array_equal(drive["exp"], a.exp[:n])
    np.testing.assert_array_equal(drive["gaze"], R.fit_length(b.gaze, n))
    np.testing.assert_allclose(drive["pose"], a.pose[:n] - a.pose[:1], atol=1e-6)  # neutral source pose
    # a manifest row's own columns beat the command line's, its drive beats the flags
    row = {"drive": "r.npz", "pose": "still"}
    assert cli.control_values(args, row) == {"pose": "still", "exp": "r.npz", "gaze": "r.npz", "blink": "r.npz"}


def test_manifest_resolves_reference_columns(tmp_path):
    from gohd_jax.infer.manifest import iter_rows

    (tmp_path / "jobs.csv").write_text("image,audio,out,drive,gaze,exp\nf.png,a.wav,o.mp4,ref.mp4,left,audio\n")
    row = next(iter_rows(tmp_path / "jobs.csv"))
    assert row.values["drive"] == str(tmp_path / "ref.mp4")
    assert row.values["gaze"] == "left" and row.values["exp"] == "audio"


def test_video_references_need_the_estimators(tmp_path, capsys):
    img = tmp_path / "face.png"
    Image.new("RGB", (64, 64)).save(img)
    code = cli.main(["animate", "--image", str(img), "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(tmp_path),
                     "--drive", str(tmp_path / "talk.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "--pose" in err and "needs the estimator weights: give --deep3d" in err
    code = cli.main(["animate", "--image", str(img), "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(tmp_path),
                     "--audio", str(tmp_path / "a.wav"), "--blink", "sideways"])
    assert code == 2 and "--blink 'sideways'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def estimator_files(tmp_path_factory):
    """The ported estimators' weights (oracle manifests) as .npz files, and the 3D template."""
    from gohd_jax.interop import oracle_weights as ow

    root = tmp_path_factory.mktemp("estimators")
    files = {}
    for kind, name in (("deep3d_recon", "deep3d"), ("l2cs", "l2cs")):
        man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
        files[name] = root / f"{name}.npz"
        np.savez(files[name], **ow.make_state_dict(man, ow.manifest_seed(man)))
    files["lm3d"] = require_shared("assets", "deep3d", "BFM", "similarity_Lm3D_all.mat")
    return files


def _cut(tmp_path, seconds: float):
    """The first ``seconds`` of a real talking-head video (with its audio) and its first frame."""
    from tests.test_preprocess import _read, write_video

    video = sorted(require_shared("assets", "gohd_examples", "driving_videos").glob("*.mp4"))[0]
    frames, wav = _read(video, seconds=seconds)
    write_video(tmp_path / "cut.mp4", frames, audio=wav)
    Image.fromarray(frames[0]).save(tmp_path / "first.png")
    return tmp_path / "cut.mp4", tmp_path / "first.png", len(frames)


@pytest.mark.slow  # ~1.5 min: the two ResNet-50 estimators on 30 frames, twice
def test_describe_a_real_clip_then_drive_with_it(tmp_path, estimator_files, tiny_bundle_dir, capsys, monkeypatch,
                                                setup):
    """gohd describe on a 1.2 s cut of a real video: 30 frames of descriptors, face found on each,
    one crop box, the clip's audio. Then gohd animate --drive VIDEO with the clip's own first frame
    as the source: the renderer's pose is the described pose track rebased on the source's pose
    (within 1e-5), its expression and gaze are the described ones, and the clip carries the
    video's audio."""
    from gohd_jax.infer.animate import Animate

    cut, first, t = _cut(tmp_path, 1.2)
    est = ["--deep3d", str(estimator_files["deep3d"]), "--l2cs", str(estimator_files["l2cs"]), "--lm3d",
           str(estimator_files["lm3d"])]
    code = cli.main(["describe", str(cut), "--out", str(tmp_path / "cut.npz"), *est])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{t} frames" in out and "face lost in 0" in out
    desc = Description.load(tmp_path / "cut.npz")
    assert len(desc) == t and desc.face_found.all() and np.abs(desc.exp).max() > 0
    assert len(np.unique(desc.crop_box, axis=0)) == 1
    assert abs(len(desc.audio) - t * 640) <= 640
    # each control from the real clip's description changes only its own field
    _, base = _drive(setup)
    fields = {"exp": slice(0, 64), "pose": slice(64, 70), "gaze": slice(70, 72)}
    for control, field in (("pose", "pose"), ("exp", "exp"), ("gaze", "gaze"), ("blink", "exp")):
        drive = _drive(setup, None, **{control: str(tmp_path / "cut.npz")})[1]
        changed = {k for k, sl in fields.items()
                   if not np.array_equal(drive["descriptors"][:, sl], base["descriptors"][:, sl])}
        assert changed == {field}, (control, changed)

    seen = []
    run = Animate.run

    def spy(self, jobs, writers, feats=None):
        drives, times = run(self, jobs, writers, feats)
        seen.append((jobs[0], drives[0]))
        return drives, times

    monkeypatch.setattr(Animate, "run", spy)
    code = cli.main(["animate", "--image", str(first), "--out", str(tmp_path / "re.mp4"), "--checkpoint",
                     str(tiny_bundle_dir), "--drive", str(cut), "--sampler", "ddim", "--steps", "2", *est])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "with the audio of cut.mp4" in out
    job, drive = seen[0]
    assert len(drive["descriptors"]) == t
    np.testing.assert_allclose(drive["pose"], job.descriptor0[64:70] + desc.pose - desc.pose[:1], atol=1e-5)
    np.testing.assert_allclose(drive["exp"], desc.exp, atol=1e-5)
    np.testing.assert_allclose(drive["gaze"], desc.gaze, atol=1e-5)


@pytest.mark.slow  # ~10 s on the tiny engine; make test keeps to its 10-minute budget
def test_silent_audio_renders_an_idle_clip(setup, tmp_path, capsys, tiny_bundle_dir):
    """Silence (zeros, or RMS below -60 dBFS) is not an error: the lips stay at the source's exp0;
    with blinks on, the expression moves only by the eye control's effect; pose and gaze are
    generated as for speech. Under one frame of audio stays an error."""
    ctx, engine, img, _ = setup
    d0 = np.random.default_rng(5).normal(0, 0.1, 72).astype(np.float32)
    np.save(tmp_path / "d0.npy", d0)
    quiet = np.random.default_rng(0).normal(0, 3e-4, int(1.1 * SR)).astype(np.float32)  # -70 dBFS
    assert cli.is_silent(quiet) and cli.is_silent(np.zeros(100)) and not cli.is_silent(setup[3])
    runs = {}
    for blink in ("off", "on"):
        job = cli.make_job(ctx, "idle", img, quiet, where="face", pose_scale=1.0, exp_scale=1.0, seed=3,
                           descriptor_file=str(tmp_path / "d0.npy"), **{**cli.CONTROL_DEFAULTS, "blink": blink})[0]
        assert job.controls.idle
        runs[blink] = engine.drive([job], [engine.features(job)])[0]
    np.testing.assert_array_equal(runs["off"]["exp"], np.tile(d0[:64], (len(runs["off"]["exp"]), 1)))
    moved = np.abs(runs["on"]["exp"] - d0[:64]).max(axis=1)
    assert moved.max() > 1e-4  # the eye control moves the expression ...
    assert np.ptp(runs["on"]["pose"], axis=0).max() > 0  # ... and the pose is generated as for speech

    import soundfile as sf

    img_path = tmp_path / "face.png"
    Image.fromarray(img).save(img_path)
    sf.write(str(tmp_path / "blip.wav"), np.ones(500, np.float32) * 0.1, SR)
    code = cli.main(["animate", "--image", str(img_path), "--audio", str(tmp_path / "blip.wav"), "--out",
                     str(tmp_path / "blip.mp4"), "--checkpoint", str(tiny_bundle_dir)])
    assert code == 2 and "it needs at least one frame" in capsys.readouterr().err


@pytest.mark.slow  # ~10 s: a whole gohd animate run
def test_cli_silent_audio_exits_0_with_one_warning(tmp_path, capsys, caplog, tiny_bundle_dir):
    import soundfile as sf

    Image.new("RGB", (80, 80), (120, 90, 70)).save(tmp_path / "face.png")
    sf.write(str(tmp_path / "silent.wav"), np.zeros(SR // 2, np.float32), SR)
    code = cli.main(["animate", "--image", str(tmp_path / "face.png"), "--audio", str(tmp_path / "silent.wav"),
                     "--out", str(tmp_path / "idle.mp4"), "--checkpoint", str(tiny_bundle_dir), "--sampler", "ddim",
                     "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "idle.mp4").exists(), err
    assert caplog.text.count("rendering an idle clip") == 1


@pytest.mark.slow  # ~8 s on the tiny engine; make test keeps to its 10-minute budget
def test_emotion_keeps_the_audio_lips_and_adds_the_reference_residual(setup, tmp_path):
    """--emotion REF: exp = stage 1 of the clip's own audio + (REF's expression - stage 1 of REF's
    own audio from REF's first frame); pose and gaze untouched; scale 0 leaves stage 1's lips;
    two references blend linearly by --emotion-mix; a reference without audio is read against
    stage 1 of silence."""
    ctx, engine, img, wav = setup
    a, b = _description(40, seed=1, audio_s=1.6), _description(20, seed=2)  # b: no audio track
    a.save(tmp_path / "a.npz"), b.save(tmp_path / "b.npz")
    pa, pb = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    _, base = _drive(setup)

    def emo(value, **kw):
        return _drive(setup, None, emotion=value, **kw)[1]

    one = emo(pa)
    n = len(one["exp"])
    np.testing.assert_array_equal(one["pose"], base["pose"])
    np.testing.assert_array_equal(one["gaze"], base["gaze"])
    from gohd_jax.infer.animate import clip_features

    cond = ctx.bundle.pose_spec.condition
    lips = engine.stage1_expression([clip_features(wav, cond)["mel80"]], [n], np.zeros((1, 64), np.float32))[0]
    ref_lips = engine.stage1_expression([clip_features(a.audio, cond)["mel80"]], [40], a.exp[:1])[0]
    np.testing.assert_allclose(one["exp"], lips + (a.exp - ref_lips)[:n], atol=1e-5)
    np.testing.assert_allclose(emo(pa, emotion_scale=0.0)["exp"], lips, atol=1e-6)
    silent_lips = engine.stage1_expression([clip_features(np.zeros(20 * 640, np.float32), cond)["mel80"]], [20],
                                           b.exp[:1])[0]
    np.testing.assert_allclose(emo(pb)["exp"], lips + R.fit_length(b.exp - silent_lips, n), atol=1e-5)
    mixed = emo(f"{pa},{pb}", emotion_mix=0.25)["exp"]
    np.testing.assert_allclose(mixed, 0.75 * one["exp"] + 0.25 * emo(pb)["exp"], atol=1e-5)
    with pytest.raises(cli.UsageError, match="give one of them"):
        _drive(setup, None, emotion=pa, exp=pa)
    with pytest.raises(cli.UsageError, match="0..1"):
        _drive(setup, None, emotion=f"{pa},{pb}", emotion_mix=1.5)


def test_references_are_loaded_once_per_path(tmp_path, monkeypatch):
    """Many rows naming one reference read (or describe) it once; a video without the estimators
    is refused with one line, before anything is decoded."""
    _description(10).save(tmp_path / "r.npz")
    refs = R.References()
    loads = []
    load = refs._load
    monkeypatch.setattr(refs, "_load", lambda ref: loads.append(ref) or load(ref))
    import threading

    threads = [threading.Thread(target=refs.get, args=(R.Reference(str(tmp_path / "r.npz")),)) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(refs.get(R.Reference(str(tmp_path / "r.npz")))) == 10 and len(loads) == 1
    (tmp_path / "v.mp4").write_bytes(b"\0" * 10)
    with pytest.raises(R.ReferenceError, match="needs the estimator weights"):
        refs.get(R.Reference(str(tmp_path / "v.mp4")))
    with pytest.raises(R.ReferenceError, match="no such reference file"):
        refs.get(R.Reference(str(tmp_path / "missing.npz")))


@pytest.mark.slow  # ~30 s: a manifest of three rows rendered
def test_manifest_rows_take_reference_columns(tmp_path, tiny_bundle_dir, monkeypatch):
    """Batch mode: a row's drive / emotion / pose columns (descriptor files, relative paths) reach
    its clip's controls; every row renders."""
    import json

    import soundfile as sf

    from gohd_jax.infer.animate import Animate

    _description(40, seed=1, audio_s=1.6).save(tmp_path / "a.npz")
    _description(12, seed=2).save(tmp_path / "b.npz")
    Image.new("RGB", (80, 80), (120, 90, 70)).save(tmp_path / "face.png")
    t = np.arange(int(0.8 * SR)) / SR
    sf.write(str(tmp_path / "s.wav"), (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), SR)
    (tmp_path / "out").mkdir()
    (tmp_path / "jobs.csv").write_text("image,audio,out,drive,emotion,pose\n"
                                       "face.png,s.wav,out/d.mp4,a.npz,,\n"
                                       "face.png,s.wav,out/e.mp4,,a.npz,b.npz\n"
                                       "face.png,s.wav,out/p.mp4,,,\n")
    seen = {}
    run = Animate.run

    def spy(self, jobs, writers, feats=None):
        for j in jobs:
            seen[j.name] = j.controls
        return run(self, jobs, writers, feats)

    monkeypatch.setattr(Animate, "run", spy)
    code = cli.main(["animate", "--manifest", str(tmp_path / "jobs.csv"), "--checkpoint", str(tiny_bundle_dir),
                     "--sampler", "ddim", "--steps", "2", "--batch-clips", "3"])
    assert code == 0
    results = [json.loads(x) for x in (tmp_path / "jobs.results.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in results) == ["ok"] * 3
    d, e, p = seen["out/d.mp4"], seen["out/e.mp4"], seen["out/p.mp4"]
    assert isinstance(d.exp, np.ndarray) and isinstance(d.pose, np.ndarray) and not d.emotion
    assert e.exp is None and len(e.emotion) == 1 and isinstance(e.pose, np.ndarray)
    assert p.exp is None and p.pose == "generated" and not p.emotion


@pytest.mark.slow  # ~2 min: a synthetic set and 150 stage-1 steps
def test_emotion_follows_the_reference_and_lips_follow_the_audio(tmp_path):
    """The synthetic set's smile and brow furrow drift slowly, apart from the speech; its jaw
    follows the speech. Stage 1 (tiny, 150 steps, no expert) drives held-out clips with
    --emotion set to another held-out clip: the output's smile and furrow correlate with the
    reference's, clearly above the swapped pairing (a third clip's), and its jaw with the clip's
    own audio-driven ground truth, clearly above the reference's jaw (this test, 8 held-out clips,
    2026-12-07 at 150 steps: smile 0.87 vs 0.07, furrow 0.79 vs -0.13, jaw 0.94 vs 0.16; at 300
    steps before the EMA warm-up, 2026-12-06: 0.89 vs 0.07, 0.79 vs -0.12, 0.86 vs 0.46)."""
    import dataclasses

    from data_pipelines.records import ClipDataset
    from data_pipelines.synthetic.cli import write_synthetic_dataset
    from data_pipelines.synthetic.generator import SynthConfig
    from data_pipelines.synthetic.render import EXP_BROW_FURROW, EXP_JAW, EXP_SMILE
    from gohd_jax.infer.animate import Animate, ClipJob, Controls, EmotionRef, Sampling
    from gohd_jax.infer.bundle import random_bundle
    from gohd_jax.train.restore import load_model
    from gohd_jax.train.tasks import get_task_class
    from gohd_jax.train.trainer import Trainer
    from tests.test_expression import _expr_config

    data = tmp_path / "data"
    write_synthetic_dataset(data, SynthConfig(size=32, seconds=8.0, num_identities=8, seed=0), 32,
                            clips_per_shard=16, workers=0)
    cfg = _expr_config("stage1_tiny", data, num_steps=150, eval_every=150, checkpoint_every=150)
    Trainer(get_task_class(cfg.task_name)(cfg), cfg, tmp_path / "s1").train()
    stage1 = load_model(tmp_path / "s1", "expression", expect_task="expression_stage1")
    engine = Animate(dataclasses.replace(random_bundle("tiny"), expression=stage1), sampling=Sampling("ddim", 2))
    from data_pipelines import pipelines

    clips = ClipDataset(data)
    held = [clips[i] for i in pipelines.select_clips(clips.index, split="heldout", heldout_fraction=0.25,
                                                     min_frames=30)]
    assert len(held) >= 6

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 1e-6 and np.std(b) > 1e-6 else np.nan

    scores = {k: [] for k in ("smile", "smile_swapped", "furrow", "furrow_swapped", "jaw", "jaw_swapped")}
    for k, clip in enumerate(held):
        ref, other = held[(k + 1) % len(held)], held[(k + 2) % len(held)]
        controls = Controls(pose="still", gaze=np.zeros(2, np.float32), blink=False,
                            emotion=(EmotionRef(ref["descriptors"][:, :64], ref["audio"], 1.0, f"ref{k}"),))
        job = ClipJob("clip", np.zeros((64, 64, 3), np.uint8), clip["descriptors"][0], clip["controls"][0],
                      clip["audio"], controls)
        out = engine.drive([job], [engine.features(job)])[0]["exp"]
        n = min(len(out), len(ref["descriptors"]), len(other["descriptors"]), len(clip["descriptors"]))
        for name, dim in (("smile", EXP_SMILE), ("furrow", EXP_BROW_FURROW)):
            scores[name].append(corr(out[:n, dim], ref["descriptors"][:n, dim]))
            scores[f"{name}_swapped"].append(corr(out[:n, dim], other["descriptors"][:n, dim]))
        scores["jaw"].append(corr(out[:n, EXP_JAW], clip["descriptors"][:n, EXP_JAW]))
        scores["jaw_swapped"].append(corr(out[:n, EXP_JAW], ref["descriptors"][:n, EXP_JAW]))
    mean = {k: float(np.nanmean(v)) for k, v in scores.items()}
    print({k: round(v, 3) for k, v in mean.items()})
    for name, margin in (("smile", 0.3), ("furrow", 0.3), ("jaw", 0.25)):
        assert mean[name] > mean[f"{name}_swapped"] + margin, mean
    assert mean["jaw"] > 0.8 and mean["smile"] > 0.6, mean


def test_describe_fills_and_counts_frames_where_the_face_is_lost(tmp_path, caplog):
    """A synthetic talking head (no audio track) with three blank frames: every frame gets
    descriptors, the blank ones flagged and interpolated from their neighbours, the log counts
    them; one crop for the whole video."""
    from data_pipelines.video.describe import describe_video
    from data_pipelines.video.faces import FaceModels
    from tests.test_preprocess import FakeEstimators, _synthetic_talking_head, write_video

    frames, _ = _synthetic_talking_head(0.8)
    frames = frames.copy()
    frames[[5, 6, 12]] = 0
    write_video(tmp_path / "v.mp4", frames)
    with caplog.at_level(logging.WARNING):
        d = describe_video(tmp_path / "v.mp4", FaceModels(), FakeEstimators())
    t = len(frames)
    assert len(d) == t and len(d.audio) == 0
    np.testing.assert_array_equal(np.flatnonzero(~d.face_found), [5, 6, 12])
    assert "lost in 3 of 20 frames" in caplog.text
    np.testing.assert_allclose(d.descriptors[12], (d.descriptors[11] + d.descriptors[13]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.descriptors[5], d.descriptors[4] + (d.descriptors[7] - d.descriptors[4]) / 3,
                               rtol=1e-5, atol=1e-6)
    assert len(np.unique(d.crop_box, axis=0)) == 1
