"""The pieces ``make demo`` reports with: clean stops, the mouth-motion score, gaze as a
distribution, side-by-side panels (``launch/demo.py``, ``launch/demo_videos.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gohd_jax.eval import motion as motion_eval
from gohd_jax.eval.mouth_motion import mouth_box, mouth_change, mouth_motion_correlation, pearson
from gohd_jax.infer.panels import side_by_side

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ stopping

CHILD = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {root!r})
    from gohd_jax.stopping import StopOnSignal, Stopped

    def on_stop(s):
        print(f"STOPPED {{s.signal_name}} exit {{s.exit_code}}", flush=True)

    with StopOnSignal(on_stop, grace_s=0.3):
        try:
            if {native!r}:
                # The main thread stuck in native code that no signal interrupts (as in an XLA
                # compile): SIGTERM is blocked here, so it lands on the watchdog's thread.
                signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
                print("ready", flush=True)
                time.sleep(30)
            else:
                print("ready", flush=True)
                while True:
                    time.sleep(0.01)
        except Stopped as s:
            print("unwound in the main thread", flush=True)
            on_stop(s)
            sys.exit(s.exit_code)
""")


def _run_child(native: bool, sig: int) -> tuple[int, str, str, float]:
    p = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), native=native)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # let the child reach its sleep: a signal before it would run the handler in Python
    t0 = time.perf_counter()
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    return p.returncode, out, err, time.perf_counter() - t0


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_on_signal_unwinds_the_main_thread(sig, code):
    rc, out, err, _ = _run_child(native=False, sig=sig)
    assert rc == code
    assert "unwound in the main thread" in out
    assert f"STOPPED {signal.Signals(sig).name} exit {code}" in out
    assert "Traceback" not in err, err


def test_stop_on_signal_watchdog_ends_a_process_stuck_in_native_code():
    rc, out, err, dt = _run_child(native=True, sig=signal.SIGTERM)
    assert rc == 143
    assert "STOPPED SIGTERM exit 143" in out
    assert "unwound" not in out  # the watchdog ended it: the main thread never ran Python again
    assert "Traceback" not in err, err
    assert dt < 10, dt  # grace 0.3 s; the sleep would take 30


# ------------------------------------------------------------------------------ mouth motion

def test_mouth_box_covers_every_mouth_point_with_margin():
    lm = np.zeros((2, 68, 2))
    lm[0, 48:68] = [[20, 40]]
    lm[1, 48:68] = [[30, 45]]
    lm[1, 50] = [31.5, 46.2]
    assert mouth_box(lm, size=64, margin=2) == (38, 50, 18, 35)  # rows 40-2 .. ceil(46.2)+3, cols 18 .. 32+3
    assert mouth_box(lm, size=40, margin=2) == (38, 40, 18, 35)  # clipped to the frame


def test_mouth_motion_correlation_follows_the_mouth_not_a_still_video():
    rng = np.random.default_rng(0)
    opening = np.abs(np.cumsum(rng.normal(0, 0.2, 80)))
    frames = np.full((80, 32, 32, 3), 100, np.uint8)
    box = (10, 20, 8, 24)
    frames[:, 14:16, 10:22] = np.clip(100 + 60 * opening, 0, 255).astype(np.uint8)[:, None, None, None]
    follows = mouth_motion_correlation(frames, opening, box)
    assert follows > 0.9
    still = np.repeat(frames[:1], 80, axis=0)
    assert mouth_motion_correlation(still, opening, box) == 0.0
    shuffled = frames[rng.permutation(80)]
    assert mouth_motion_correlation(shuffled, opening, box) < 0.5
    assert mouth_change(frames, box).shape == (79,)
    with pytest.raises(ValueError, match="79 mouth openings"):
        mouth_motion_correlation(frames, opening[:79], box)
    assert pearson([1, 2, 3], [2, 4, 7]) > 0.98


# ------------------------------------------------------------------------------ gaze distribution

def _synthetic_gaze(n: int, seed: int, frames: int = 150) -> np.ndarray:
    from data_pipelines.synthetic.motion import gaze_track

    rng = np.random.default_rng(seed)
    return np.stack([gaze_track(frames, rng)[0] for _ in range(n)]).astype(np.float32)


def test_gaze_report_ranks_a_faithful_sampler_above_both_baselines_and_white_noise():
    gt, faithful = _synthetic_gaze(12, 0), _synthetic_gaze(12, 1)
    rep = motion_eval.gaze_report(faithful, gt)
    assert rep["generated"]["fd"] < min(rep["hold_gaze0"]["fd"], rep["camera"]["fd"])
    assert 0.6 < rep["generated"]["std"] / rep["ground_truth"]["std"] < 1.6
    assert rep["ground_truth"]["fd"] < 1e-9 and rep["hold_gaze0"]["std"] == 0.0
    jitter = gt + np.random.default_rng(2).normal(0, 0.2, gt.shape).astype(np.float32)  # the demo's old failure
    bad = motion_eval.gaze_report(jitter, gt)
    assert bad["generated"]["std"] > 1.5 * bad["ground_truth"]["std"]
    assert bad["generated"]["fd"] > rep["generated"]["fd"]
    assert "hold_gaze0" in motion_eval.format_gaze_report(rep)


# ------------------------------------------------------------------------------ panels and mp4

