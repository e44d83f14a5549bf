"""``gohd-eval`` end to end: the real example clips, a ``gohd animate --manifest`` output, a clip over
a minute (drift table), with weight files built from the oracles' manifests (the real files are not
here). The batched run must give the numbers of the per-clip procedures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gohd_jax.eval import cli
from tests.conftest import require_shared

WEIGHT_FILES = {"syncnet": ("syncnet", "syncnet_v2.model"),
                "inception": ("fid_inception", "pt_inception-2015-12-05-6726825d.pth"),
                "arcface": ("arcface", "backbone.pth")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The three weight files as their users hold them (torch's pickle format), random weights by
    the oracles' manifests."""
    from gohd_jax.interop import oracle_weights as ow
    from tests.test_torch_checkpoint import state_dict, tensor, torch_save_legacy

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for key, (oracle, name) in WEIGHT_FILES.items():
        man = ow.load_manifest(require_shared("reference", oracle, "manifest.json"))
        sd = ow.make_state_dict(man, ow.manifest_seed(man))
        paths[key] = folder / name
        paths[key].write_bytes(torch_save_legacy(state_dict(**{k: tensor(v) for k, v in sd.items()})))
    return paths


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv] + ["--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _write_video(path: Path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    from gohd_jax.infer.mp4 import Mp4Writer

    w = Mp4Writer(path, frames.shape[1:3], audio=audio)
    w.write(frames)
    w.close()


def test_usage_errors_name_the_missing_file_and_where_to_get_it(tmp_path, capsys):
    (tmp_path / "gen").mkdir()
    code, _, err = _run(capsys, "--generated", tmp_path / "gen", "--syncnet", tmp_path / "nope.model",
                        "--out", tmp_path / "o")
    assert code == 2 and "nope.model: no such file" in err and "robots.ox.ac.uk" in err
    code, _, err = _run(capsys, "--generated", tmp_path / "gen", "--out", tmp_path / "o")
    assert code == 2 and "nothing to compute" in err
    code, _, err = _run(capsys, "--generated", tmp_path / "gen", "--real", tmp_path / "gen", "--out", tmp_path / "o")
    assert code == 2 and "no videos" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_real_example_clips_with_skips_and_the_batched_numbers_equal_the_per_clip_procedures(
        tmp_path, capsys, weights):
    from data_pipelines.video.faces import FaceModels
    from gohd_jax.eval import clips as clip_io
    from gohd_jax.eval import csim, lse
    from gohd_jax.interop.arcface_weights import load_arcface
    from gohd_jax.interop.syncnet_v2_weights import load_syncnet_v2

    examples = require_shared("assets", "gohd_examples", "driving_videos")
    gen, real = tmp_path / "gen", tmp_path / "real"
    gen.mkdir(), real.mkdir()
    for video in sorted(examples.glob("*.mp4")):
        (gen / video.name).symlink_to(video)
        (real / video.name).symlink_to(video)
    (gen / "broken.mp4").write_text("not a video")
    t = np.arange(25 * 640) / 16000
    _write_video(gen / "blank.mp4", np.full((25, 96, 96, 3), 90, np.uint8), 0.3 * np.sin(2 * np.pi * 200 * t))
    code, out, err = _run(capsys, "--generated", gen, "--real", real, "--out", tmp_path / "eval", "--max-seconds", 1.2,
                          *(f"--{k}={v}" for k, v in weights.items()), "--batch-size", 16)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    s = report["summary"]
    assert set(s) == {"fid", "lse_c", "lse_d", "csim", "psnr", "ssim"}
    assert abs(s["fid"]) < 1e-3  # the same frames on both sides
    assert s["psnr"] == 100.0 and s["ssim"] == pytest.approx(1.0, abs=1e-6)
    rows = {r["name"]: r for r in report["clips"]}
    assert rows["broken"]["error"].startswith("unreadable") and rows["blank"]["error"].startswith("no face")
    assert report["counts"] == {"clips": 4, "clips_scored": 2, "clips_skipped": 2, "frames_read": 145,
                                "fid_generated_frames": 60, "fid_real_frames": 60}
    assert "| FID | LSE-C |" in out and "2 of 4 clips scored" in out
    # The rows were computed from items batched across clips (16 at a time): the per-clip
    # procedures on one clip give the same numbers.
    name = sorted(examples.glob("*.mp4"))[0].stem
    clip = clip_io.read_clip(gen / f"{name}.mp4", max_frames=30)
    track = clip_io.track_face(clip.frames, FaceModels())
    direct = lse.lse_scores(load_syncnet_v2(weights["syncnet"]), clip_io.syncnet_crops(clip.frames, track.boxes),
                            clip.audio)
    assert rows[name]["lse_d"] == pytest.approx(direct.lse_d, rel=1e-5)
    assert rows[name]["lse_c"] == pytest.approx(direct.lse_c, rel=1e-4, abs=1e-5)
    assert rows[name]["lse_offset"] == direct.offset
    model = load_arcface(weights["arcface"])
    faces = csim.align_faces(clip.frames, csim.five_points_from_68(track.landmarks))
    source = csim.align_faces(clip.frames[:1], csim.five_points_from_68(track.landmarks[:1]))
    _, mean = csim.csim(csim.embed(model, source)[0], csim.embed(model, faces))
    assert rows[name]["csim"] == pytest.approx(mean, rel=1e-5)
    assert rows[name]["csim_reference"] == "real video's first frame"
    table = list(csv.DictReader(open(tmp_path / "eval" / "report.csv")))
    assert [r["name"] for r in table] == sorted(rows)


@pytest.mark.slow
def test_a_gohd_animate_manifest_output(tmp_path, capsys, weights):
    """gohd animate's 64 px clips (a copy-the-source animator), scored through its manifest: LSE
    with the clip's own audio track, CSIM against the row's portrait."""
    import librosa
    import soundfile as sf
    from flax import nnx

    from gohd_jax.infer import cli as animate_cli
    from gohd_jax.infer.bundle import random_bundle, save_bundle
    from gohd_jax.models.animator import AnimatorConfig, SemanticAnimator

    source = require_shared("assets", "gohd_examples", "source")
    audio = require_shared("assets", "gohd_examples", "audios", "monalisa.mp3")
    bundle = random_bundle("tiny", window=32)
    bundle.animator = SemanticAnimator(AnimatorConfig.tiny(identity_init=True, release_grid=False), rngs=nnx.Rngs(0))
    save_bundle(bundle, tmp_path / "bundle")
    wav, _ = librosa.load(str(audio), sr=16000, duration=1.6)
    sf.write(str(tmp_path / "a.wav"), wav, 16000)
    (tmp_path / "out").mkdir()
    rows = [["image", "audio", "out"], [str(source / "HDTF_0.jpg"), "a.wav", "out/hdtf.mp4"],
            [str(source / "audrey_crop.jpg"), "a.wav", "out/audrey.mp4"]]
    with open(tmp_path / "jobs.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert animate_cli.main(["animate", "--manifest", str(tmp_path / "jobs.csv"), "--checkpoint",
                             str(tmp_path / "bundle"), "--pose", "still", "--gaze", "forward", "--sampler", "ddim",
                             "--steps", "2"]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "--manifest", tmp_path / "jobs.csv", "--syncnet", weights["syncnet"],
                          "--arcface", weights["arcface"], "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["summary"]["fid"] is None and report["summary"]["psnr"] is None
    assert report["counts"]["clips_scored"] == 2
    for row in report["clips"]:
        assert row["frames"] == 40 and row["csim_reference"] == "source image"
        assert np.isfinite([row["lse_c"], row["lse_d"]]).all() and abs(row["lse_offset"]) <= 15
        assert row["csim"] > 0.5  # the animator copies the portrait's crop


@pytest.mark.slow
def test_drift_table_for_a_clip_over_a_minute(tmp_path, capsys, weights):
    """A 72 s clip made by looping 3 s of an example video: per 30 s, CSIM and brightness; a loop
    does not drift."""
    from gohd_jax.eval import clips as clip_io

    video = sorted(require_shared("assets", "gohd_examples", "driving_videos").glob("*.mp4"))[0]
    clip = clip_io.read_clip(video, max_frames=75)
    small = np.stack([clip_io.resize_bilinear(f, 128, 128) for f in clip.frames])
    frames = np.concatenate([small] * 24)  # 1,800 frames = 72 s
    (tmp_path / "gen").mkdir()
    _write_video(tmp_path / "gen" / "long.mp4", frames, np.tile(clip.audio, 24))
    code, out, err = _run(capsys, "--generated", tmp_path / "gen", "--real", tmp_path / "gen", "--arcface",
                          weights["arcface"], "--csim-every", 25, "--out", tmp_path / "eval")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "eval" / "report.json").read_text())["clips"]
    drift = row["drift"]
    assert [(d["from_s"], d["to_s"]) for d in drift] == [(0, 30), (30, 60), (60, 72)]
    csims = [d["csim"] for d in drift]
    assert max(csims) - min(csims) < 0.02 and min(csims) > 0.5
    bright = [d["brightness"] for d in drift]
    assert max(bright) - min(bright) < 1.0
    assert "## Drift" in (tmp_path / "eval" / "report.md").read_text()


