"""gohd animate / convert-official / export, on tiny random-init models (a saved bundle).

Random weights make meaningless faces; what is tested is the plumbing: frame counts, audio
muxing, determinism, that every control changes only what it names, batching independence,
streaming windows, bad inputs (one line, non-zero exit), the manifest mode, the official
checkpoint conversion (torch-free, payloads refused) and the StableHLO export.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gohd_jax.infer import cli
from gohd_jax.infer.animate import Animate, ClipJob, Controls, Sampling, num_frames
from gohd_jax.infer.batch_render import BatchRenderer
from gohd_jax.infer.bundle import Bundle, BundleError, load_bundle, random_bundle
from tests.conftest import require_shared

SR = 16000


def _tiny_motion(ch: int, seed: int = 0):
    from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig

    cfg = dataclasses.replace(MotionDenoiserConfig.tiny(ch, ch), local_dim=320)
    return MotionDenoiser(cfg, rngs=nnx.Rngs(seed))


def _tiny_bundle() -> Bundle:
    return random_bundle("tiny", window=32)


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle_dir):
    return tiny_bundle_dir


@pytest.fixture(scope="module")
def engine(bundle_dir):
    return Animate(load_bundle(bundle_dir), sampling=Sampling("ddim", 4), render_batch=8)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * env * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32)


def _job(seconds=1.3, seed=0, **controls) -> ClipJob:
    src = np.asarray(Image.new("RGB", (64, 64), (120, 90, 70)))
    d0 = np.zeros(72, np.float32)
    d0[64:70] = [0.05, -0.02, 0.01, 0.0, 0.0, 0.0]
    return ClipJob("clip", src, d0, np.full(21, 0.2, np.float32), _speech(seconds, seed), Controls(**controls),
                   seed=seed)


def _drive(engine, *jobs):
    return engine.drive(list(jobs), [engine.features(j) for j in jobs])


def _write_wav(path, wav):
    import soundfile as sf

    sf.write(str(path), wav, SR)
    return path


def _decode(path):
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = [s for s in c.streams if s.type == "audio"]
    return np.stack(frames), audio


# ------------------------------------------------------------------------------------ controls


def test_every_control_changes_only_what_it_names(engine):
    base = _drive(engine, _job())[0]
    n = num_frames(len(_job().wav))
    assert base["descriptors"].shape == (n, 72) and n == math.ceil(1.3 * 25)
    gaze = _drive(engine, _job(gaze=np.array([0.2, 0.0], np.float32)))[0]
    np.testing.assert_array_equal(gaze["pose"], base["pose"])
    np.testing.assert_array_equal(gaze["exp"], base["exp"])
    assert np.all(gaze["gaze"] == np.array([0.2, 0.0], np.float32)) and not np.array_equal(gaze["gaze"], base["gaze"])
    still = _drive(engine, _job(pose="still"))[0]
    np.testing.assert_array_equal(still["exp"], base["exp"])
    np.testing.assert_array_equal(still["gaze"], base["gaze"])
    assert np.all(still["pose"] == _job().descriptor0[64:70])
    noblink = _drive(engine, _job(blink=False))[0]
    np.testing.assert_array_equal(noblink["pose"], base["pose"])
    np.testing.assert_array_equal(noblink["gaze"], base["gaze"])
    assert np.all(noblink["controls"][:, 0] == np.float32(0.2)), "eyes held at the source's blink ratio"
    assert not np.all(base["controls"][:, 0] == np.float32(0.2))
    scaled = _drive(engine, _job(pose_scale=1.2, exp_scale=1.5))[0]
    np.testing.assert_allclose(scaled["pose"], base["pose"] * 1.2, rtol=1e-6)
    np.testing.assert_allclose(scaled["exp"], base["exp"] * 1.5, rtol=1e-6)
    np.testing.assert_array_equal(scaled["gaze"], base["gaze"])
    track = np.tile(np.linspace(-0.1, 0.1, n)[:, None], (1, 6)).astype(np.float32)
    filed = _drive(engine, _job(pose=track))[0]
    np.testing.assert_array_equal(filed["pose"], track)
    np.testing.assert_array_equal(filed["exp"], base["exp"])


def test_seed_determinism_and_batch_independence(engine):
    a = _drive(engine, _job(seed=5))[0]
    again = _drive(engine, _job(seed=5))[0]
    np.testing.assert_array_equal(a["descriptors"], again["descriptors"])
    other = _drive(engine, _job(seed=6))[0]
    assert not np.array_equal(a["pose"], other["pose"])
    # the same clip inside a batch, next to a longer one: the same numbers
    batched = _drive(engine, _job(seed=5), _job(seconds=2.9, seed=7))[0]
    np.testing.assert_allclose(batched["descriptors"], a["descriptors"], rtol=1e-5, atol=1e-6)


def test_long_audio_runs_in_windows_with_one_compile(engine):
    job = _job(seconds=5.0)  # 125 frames: several 32-frame motion and 30-frame expression windows
    d = _drive(engine, job)[0]
    assert d["descriptors"].shape == (125, 72) and np.isfinite(d["descriptors"]).all()
    before = (engine.pose_sampler.cache_size(), engine.expression.cache_size())
    _drive(engine, _job(seconds=7.1))
    assert (engine.pose_sampler.cache_size(), engine.expression.cache_size()) == before


_MEMORY_PROBE = """
import json, resource, tracemalloc
from tests.test_animate import Animate, Sampling, _job, _tiny_bundle
engine = Animate(_tiny_bundle(), sampling=Sampling("ddim", 4), render_batch=8)
class Count:
    frames = 0
    def write(self, f):
        Count.frames += len(f)
hw = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
out = {}
for seconds in (10, 10):
    engine.run([_job(seconds=seconds)], [Count()])