def test_side_by_side_panels_are_even_sized_captioned_and_checked():
    a = np.zeros((3, 21, 21, 3), np.uint8)
    b = np.full((3, 21, 15, 3), 200, np.uint8)
    out = side_by_side([a, b], ["generated", "reference"], zoom=3)
    assert out.shape[0] == 3 and out.shape[1] % 2 == 0 and out.shape[2] % 2 == 0
    assert out.shape[2] >= 3 * (21 + 15)
    caption = out[0, :14]
    assert caption.std() > 5  # text drawn
    np.testing.assert_array_equal(out[1, 16:16 + 63, 63:63 + 45], np.full((63, 45, 3), 200, np.uint8))
    np.testing.assert_array_equal(out[1, 16:16 + 63, :63], np.zeros((63, 63, 3), np.uint8))
    with pytest.raises(ValueError, match="share their frame count"):
        side_by_side([a, b[:2]], ["x", "y"])


def test_mp4_writer_takes_non_square_frames(tmp_path):
    import av

    from gohd_jax.infer.mp4 import Mp4Writer

    frames = np.random.default_rng(0).integers(0, 255, (4, 48, 96, 3), dtype=np.uint8)
    with Mp4Writer(tmp_path / "x.mp4", (48, 96), audio=np.zeros(4 * 640, np.float32)) as w:
        w.write(frames)
    with av.open(str(tmp_path / "x.mp4")) as f:
        got = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(got) == 4 and got[0].shape == (48, 96, 3)


def test_demo_video_helpers_describe_a_synthetic_clip_exactly(tmp_path):
    sys.path.insert(0, str(ROOT))
    from data_pipelines.synthetic.generator import SynthConfig
    from data_pipelines.video.describe import Description
    from launch import demo_videos as V

    synth = SynthConfig(size=32, seconds=1.0, num_identities=2, seed=0)
    clip = V.synth_clip(synth, 1, seconds=0.6)
    assert len(clip.frames) == 15 and clip.audio.shape == (15 * 640,) and clip.landmarks.shape == (15, 68, 2)
    assert V.clip_index("synth-s0-c000031") == 31
    path = V.description(clip, "x").save(tmp_path / "ref.npz")
    back = Description.load(path)
    np.testing.assert_array_equal(back.descriptors, clip.descriptors)
    happy = V.smiling(clip, smile=1.0, brow_raise=0.0)
    np.testing.assert_allclose(happy.descriptors[:, V.SMILE] - clip.descriptors[:, V.SMILE], 1.0, atol=1e-6)
    assert np.abs(happy.frames.astype(int) - clip.frames).max() > 30  # the smile is drawn
    assert os.path.getsize(path) > 0


# ------------------------------------------------------------------------------ the demo itself

DEMO_SMALL = ["--config=configs/synthetic.py:tiny", "--animator_steps=120", "--pose_steps=10", "--gaze_steps=10",
              "--sync_steps=0", "--stage1_steps=10", "--stage2_steps=10", "--expression_eval_clips=2",
              "--video_seconds=2"]


@pytest.mark.slow
def test_demo_stops_cleanly_on_sigterm_and_resumes(tmp_path):
    """``make demo``'s script on the tiny dataset: SIGTERM to its process group (what Ctrl-C and
    ``timeout`` send) during the animator's training stops it within seconds, exit 143, no
    traceback, a line saying where the work is; the same command then resumes from the
    checkpoint and renders the four videos and the mouth-motion table."""
    # The persistent compilation cache on, as a user has it (a folder of this test's own): the
    # resumed run loads the first run's programs instead of compiling them again.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GOHD_COMPILE_CACHE": str(tmp_path / "xla_cache")}
    cmd = [sys.executable, "launch/demo.py", f"--workdir={tmp_path / 'demo'}", *DEMO_SMALL]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    seen = []
    for line in p.stdout:  # wait for the animator's first progress line
        seen.append(line)
        if line.startswith("  step ") and "/120" in line:
            break
    else:
        pytest.fail("the demo ended before its animator trained:\n" + "".join(seen) + p.stderr.read())
    t0 = time.perf_counter()
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    dt = time.perf_counter() - t0
    print(f"stopped {dt:.1f} s after SIGTERM")
    out = "".join(seen) + out
    assert p.returncode == 143, (out, err)
    assert dt < 15, dt
    assert "Traceback" not in err, err
    assert "Stopped by SIGTERM" in out and "during: the animator's training" in out and "resume" in out
    assert list((tmp_path / "demo" / "animator" / "checkpoints").iterdir()), "no preemption checkpoint"
    cached = [f.name for f in (tmp_path / "xla_cache").iterdir()]
    assert any(n.startswith("jit__step-") for n in cached), cached  # the train step the resume reuses

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "step 50/120" not in done.stdout  # the animator resumed after its first log line, not from 0
    assert "step 120/120" in done.stdout
    for name in ("heldout_synthetic", "driven_by_video", "emotion_transfer"):
        assert (tmp_path / "demo" / "videos" / f"{name}.mp4").stat().st_size > 1000
        assert (tmp_path / "demo" / "videos" / f"{name}.png").exists()
    assert "mouth-motion correlation" in done.stdout and "hold_gaze0" in done.stdout
    assert "Done in" in done.stdout