@pytest.mark.slow
def test_descriptor_metrics_measure_the_clips_as_gohd_describe_does(tmp_path, capsys):
    """--deep3d --l2cs: a 1.2 s cut of a real clip against itself: E-FID, P-FID and the pose FD are 0,
    the generated side equals the real side, and the per-clip numbers are those of the clip's
    ``gohd describe`` descriptors."""
    from data_pipelines.video.describe import describe_video
    from data_pipelines.video.estimate import Estimators
    from data_pipelines.video.faces import FaceModels
    from gohd_jax.eval import clips as clip_io
    from gohd_jax.eval.descriptor_metrics import clip_motion
    from gohd_jax.interop import oracle_weights as ow

    files = {}
    for oracle, name in (("deep3d_recon", "epoch_20.npz"), ("l2cs", "l2cs.npz")):
        man = ow.load_manifest(require_shared("reference", oracle, "manifest.json"))
        files[oracle] = tmp_path / name
        np.savez(files[oracle], **ow.make_state_dict(man, ow.manifest_seed(man)))
    lm3d = require_shared("assets", "deep3d", "BFM", "similarity_Lm3D_all.mat")
    video = sorted(require_shared("assets", "gohd_examples", "driving_videos").glob("*.mp4"))[0]
    clip = clip_io.read_clip(video, max_frames=30)
    (tmp_path / "gen").mkdir()
    _write_video(tmp_path / "gen" / "cut.mp4", clip.frames, clip.audio)
    code, out, err = _run(capsys, "--generated", tmp_path / "gen", "--real", tmp_path / "gen", "--deep3d",
                          files["deep3d_recon"], "--l2cs", files["l2cs"], "--lm3d", lm3d, "--detect-every", 1,
                          "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    s = report["summary"]
    for key in ("e_fid", "p_fid", "pose_fd"):
        assert abs(s[key]) < 1e-6, (key, s[key])
    for key in ("pose_diversity", "blink_rate", "gaze_std", "bas"):
        assert s[key] == s["real_" + key]
    assert "| generated | " in out and "| real | " in out
    (row,) = report["clips"]
    est = Estimators.from_files(files["deep3d_recon"], files["l2cs"], lm3d, batch_size=8)
    desc = describe_video(tmp_path / "gen" / "cut.mp4", FaceModels(), est)
    expect = clip_motion(desc.descriptors, desc.controls, desc.audio)
    for key in ("pose_diversity", "gaze_std", "blink_rate"):
        assert row[key] == pytest.approx(expect[key], rel=1e-4, abs=1e-6), key