out["peak_rss_10s"] = hw()
engine.run([_job(seconds=60)], [Count()])
out["peak_rss_60s"] = hw()
for seconds in (10, 60):  # the Python-level (numpy) peak of one run: deterministic
    job = _job(seconds=seconds)
    tracemalloc.start()
    engine.run([job], [Count()])
    out[f"traced_peak_{seconds}s"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
out["frames"] = Count.frames
print(json.dumps(out))
"""


@pytest.mark.slow  # ~1.5 min: a fresh engine process
def test_host_memory_stays_flat_from_10_to_60_seconds_of_audio(monkeypatch):
    """Engine level, a fresh process: the peak RSS after two 10 s clips grows by under 50 MB over
    a 60 s clip (1,500 frames, every frame handed to the writer), and the peak of the numpy
    allocations of one run grows by under 16 MB from 10 s to 60 s (measured 2026-12-06: RSS +19
    MB, traced +12.6 MB, most of it the 60 s clip's own waveform copy and mel). The audio front
    end runs its STFTs a chunk at a time for this; the control: with one whole-clip STFT the
    front end's own peak grows by about 45 MB more."""
    import json
    import os
    import subprocess
    import sys
    import tracemalloc
    from pathlib import Path

    import data_pipelines.audio as audio

    root = Path(__file__).resolve().parents[1]
    # glibc's per-thread arenas keep freed memory as XLA's threads touch more of them (RSS then
    # wanders by +-30 MB from run to run whatever the clip length); two arenas take that out.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["frames"] == 2 * 250 + 1500 + 250 + 1500
    assert m["peak_rss_60s"] - m["peak_rss_10s"] < 50, m
    assert m["traced_peak_60s"] - m["traced_peak_10s"] < 16, m

    def front_end_growth() -> float:  # MiB more at 60 s than at 10 s, both mel streams
        peaks = []
        for seconds in (10, 60):
            wav = _speech(seconds)
            tracemalloc.start()
            audio.wav2lip_mel(wav), audio.mel_100hz(wav)
            peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.stop()
        return peaks[1] - peaks[0]

    chunked = front_end_growth()
    monkeypatch.setattr(audio, "STFT_CHUNK_FRAMES", 10**9)
    whole = front_end_growth()
    assert whole > chunked + 30, (chunked, whole)


def test_frames_stream_out_as_they_are_rendered(engine, monkeypatch):
    """A 30 s clip's frames reach the writer batch by batch as they are rendered, not at the end:
    the writer (which keeps no frames) is called between render calls, at most one call behind
    (the next call is dispatched before this one's frames are fetched)."""
    events = []

    class Writer:
        n = 0

        def write(self, frames):
            self.n += len(frames)
            events.append("w")

    render = engine._render

    def counting_render(*args):
        events.append("r")
        return render(*args)

    monkeypatch.setattr(engine, "_render", counting_render)
    w = Writer()
    engine.run([_job(seconds=30.0)], [w])
    assert w.n == 30 * 25
    renders = [i for i, e in enumerate(events) if e == "r"]
    assert len(renders) >= w.n // engine.render_batch
    assert renders[1] < events.index("w") < renders[2]  # the first batch's frames: out after call 2 is queued
    assert "w" in events[renders[-1]:]  # and the last batch's right after the last render


# ------------------------------------------------------------------------------------ CLI


def _animate(capsys, *argv):
    code = cli.main(["animate", *map(str, argv)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_animate_writes_exact_frames_with_audio(tmp_path, bundle_dir, capsys):
    img = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(img)
    wav = _write_wav(tmp_path / "speech.wav", _speech(1.01))
    out = tmp_path / "out.mp4"
    code, stdout, err = _animate(capsys, "--image", img, "--audio", wav, "--out", out, "--checkpoint",
                                 bundle_dir, "--sampler", "ddim", "--steps", "3", "--seed", "4", "--gaze", "0.1,-0.2")
    assert code == 0, err
    assert f"{math.ceil(1.01 * 25)} frames" in stdout
    frames, audio = _decode(out)
    assert len(frames) == math.ceil(1.01 * 25) and frames.shape[1:] == (64, 64, 3)
    assert len(audio) == 1 and audio[0].sample_rate == SR
    # The muxed audio is the input speech: its length (to AAC's priming / padding, under 1024
    # samples), and its content (AAC is lossy: correlation with the input at the best lag).
    import av

    with av.open(str(out)) as c:
        got = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float64)
    want = np.asarray(_speech(1.01), np.float64)
    assert abs(len(got) - len(want)) < 1024 + 1024, (len(got), len(want))
    lags = range(0, 2048 + 1)
    corr = max(np.corrcoef(got[k:k + len(want) - 2048], want[:len(want) - 2048])[0, 1] for k in lags)
    assert corr > 0.95, corr


@pytest.fixture
def descriptor0_seen(monkeypatch):
    """The descriptor0 of every clip ``Animate.run`` is given, in order (a spy on the engine)."""
    seen = []
    real_run = Animate.run

    def spy(self, jobs, writers):
        seen.extend(j.descriptor0.copy() for j in jobs)
        return real_run(self, jobs, writers)

    monkeypatch.setattr(Animate, "run", spy)
    return seen


def test_cli_source_descriptors_reach_the_engine_and_the_log(tmp_path, bundle_dir, capsys, caplog, descriptor0_seen):
    """--source-descriptors FILE.npy: its [72] values are the clip's descriptor0 (the engine sees
    them), the log says where they came from; without it, neutral zeros, and the log says so."""
    import logging

    seen = descriptor0_seen
    img = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(img)
    wav = _write_wav(tmp_path / "speech.wav", _speech(0.4))
    d0 = np.random.default_rng(2).normal(0, 0.1, 72).astype(np.float32)
    np.save(tmp_path / "d0.npy", d0)
    with caplog.at_level(logging.INFO, logger="gohd"):
        code, _, err = _animate(capsys, "--image", img, "--audio", wav, "--out", tmp_path / "a.mp4", "--checkpoint",
                                bundle_dir, "--sampler", "ddim", "--steps", "2", "--source-descriptors",
                                tmp_path / "d0.npy")
        assert code == 0, err
        code, _, err = _animate(capsys, "--image", img, "--audio", wav, "--out", tmp_path / "b.mp4", "--checkpoint",
                                bundle_dir, "--sampler", "ddim", "--steps", "2")
        assert code == 0, err
    np.testing.assert_array_equal(seen[0], d0)
    np.testing.assert_array_equal(seen[1], np.zeros(72, np.float32))
    assert "source descriptors: file d0.npy" in caplog.text and "source descriptors: neutral" in caplog.text


@pytest.mark.slow  # ~1 min: two ResNet-50s compiled at batch 1
def test_cli_estimators_measure_the_source_descriptors(tmp_path, bundle_dir, capsys, caplog, descriptor0_seen):
    """--deep3d/--l2cs/--lm3d (the oracle manifests' weights as .npz, a real portrait): the clip's
    descriptor0 is what the ported estimators measure on the detected face's crop (exp 64, pose
    6, gaze 2), and the log says the estimators gave it."""
    import logging

    from data_pipelines.video import align
    from data_pipelines.video.estimate import Estimators
    from data_pipelines.video.faces import FaceModels
    from gohd_jax.infer.source import load_image, prepare_source
    from gohd_jax.interop import oracle_weights as ow

    files = {}
    for kind, name in (("deep3d_recon", "deep3d"), ("l2cs", "l2cs")):
        man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], **ow.make_state_dict(man, ow.manifest_seed(man)))
    lm3d = require_shared("assets", "deep3d", "BFM", "similarity_Lm3D_all.mat")
    portrait = require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg")
    seen = descriptor0_seen
    wav = _write_wav(tmp_path / "speech.wav", _speech(0.3))
    with caplog.at_level(logging.INFO, logger="gohd"):
        code, _, err = _animate(capsys, "--image", portrait, "--audio", wav, "--out", tmp_path / "a.mp4",
                                "--checkpoint", bundle_dir, "--sampler", "ddim", "--steps", "2",
                                "--deep3d", files["deep3d"], "--l2cs", files["l2cs"], "--lm3d", lm3d)
    assert code == 0, err
    assert "face found; source descriptors: estimators" in caplog.text
    src = prepare_source(load_image(portrait), FaceModels(), where=str(portrait))
    est = Estimators.from_files(files["deep3d"], files["l2cs"], lm3d, batch_size=1)
    exp, pose, gaze = est(align.deep3d_input(src.crop, src.landmarks, est.lm3d)[None],
                          align.l2cs_input(src.crop, align.gaze_box(src.landmarks))[None])
    want = np.concatenate([exp[0], pose[0], gaze[0]])
    assert len(seen) == 1 and np.abs(want).max() > 0
    np.testing.assert_allclose(seen[0], want, rtol=1e-6, atol=1e-7)


class _Frames:
    def __init__(self):
        self.frames = []

    def write(self, frames):
        self.frames.append(np.array(frames))


def test_same_seed_same_frames_bit_for_bit(engine):
    runs = []
    texture = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for seed in (3, 3, 4):
        w = _Frames()
        engine.run([dataclasses.replace(_job(seconds=0.8, seed=seed), source=texture)], [w])
        runs.append(np.concatenate(w.frames))
    assert len(runs[0]) == math.ceil(0.8 * 25)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


_BAD_INPUT_MESSAGES = {  # case -> what the one error line must say (its cause, and the file it names)
    "text_image": r"notes\.jpg: cannot read the image", "empty_image": r"empty\.png: the image file is empty",
    "tiny_image": r"tiny\.png: the image is 32x32 pixels; it needs at least 64",
    "missing_folder": r"nope does not exist; create it first",
    "short_audio": r"short\.wav: the audio is 0\.020 s long; it needs at least one frame",
    "text_audio": r"speech\.mp3: is a text file, not audio", "wrong_checkpoint": r"empty_ckpt: no animator model",
    "bad_gaze": r"--gaze 'sideways': use generated, forward"}


@pytest.mark.parametrize("case", ["baseline", *_BAD_INPUT_MESSAGES])
def test_cli_bad_inputs_give_one_line_and_exit_2(tmp_path, bundle_dir, capsys, case):
    """Each bad input against a baseline that works: one line naming the cause, exit 2, no output."""
    import re

    img = tmp_path / "face.png"
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(img)
    wav = _write_wav(tmp_path / "speech.wav", _speech(0.6))
    out, ckpt, gaze = tmp_path / "out.mp4", bundle_dir, "generated"
    if case == "text_image":
        img = tmp_path / "notes.jpg"
        img.write_text("hello")
    elif case == "empty_image":
        img = tmp_path / "empty.png"
        img.write_bytes(b"")
    elif case == "tiny_image":
        img = tmp_path / "tiny.png"
        Image.new("RGB", (32, 32)).save(img)
    elif case == "missing_folder":
        out = tmp_path / "nope" / "out.mp4"
    elif case == "short_audio":
        wav = _write_wav(tmp_path / "short.wav", _speech(0.02))
    elif case == "text_audio":
        wav = tmp_path / "speech.mp3"
        wav.write_text("not audio")
    elif case == "wrong_checkpoint":
        ckpt = tmp_path / "empty_ckpt"
        ckpt.mkdir()
    elif case == "bad_gaze":
        gaze = "sideways"
    code, _, err = _animate(capsys, "--image", img, "--audio", wav, "--out", out, "--checkpoint", ckpt,
                            "--gaze", gaze, "--sampler", "ddim", "--steps", "2")
    if case == "baseline":
        assert code == 0 and out.exists(), err
        return
    assert code == 2, (case, err)
    lines = [line for line in err.strip().splitlines() if line.startswith("gohd animate: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(_BAD_INPUT_MESSAGES[case], lines[0]), (case, lines[0])
    assert not out.exists()


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_image_modes_are_converted(tmp_path, mode):
    from gohd_jax.infer.source import load_image

    path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (80, 70)).save(path)
    arr = load_image(path)
    assert arr.shape == (70, 80, 3) and arr.dtype == np.uint8


def test_image_without_a_face_is_centre_cropped_with_a_warning(caplog):
    from data_pipelines.video.faces import FaceModels
    from gohd_jax.infer.source import prepare_source, source_descriptors

    wall = np.full((90, 120, 3), 200, np.uint8)
    src = prepare_source(wall, FaceModels(), where="wall.png")
    assert not src.face_found and src.crop.shape == (256, 256, 3)
    assert "no face found" in caplog.text
    d0, c0, how = source_descriptors(src)
    assert how.startswith("neutral") and not d0.any() and c0.shape == (21,)


def test_wrong_kind_of_training_run_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no animator model"):
        load_bundle(tmp_path)


@pytest.mark.slow  # ~30 s of a worker; CI runs it after make test (10-minute budget)
def test_manifest_mode_batches_and_reports_failures(tmp_path, bundle_dir, capsys):
    img = tmp_path / "face.png"
    Image.fromarray(np.full((80, 80, 3), 100, np.uint8)).save(img)
    for k, sec in enumerate((0.5, 0.9, 0.7)):
        _write_wav(tmp_path / f"a{k}.wav", _speech(sec, k))
    rows = ["image,audio,out,gaze,seed",
            "face.png,a0.wav,o0.mp4,left,1",
            "missing.png,a1.wav,o1.mp4,,",
            "face.png,a2.wav,o2.mp4,,2",
            "face.png,a1.wav,o3.mp4,forward,3"]
    (tmp_path / "jobs.csv").write_text("\n".join(rows) + "\n")
    code = cli.main(["animate", "--manifest", str(tmp_path / "jobs.csv"), "--checkpoint", str(bundle_dir),
                     "--batch-clips", "2", "--sampler", "ddim", "--steps", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "3 of 4 clips written" in out and "row 2" in out and "missing.png" in out
    for name, sec in (("o0", 0.5), ("o2", 0.7), ("o3", 0.9)):
        assert len(_decode(tmp_path / f"{name}.mp4")[0]) == math.ceil(sec * 25)
    assert not (tmp_path / "o1.mp4").exists()
    # A row renders as the same clip alone would (its gaze and seed columns used): batching and
    # the other rows change nothing.
    code = cli.main(["animate", "--image", str(img), "--audio", str(tmp_path / "a0.wav"), "--out",
                     str(tmp_path / "alone.mp4"), "--checkpoint", str(bundle_dir), "--sampler", "ddim", "--steps", "2",
                     "--gaze", "left", "--seed", "1"])
    assert code == 0
    np.testing.assert_array_equal(_decode(tmp_path / "alone.mp4")[0], _decode(tmp_path / "o0.mp4")[0])
    code = cli.main(["animate", "--image", str(img), "--audio", str(tmp_path / "a0.wav"), "--out",
                     str(tmp_path / "other_seed.mp4"), "--checkpoint", str(bundle_dir), "--sampler", "ddim",
                     "--steps", "2", "--gaze", "left", "--seed", "2"])
    assert code == 0
    assert not np.array_equal(_decode(tmp_path / "other_seed.mp4")[0], _decode(tmp_path / "o0.mp4")[0])


@pytest.mark.slow  # ~40 s: 6 clips and a single-clip run
def test_manifest_uses_every_column_and_compiles_once(tmp_path, bundle_dir, capsys, monkeypatch):
    """A row that sets every column renders what the single-clip command with the same flags
    renders (so no column is ignored; `test_every_control_changes_only_what_it_names` shows each
    control changes the frames), relative .npy paths are the manifest's; three batches of
    different lengths (1 and 2 motion windows) compile nothing after the first; an unknown column
    is refused in one line."""
    from jax import monitoring

    img = tmp_path / "face.png"
    Image.fromarray(np.full((80, 80, 3), 100, np.uint8)).save(img)
    for k, sec in enumerate((0.5, 0.6, 0.7, 1.4, 2.1)):
        _write_wav(tmp_path / f"a{k}.wav", _speech(sec, k))
    np.save(tmp_path / "pose.npy", np.array([0.1, -0.05, 0.02, 0.0, 0.01, 0.0], np.float32))
    np.save(tmp_path / "d0.npy", np.random.default_rng(2).normal(0, 0.1, 72).astype(np.float32))
    rows = ["image,audio,out,pose,gaze,blink,pose_scale,exp_scale,seed,source_descriptors",
            'face.png,a0.wav,o0.mp4,pose.npy,"0.1,-0.2",off,1.5,0.5,7,d0.npy',
            "face.png,a1.wav,o1.mp4,,,,,,1,",
            "face.png,a2.wav,o2.mp4,still,left,,,,2,",
            "face.png,a3.wav,o3.mp4,,,,,,3,",
            "face.png,a4.wav,o4.mp4,,right,on,,,4,"]
    (tmp_path / "jobs.csv").write_text("\n".join(rows) + "\n")
    # a program is built by a backend compile, or read from the persistent compilation cache
    # (when GOHD_COMPILE_CACHE names a folder, a program compiled earlier is a cache hit here)
    compiles, per_batch = [], []
    on_compile = (lambda event, _s, **kw: compiles.append(event)
                  if event == "/jax/core/compile/backend_compile_duration" else None)
    on_cache_hit = (lambda event, **kw: compiles.append(event)
                    if event == "/jax/compilation_cache/cache_hits" else None)
    monitoring.register_event_duration_secs_listener(on_compile)
    monitoring.register_event_listener(on_cache_hit)
    real_batch = BatchRenderer.__call__

    def counting_batch(self, group):
        n = len(compiles)
        try:
            return real_batch(self, group)
        finally:
            per_batch.append((len(group), len(compiles) - n))

    monkeypatch.setattr(BatchRenderer, "__call__", counting_batch)
    code = cli.main(["animate", "--manifest", str(tmp_path / "jobs.csv"), "--checkpoint", str(bundle_dir),
                     "--batch-clips", "2", "--sampler", "ddim", "--steps", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "5 of 5 clips written" in out, out
    assert [n for n, _ in per_batch] == [2, 2, 1]
    assert per_batch[0][1] > 0 and [c for _, c in per_batch[1:]] == [0, 0], per_batch
    monkeypatch.undo()
    monitoring.unregister_event_duration_listener(on_compile)
    monitoring.unregister_event_listener(on_cache_hit)
    code = cli.main(["animate", "--image", str(img), "--audio", str(tmp_path / "a0.wav"), "--out",
                     str(tmp_path / "alone.mp4"), "--checkpoint", str(bundle_dir), "--sampler", "ddim", "--steps", "2",
                     "--pose", str(tmp_path / "pose.npy"), "--gaze", "0.1,-0.2", "--blink", "off", "--pose-scale",
                     "1.5", "--exp-scale", "0.5", "--seed", "7", "--source-descriptors", str(tmp_path / "d0.npy")])
    assert code == 0
    np.testing.assert_array_equal(_decode(tmp_path / "alone.mp4")[0], _decode(tmp_path / "o0.mp4")[0])
    (tmp_path / "typo.csv").write_text("image,audio,out,pose_sacle\nface.png,a0.wav,t.mp4,2\n")
    code = cli.main(["animate", "--manifest", str(tmp_path / "typo.csv"), "--checkpoint", str(bundle_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown column(s) ['pose_sacle']" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------ export


def test_gohd_export_cli_computes_what_gohd_animate_computes(tmp_path, bundle_dir, engine, capsys):
    """``gohd export`` as a command; its reloaded encoder and renderer give the engine's own
    (``gohd animate``'s) latents and frames on the same source and semantics."""
    from jax import export

    code = cli.main(["export", "--checkpoint", str(bundle_dir), "--out", str(tmp_path / "exp"),
                     "--render-batch", str(engine.render_batch), "--platforms", "cpu"])
    assert code == 0, capsys.readouterr().err
    load = lambda n: export.deserialize((tmp_path / "exp" / f"{n}.stablehlo").read_bytes())  # noqa: E731
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    w_s, feats = engine.encode(src)
    got_w, *got_feats = jax.tree.leaves(load("encode").call(src))
    np.testing.assert_allclose(np.asarray(got_w), np.asarray(w_s), rtol=1e-5, atol=1e-5)
    for g, w in zip(got_feats, jax.tree.leaves(feats)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
    r = engine.render_batch
    idx = np.zeros(r, np.int32)
    sem = rng.normal(0, 0.05, (r, 27, 72)).astype(np.float32)
    want = np.asarray(engine._render(*engine.render_args(w_s[idx], tuple(x[idx] for x in feats), sem)))
    got = np.asarray(load("render").call(np.asarray(w_s)[idx], *[np.asarray(x)[idx] for x in feats], sem))
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert want.dtype == np.uint8 and diff.max() <= 1 and (diff > 0).mean() < 2e-3


def test_export_reloads_and_matches_the_live_functions(tmp_path, bundle_dir):
    from jax import export

    from gohd_jax.infer.export import export_bundle, exported_functions

    def _example(spec, seed):
        rng = np.random.default_rng(seed)
        if spec.dtype == np.uint8:
            return rng.integers(0, 256, spec.shape, dtype=np.uint8)
        if spec.dtype == np.uint32:
            return rng.integers(0, 2 ** 32, spec.shape, dtype=np.uint32)
        return rng.normal(0, 0.3, spec.shape).astype(np.float32)

    bundle = load_bundle(bundle_dir)
    files = export_bundle(bundle, tmp_path / "exp", render_batch=4, clips=2)
    assert {f.name for f in files} >= {"render.stablehlo", "pose_window.stablehlo", "encode.stablehlo"}
    live = exported_functions(bundle, render_batch=4, clips=2)
    for name in ("encode", "render", "pose_window", "gaze_window"):
        fn, specs = live[name]
        args = [_example(s, i) for i, s in enumerate(specs)]
        loaded = export.deserialize((tmp_path / "exp" / f"{name}.stablehlo").read_bytes())
        assert loaded.platforms == ("cpu", "cuda", "tpu")  # made here, loads on a GPU or TPU too
        got = jax.tree.leaves(loaded.call(*args))
        want = jax.tree.leaves(jax.jit(fn)(*args))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            g, w = np.asarray(g), np.asarray(w)
            if w.dtype == np.uint8:
                # Frames are quantised: a float rounding difference between the two compiles can
                # move a value across a quantisation boundary (seen with jax 0.12.1: 37 of 49152).
                diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
                assert diff.max() <= 1 and (diff > 0).mean() < 2e-3, (name, diff.max(), (diff > 0).mean())
            else:
                np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ official


def _official_files(tmp_path):
    """The official checkpoint files (torch zip format), weights from the reference manifests."""
    from gohd_jax.interop import oracle_weights as ow
    from tests.test_torch_checkpoint import state_dict, tensor, torch_save_zip

    files = {}
    for flag, kind, key, prefix in (("animator", "animator", "gen_pose", ""), ("pose", "pose_diffusion", "model", ""),
                                    ("gaze", "gaze_diffusion", "model", ""),
                                    ("exp", "audio2exp", "state_dict_G", "module.")):
        files[flag] = tmp_path / f"{flag}.pt"
        man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
        weights = ow.make_state_dict(man, ow.manifest_seed(man))
        obj = {key: state_dict(**{prefix + k: tensor(v) for k, v in weights.items()})}
        files[flag].write_bytes(torch_save_zip(obj))
    return files


def _convert(files, out, capsys):
    code = cli.main(["convert-official", *[f"--{k}={v}" for k, v in files.items()], "--out", str(out)])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_convert_official_then_animate(tmp_path, capsys):
    """The official-size bundle: converted weights identical to a direct conversion, then end to
    end (slow on CPU: the 51 M-parameter animator at 256 px)."""
    from gohd_jax.infer.bundle import _flat
    from gohd_jax.interop import oracle_weights as ow
    from gohd_jax.interop.motion_weights import denoiser_from_state_dict

    files = _official_files(tmp_path)
    code, err = _convert(files, tmp_path / "official", capsys)
    assert code == 0, err
    b = load_bundle(tmp_path / "official")
    assert b.image_size == 256 and b.pose_spec.alignment == "release" and b.animator.config.release_sft_wiring
    man = ow.load_manifest(require_shared("reference", "gaze_diffusion", "manifest.json"))
    direct = _flat(denoiser_from_state_dict(ow.make_state_dict(man, ow.manifest_seed(man))))
    loaded = _flat(b.gaze)
    assert direct.keys() == loaded.keys() and all(np.array_equal(direct[k], loaded[k]) for k in direct)
    img = require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg")
    wav = _write_wav(tmp_path / "s.wav", _speech(0.4))
    code, out, err = _animate(capsys, "--image", img, "--audio", wav, "--out", tmp_path / "o.mp4", "--checkpoint",
                              tmp_path / "official", "--sampler", "ddim", "--steps", "2", "--pose", "still")
    assert code == 0, err
    assert len(_decode(tmp_path / "o.mp4")[0]) == 10


def _release_position_scorer_shapes(kernels: int, heads: int) -> dict[str, tuple[int, ...]]:
    """The release's (TisaV2) layout of the ``position_scorer`` entries in an LDA state dict."""
    per_kernel = (1, kernels, heads, 1, 1)
    return {"offsets": per_kernel, "amplitudes": per_kernel, "sharpness": per_kernel, "bias": (1, heads, 1, 1),
            "slopes": (heads, 1, 1)}


def test_motion_export_round_trips_through_the_official_layout():
    from gohd_jax.infer.bundle import _flat
    from gohd_jax.interop.motion_weights import denoiser_from_state_dict, export_state_dict

    model = _tiny_motion(2)
    sd = export_state_dict(model)
    # the official shapes of the tiny model's entries follow the release's layout (checked against
    # the oracle manifest by test_the_release_position_scorer_layout_is_the_oracle_manifests)
    want = _release_position_scorer_shapes(model.cfg.num_kernels, model.cfg.num_heads)
    scorer = {k: v.shape for k, v in sd.items() if ".attn.position_scorer." in k}
    assert len(scorer) == 5 * model.cfg.residual_layers * model.cfg.num_blocks
    for k, shape in scorer.items():
        assert shape == want[k.rsplit(".", 1)[1]], (k, shape)
    back = denoiser_from_state_dict(sd)
    a, b = _flat(model), _flat(back)
    assert all(np.array_equal(a[k], b[k]) for k in a if "step_table" not in k)


def test_the_release_position_scorer_layout_is_the_oracle_manifests():
    """The layout the round trip above is held to is the release's own (8 heads, 21 kernels)."""
    from gohd_jax.interop import oracle_weights as ow

    man = ow.load_manifest(require_shared("reference", "gaze_diffusion", "manifest.json"))
    shapes = {t["name"]: tuple(t["shape"]) for t in man["tensors"]}
    want = _release_position_scorer_shapes(21, 8)
    scorer = {k: v for k, v in shapes.items() if ".attn.position_scorer." in k}
    assert len(scorer) == 5 * 20 * 2  # 20 residual layers of 2 attention blocks
    for k, shape in scorer.items():
        assert shape == want[k.rsplit(".", 1)[1]], (k, shape)


def _official_exp_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """``audio2exp.pth['state_dict_G']`` of a random SimpleWrapperV2 (blink_control=0): the release's
    names, order and shapes (those of the audio2exp oracle manifest: BatchNorm counters included,
    DataParallel's ``module.`` prefix), made from our port's entry list on an abstract model."""
    from gohd_jax.interop import expression_weights as ew
    from gohd_jax.models.expression import ExpressionConfig, FrameExpression

    model = nnx.eval_shape(lambda: FrameExpression(ExpressionConfig(), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    sd = {}
    for name, var, how in ew._frame_entries(model):
        s = tuple(var.shape)
        s = (s[3], s[2], s[0], s[1]) if how == "conv" else s[::-1] if how == "linear" else s  # torch layout
        a = rng.normal(0.0, 0.05, s).astype(np.float32)
        sd[f"module.{name}"] = np.abs(a) + 1.0 if name.endswith("running_var") else a
        if name.endswith("running_var"):
            sd[f"module.{name[:-len('running_var')]}num_batches_tracked"] = np.array(0, np.int64)
    return sd


def test_the_made_exp_checkpoint_has_the_oracle_manifests_layout():
    from gohd_jax.interop import oracle_weights as ow

    man = ow.load_manifest(require_shared("reference", "audio2exp", "manifest.json"))
    want = [(f"module.{t['name']}", tuple(t["shape"]), np.dtype(t["dtype"])) for t in man["tensors"]]
    assert [(k, v.shape, v.dtype) for k, v in _official_exp_state_dict().items()] == want


def _small_official_files(tmp_path):
    """Official-format files: tiny pose/gaze models, a random official-size exp model (fast) and a
    placeholder animator."""
    from gohd_jax.interop.motion_weights import export_state_dict
    from tests.test_torch_checkpoint import state_dict, tensor, torch_save_zip

    files = {"animator": tmp_path / "animator.pt"}
    files["animator"].write_bytes(b"never read: the small checkpoints fail first")
    for flag, key, sd in (("pose", "model", export_state_dict(_tiny_motion(6))),
                          ("gaze", "model", export_state_dict(_tiny_motion(2))),
                          ("exp", "state_dict_G", _official_exp_state_dict())):
        files[flag] = tmp_path / f"{flag}.pt"
        files[flag].write_bytes(torch_save_zip({key: state_dict(**{k: tensor(v) for k, v in sd.items()})}))
    return files


def test_convert_official_refuses_wrong_kinds_and_payloads(tmp_path, capsys):
    from tests.test_torch_checkpoint import _Reduce, _pickle

    files = _small_official_files(tmp_path)
    code, err = _convert(dict(files, pose=files["gaze"]), tmp_path / "o1", capsys)
    assert code == 2 and "6-d pose model" in err
    code, err = _convert(dict(files, gaze=files["exp"]), tmp_path / "o1", capsys)
    assert code == 2 and "--gaze" in err and "has no key 'model'" in err
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_pickle(_Reduce("os", "system", f"touch {marker}")))
    code, err = _convert(dict(files, exp=evil), tmp_path / "o2", capsys)
    assert code == 2 and "os.system" in err and not marker.exists()
    code, err = _convert(dict(files, pose=tmp_path / "missing.pt"), tmp_path / "o3", capsys)
    assert code == 2 and "no such file" in err
    assert not any((tmp_path / o / "bundle.json").exists() for o in ("o1", "o2", "o3"))


def test_a_batch_sharded_over_8_devices_matches_one_clip(engine):
    assert engine.mesh.size == len(jax.local_devices()) == 8
    jobs = [_job(seconds=1.0 + 0.1 * k, seed=k) for k in range(8)]
    sharded = _drive(engine, *jobs)
    for k in (0, 5):
        alone = _drive(engine, jobs[k])[0]
        np.testing.assert_allclose(sharded[k]["descriptors"], alone["descriptors"], rtol=1e-4, atol=1e-5)


def test_a_bundle_of_the_wrong_kind_is_refused(tmp_path, bundle_dir, capsys):
    import json
    import shutil

    swapped = tmp_path / "swapped"
    shutil.copytree(bundle_dir, swapped)
    meta = json.loads((swapped / "bundle.json").read_text())
    meta["models"]["pose"], meta["models"]["gaze"] = meta["models"]["gaze"], meta["models"]["pose"]
    (swapped / "bundle.json").write_text(json.dumps(meta))
    (swapped / "pose.npz").rename(swapped / "tmp.npz")
    (swapped / "gaze.npz").rename(swapped / "pose.npz")
    (swapped / "tmp.npz").rename(swapped / "gaze.npz")
    with pytest.raises(BundleError, match="must be 6-d"):
        load_bundle(swapped)
    meta["models"]["animator"] = meta["models"]["expression"]
    (swapped / "bundle.json").write_text(json.dumps(meta))
    img = tmp_path / "f.png"
    Image.new("RGB", (80, 80), (90, 90, 90)).save(img)
    code, _, err = _animate(capsys, "--image", img, "--audio", _write_wav(tmp_path / "s.wav", _speech(0.5)),
                            "--out", tmp_path / "o.mp4", "--checkpoint", swapped)
    assert code == 2 and "the animator must be a SemanticAnimator" in err


# ------------------------------------------------------------------------------------ precision, compile cache


def _smooth_source() -> np.ndarray:
    """A smooth 64 px source (ramps in each channel): warped frames of it change smoothly with
    the flow, as a portrait's do (a noise texture turns sub-pixel flow changes into +-100 levels)."""
    yy, xx = np.mgrid[0:64, 0:64]
    return np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def engine_bf16(bundle_dir):
    return Animate(load_bundle(bundle_dir), sampling=Sampling("ddim", 4), render_batch=8, precision="bfloat16")


def test_bfloat16_renders_a_clip_close_to_float32(engine, engine_bf16, bundle_dir):
    """The whole pipeline (expression, motion, rendering) under bfloat16 against float32 (what
    "auto" gives on CPU), on the same clip: frames [T,64,64,3] uint8 and close.

    Measured on this tiny random bundle (two seeds): mean |difference| 0.67-0.77 levels of 255
    with this smooth source (the release's HDTF_0 portrait at 64 px: 0.78-0.81; a flat source:
    0.16), 99th percentile 7-10 levels, 0.3% of values off by more than 16. The differences come
    from the warp: the flow leaves bfloat16 convolutions with ~0.2-1% relative error (a mean 0.004
    in [-1,1] grid units, 0.13 px at 64 px), which moves a smooth source by a fraction of a level
    per pixel and its edges by more. Bounds: mean < 2 levels and under 2% of values off by more
    than 16 (2.5x and 6x the measured): room for other weights and backends, while a broken path
    (NaNs, a wrong scale or cast, a bfloat16 computation gone astray) is tens of levels off."""
    assert engine.policy.compute == "float32" and engine_bf16.policy.compute == "bfloat16"
    assert engine_bf16.policy.platform == "cpu"
    job = dataclasses.replace(_job(seconds=0.8, seed=3), source=_smooth_source())
    frames = {}
    for name, eng in (("float32", engine), ("bfloat16", engine_bf16)):
        w = _Frames()
        eng.run([job], [w])
        frames[name] = np.concatenate(w.frames)
    f32, bf16 = frames["float32"], frames["bfloat16"]
    assert bf16.shape == f32.shape == (math.ceil(0.8 * 25), 64, 64, 3) and bf16.dtype == np.uint8
    diff = np.abs(f32.astype(np.int16) - bf16.astype(np.int16))
    assert diff.mean() < 2.0 and (diff > 16).mean() < 0.02, (diff.mean(), (diff > 16).mean())
    assert diff.any(), "the bfloat16 engine computes in bfloat16"
    # the engine gave its policy to views of the models: the bundle it was given is unchanged
    assert engine_bf16.directions.dtype == np.float32
    from gohd_jax.nn.policy import policy_of

    fresh = load_bundle(bundle_dir)
    Animate(fresh, precision="bfloat16")
    assert policy_of(fresh.animator).compute == "float32"


def test_cli_precision_reaches_the_engine(tmp_path, bundle_dir, capsys, engine_bf16, monkeypatch):
    """``--precision bfloat16`` builds the engine with it and writes the clip (the engine built
    above stands in for the CLI's: the same bundle and precision, compiled once)."""
    from gohd_jax.infer import animate

    made = []

    def make(bundle, **kw):
        made.append(kw)
        return engine_bf16

    monkeypatch.setattr(animate, "Animate", make)
    img = tmp_path / "face.png"
    Image.fromarray(_smooth_source()).save(img)
    wav = _write_wav(tmp_path / "speech.wav", _speech(0.5))
    out = tmp_path / "out.mp4"
    code, stdout, err = _animate(capsys, "--image", img, "--audio", wav, "--out", out, "--checkpoint", bundle_dir,
                                 "--sampler", "ddim", "--steps", "4", "--render-batch", "8", "--precision", "bfloat16")
    assert code == 0, err
    assert [m["precision"] for m in made] == ["bfloat16"]
    assert "bfloat16" in stdout and f"{math.ceil(0.5 * 25)} frames" in stdout
    frames, _ = _decode(out)
    assert frames.shape == (math.ceil(0.5 * 25), 64, 64, 3)


@pytest.mark.parametrize("value", ["float16", "fp32", "BF16"])
def test_cli_precision_rejects_a_bad_value_in_one_line(tmp_path, bundle_dir, capsys, value):
    img = tmp_path / "face.png"
    Image.fromarray(_smooth_source()).save(img)
    out = tmp_path / "out.mp4"
    code, _, err = _animate(capsys, "--image", img, "--audio", _write_wav(tmp_path / "s.wav", _speech(0.5)),
                            "--out", out, "--checkpoint", bundle_dir, "--precision", value)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert lines == [f"gohd animate: error: --precision {value!r}: use auto, float32, bfloat16"], err
    assert not out.exists()
    code = cli.main(["animate", "--manifest", str(tmp_path / "none.csv"), "--checkpoint", str(bundle_dir),
                     "--precision", value])
    assert code == 2 and "--precision" in capsys.readouterr().err
    code = cli.main(["export", "--checkpoint", str(bundle_dir), "--out", str(tmp_path / "e"), "--precision", value])
    assert code == 2 and "--precision" in capsys.readouterr().err and not (tmp_path / "e").exists()


_QR_PRIMITIVES = {"qr", "householder_product", "geqrf", "geqp3", "orgqr"}


def _primitives(jaxpr) -> set[str]:
    """Every primitive name in a (closed) jaxpr, sub-jaxprs (jit, scan, cond, remat) included."""
    names: set[str] = set()

    def walk(j):
        j = getattr(j, "jaxpr", j)
        for eqn in j.eqns:
            names.add(eqn.primitive.name)
            for v in eqn.params.values():
                for sub in v if isinstance(v, (list, tuple)) else (v,):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub)

    walk(jaxpr)
    return names


def test_the_renderer_reads_the_directions_computed_once_at_load(engine, engine_bf16):
    """Q = QR(W) is computed when the engine is built (float32), and the jitted renderer (float32
    and bfloat16 engines) and the exported one contain no QR."""
    import jax.numpy as jnp

    from gohd_jax.infer.export import exported_functions

    anim = engine.bundle.animator
    assert _QR_PRIMITIVES & _primitives(jax.make_jaxpr(anim.directions)()), "the check sees a QR"
    np.testing.assert_allclose(np.asarray(engine.directions), np.asarray(anim.directions()), atol=1e-6)
    d, m = engine.directions.shape
    np.testing.assert_allclose(np.asarray(engine.directions.T @ engine.directions), np.eye(m), atol=1e-5)
    for eng in (engine, engine_bf16):
        assert eng.directions.dtype == jnp.float32
        w_s, feats = eng.encode(np.stack([_smooth_source()]))
        sem = np.zeros((eng.render_batch, 27, 72), np.float32)
        args = eng.render_args(jnp.repeat(w_s, eng.render_batch, 0),
                               tuple(jnp.repeat(f, eng.render_batch, 0) for f in feats), sem)
        prims = _primitives(jax.make_jaxpr(eng._render)(*args))
        assert "dot_general" in prims and not (_QR_PRIMITIVES & prims), sorted(prims)
    fn, specs = exported_functions(engine.bundle, render_batch=2)["render"]
    prims = _primitives(jax.make_jaxpr(fn)(*specs))
    assert "dot_general" in prims and not (_QR_PRIMITIVES & prims)
