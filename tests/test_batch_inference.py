"""Batch inference at scale (``gohd animate --manifest``, ``gohd_jax/infer/manifest.py``): the host
pipeline is bounded and keeps its order within length windows, bad rows fail alone with their
reason, a batch that raises is split until the failing row is found, reruns skip complete outputs,
shards split a manifest once and ``merge-results`` finds what is missing; the slow tests run 2,000
rows in a subprocess (flat memory, kill -9 in the middle, resume) and two shards of a JAX
distributed run on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gohd_jax.infer import cli
from gohd_jax.infer.batch_render import BatchRenderer
from gohd_jax.infer import manifest as M

SR = 16000
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle_dir):
    return tiny_bundle_dir


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.02 * rng.normal(size=t.shape)).astype(np.float32)


def _inputs(folder: Path, seconds=(0.2, 0.28, 0.36, 0.6)) -> None:
    """face.png (no face in it: a flat colour) and a0.wav ... speech of the given lengths."""
    import soundfile as sf

    Image.fromarray(np.full((80, 80, 3), 100, np.uint8)).save(folder / "face.png")
    for k, sec in enumerate(seconds):
        sf.write(str(folder / f"a{k}.wav"), _speech(sec, k), SR)


def _manifest(folder: Path, n: int, name: str = "jobs.csv", out: str = "out") -> Path:
    (folder / out).mkdir(exist_ok=True)
    rows = ["image,audio,out"] + [f"face.png,a{k % 4}.wav,{out}/c{k:05d}.mp4" for k in range(n)]
    (folder / name).write_text("\n".join(rows) + "\n")
    return folder / name


def _results(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


FAST = ["--pose", "still", "--gaze", "forward", "--sampler", "ddim", "--steps", "2"]


def _run(capsys, *argv) -> tuple[int, str]:
    code = cli.main(["animate", *map(str, argv)])
    return code, capsys.readouterr().out


# ------------------------------------------------------------------------------------ pieces

def test_shards_are_stable_disjoint_and_cover_every_row():
    keys = [f"out/clip{k}.mp4" for k in range(1000)]
    for n in (1, 2, 3, 8):
        shards = [M.shard_of(k, n) for k in keys]
        assert shards == [M.shard_of(k, n) for k in keys]  # deterministic
        counts = np.bincount(shards, minlength=n)
        assert counts.sum() == 1000 and counts.min() > 1000 / n * 0.8, counts  # balanced
    # a row keeps its shard when rows are added (the hash is of its own out column only)
    assert M.shard_of("out/clip7.mp4", 4) == M.shard_of("out/clip7.mp4", 4)
    assert M.results_path("d/jobs.csv") == Path("d/jobs.results.jsonl")
    assert M.results_path("d/jobs.csv", 4, 1) == Path("d/jobs.results-00001-of-00004.jsonl")
    assert M.results_path("d/jobs.csv", 4, 1, "r/res.jsonl") == Path("r/res-00001-of-00004.jsonl")


def test_host_pipeline_is_bounded_sorted_within_windows_and_isolates_bad_rows():
    """Rows are prepared ahead of a slow consumer but never more than about two windows ahead;
    each window's batches come out sorted by length; a row whose preparation raises becomes a
    ``Failed`` with its message and the others go on; a bug in the reader reaches the consumer."""
    prepared, consumed = [], []
    lock = threading.Lock()

    def prepare(row):
        if row.values["audio"] == "bad":
            raise ValueError(f"row {row.index}: bad audio")
        with lock:
            prepared.append(row.index)
        return row

    rows = [M.Row(k, f"o{k}", {"audio": "bad" if k == 5 else "", "len": str((k * 7) % 10)}) for k in range(1, 41)]
    pipe = M.HostPipeline(iter(rows), prepare, batch=2, window=6, workers=2, length=lambda r: int(r.values["len"]))
    ahead, failed, batches = [], [], []
    for item in pipe:
        time.sleep(0.02)  # a slow device
        if isinstance(item, M.Failed):
            failed.append(item)
            continue
        consumed.extend(r.index for r in item)
        batches.append(item)
        with lock:
            ahead.append(len(prepared) - len(consumed))
    assert [f.row.index for f in failed] == [5] and "row 5: bad audio" == failed[0].error
    assert sorted(consumed) == [k for k in range(1, 41) if k != 5]
    assert max(ahead) <= 2 * 6 + 2, ahead  # bounded: the window being prepared + the queue
    lengths = [int(r.values["len"]) for b in batches for r in b]
    cuts = [0, 5, 11, 17, 23, 29, 35, 39]  # windows of 6 rows (5 in the one with the bad row)
    for a, b in zip(cuts, cuts[1:]):
        assert lengths[a:b] == sorted(lengths[a:b]), lengths

    def broken_rows():
        yield rows[0]
        raise RuntimeError("the manifest's disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        list(M.HostPipeline(broken_rows(), prepare, batch=1, window=1, workers=0))


def test_merge_results_lists_missing_failed_and_twice(tmp_path):
    man = _manifest(tmp_path, 5)
    for k in (0, 1, 3):
        (tmp_path / "out" / f"c{k:05d}.mp4").write_bytes(b"x")
    a = tmp_path / "jobs.results-00000-of-00002.jsonl"
    b = tmp_path / "jobs.results-00001-of-00002.jsonl"
    a.write_text("\n".join(json.dumps(x) for x in [
        {"row": 1, "status": "ok"}, {"row": 3, "status": "failed", "error": "no face"}]) + "\n")
    b.write_text("\n".join(json.dumps(x) for x in [
        {"row": 2, "status": "ok"}, {"row": 2, "status": "exists"}, {"row": 4, "status": "ok"},
        {"row": 1, "status": "ok"}]) + '\n{"row": 5, "sta')  # a torn last line (a kill)
    rep = M.merge_results(man, [a, b])
    assert rep["rows"] == 5 and rep["done"] == 3  # rows 1, 2, 4
    assert [x["row"] for x in rep["failed"]] == [3] and rep["failed"][0]["error"] == "no face"
    assert [x["row"] for x in rep["missing"]] == [5]
    assert [x["row"] for x in rep["rendered_twice"]] == [1]


# ------------------------------------------------------------------------------------ the command

def test_bad_rows_fail_alone_with_their_reason(tmp_path, bundle_dir, capsys, monkeypatch):
    """Each kind of bad row (missing or unreadable image, unreadable audio, a bad control, no face
    with --require-face, an exception inside its batch) is reported with its reason in the
    results file and the summary; every other row, which uses the same inputs as the bad ones
    but for the one each breaks, is rendered (a batch that raised is split until the row that
    fails alone)."""
    from gohd_jax.infer.animate import Animate

    _inputs(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")
    bad = {"missing.png,a0.wav,out/bad_missing.mp4": "no such image file",
           "broken.png,a0.wav,out/bad_image.mp4": "cannot read the image",
           "face.png,broken.wav,out/bad_audio.mp4": "broken.wav",
           "face.png,a1.wav,out/bad_gaze.mp4,sideways": "--gaze 'sideways'",
           "face.png,a2.wav,out/bad_boom.mp4,": "RuntimeError: boom in the renderer"}
    good = [f"face.png,a{k % 4}.wav,out/c{k:05d}.mp4," for k in range(6)]
    (tmp_path / "out").mkdir()
    (tmp_path / "base.csv").write_text("\n".join(["image,audio,out,gaze"] + good) + "\n")

    real_drive = Animate.drive

    def drive(self, jobs, feats, times=None):
        if any(j.name.endswith("bad_boom.mp4") for j in jobs):
            raise RuntimeError("boom in the renderer")
        return real_drive(self, jobs, feats, times)

    monkeypatch.setattr(Animate, "drive", drive)
    lines = ["image,audio,out,gaze"] + good[:3] + list(bad) + good[3:]
    (tmp_path / "jobs.csv").write_text("\n".join(lines) + "\n")
    code, out = _run(capsys, "--manifest", tmp_path / "jobs.csv", "--checkpoint", bundle_dir, *FAST,
                     "--batch-clips", "4")
    assert code == 1 and "6 of 11 clips written" in out and "5 failed" in out, out
    got = {r["out"]: r for r in _results(tmp_path / "jobs.results.jsonl")}
    for line, why in bad.items():
        key = line.split(",")[2]
        assert got[key]["status"] == "failed" and why in got[key]["error"], (key, got[key])
        assert key in out and not (tmp_path / key).exists() and not (tmp_path / (key + ".partial")).exists()
    for k in range(6):
        r = got[f"out/c{k:05d}.mp4"]
        assert r["status"] == "ok" and r["frames"] == _frames(tmp_path / r["out"]) == round(r["seconds"] * 25)
    # --require-face: the flat-colour portrait has no face, so every row fails, each saying why
    code, out = _run(capsys, "--manifest", tmp_path / "base.csv", "--checkpoint", bundle_dir, *FAST,
                     "--overwrite", "--require-face", "--results", tmp_path / "face.jsonl")
    assert code == 1 and "0 of 6 clips written" in out
    assert all(r["status"] == "failed" and "no face found (--require-face)" in r["error"]
               for r in _results(tmp_path / "face.jsonl"))


@pytest.mark.slow  # ~35 s of a worker; CI runs it after make test (10-minute budget)
def test_reruns_skip_complete_outputs_and_overwrite_redoes_them(tmp_path, bundle_dir, capsys):
    """A rerun renders only rows whose output is missing (a stale .partial from a kill is not an
    output); --overwrite renders every row; the first clip is written before the last row is read
    (a window of 2 rows); --stats reports the stages and the device-wait fraction."""
    _inputs(tmp_path)
    man = _manifest(tmp_path, 8)
    stats = tmp_path / "stats.json"
    argv = ["--manifest", man, "--checkpoint", bundle_dir, *FAST, "--batch-clips", "2", "--bucket-window", "2",
            "--stats", stats]
    code, out = _run(capsys, *argv)
    assert code == 0 and "8 of 8 clips written" in out
    s = json.loads(stats.read_text())
    assert s["ok"] == 8 and s["first_output_s"] < s["last_row_read_s"], s
    assert set(s["device_s"]) >= {"expression", "rendering"} and set(s["host_s"]) >= {"decode", "features"}
    assert 0.0 <= s["device_wait_fraction"] < 1.0 and s["peak_rss_mb"] > 0
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.mp4")}
    assert len(first) == 8 and not list((tmp_path / "out").glob("*.partial"))
    for k in (2, 5):
        (tmp_path / "out" / f"c{k:05d}.mp4").unlink()
    (tmp_path / "out" / "c00005.mp4.partial").write_bytes(b"half a clip")
    code, out = _run(capsys, *argv)
    assert code == 0 and "2 of 8 clips written" in out and "6 already complete" in out, out
    assert not list((tmp_path / "out").glob("*.partial"))
    for p, t in first.items():
        assert (p.stat().st_mtime_ns == t) == (p.name not in ("c00002.mp4", "c00005.mp4")), p
    lines = _results(man.with_name("jobs.results.jsonl"))
    assert len(lines) == 16 and [r["status"] for r in lines[8:]].count("exists") == 6
    code, out = _run(capsys, *argv, "--overwrite")
    assert code == 0 and "8 of 8 clips written" in out
    assert len(_results(man.with_name("jobs.results.jsonl"))) == 8  # --overwrite starts the results afresh


def test_shard_flags_split_the_manifest_and_merge_results_joins_them(tmp_path, bundle_dir, capsys):
    _inputs(tmp_path)
    man = _manifest(tmp_path, 7)
    for i in range(3):
        code, out = _run(capsys, "--manifest", man, "--checkpoint", bundle_dir, *FAST, "--num-shards", 3,
                         "--shard-index", i)
        assert code == 0, out
    code, out = _run(capsys, "merge-results", "--manifest", man)
    assert code == 0 and "7 rows, 3 results file(s): 7 done, 0 failed, 0 missing, 0 rendered more than once" in out
    (tmp_path / "out" / "c00003.mp4").unlink()
    code, out = _run(capsys, "merge-results", "--manifest", man)
    assert code == 1 and "1 missing" in out and "row 4 (out/c00003.mp4): output file gone" in out, out
    code = cli.main(["animate", "--manifest", str(man), "--checkpoint", str(bundle_dir), "--num-shards", "3"])
    assert code == 2 and "together" in capsys.readouterr().err
    code = cli.main(["animate", "--manifest", str(man), "--checkpoint", str(bundle_dir), "--num-shards", "3",
                     "--shard-index", "3"])
    assert code == 2 and "0..2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ slow: scale

def _gohd(log: Path, *argv, env=None) -> subprocess.Popen:
    """``gohd animate ARGV`` in a fresh process, its output to ``log`` (a pipe nobody reads would
    fill and block it)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_ARENA_MAX="2", **(env or {}))
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "gohd_jax.infer.cli", "animate", *map(str, argv)], cwd=REPO,
                                env=env, stdout=f, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow  # ~4 min: 2,100 clips rendered in fresh processes
def test_2000_rows_flat_memory_and_a_kill_9_in_the_middle(tmp_path, bundle_dir):
    """2,000 rows of 0.2-0.36 s with the tiny models: the process rendering them is killed (-9)
    after 1,000 clips, and the same command then finishes the rest. Host memory stays flat in the
    manifest's size: the killed run's largest RSS (sampled every 0.2 s over its 1,000 clips) and
    the resumed run's peak (it reads all 2,000 rows) exceed a 100-row run's peak by under 100 MB.
    Every row is rendered, each at most once but for the batch in flight at the kill; the
    resumed run's first clip is written before it has read the manifest's last row."""
    _inputs(tmp_path, seconds=(0.2, 0.24, 0.28, 0.32))
    argv = ["--checkpoint", bundle_dir, *FAST, "--batch-clips", "32", "--render-batch", "64"]
    small = _manifest(tmp_path, 100, "small.csv", out="small")
    p = _gohd(tmp_path / "small.log", "--manifest", small, *argv, "--stats", tmp_path / "small.json")
    assert p.wait(timeout=600) == 0, _tail(tmp_path / "small.log")
    base = json.loads((tmp_path / "small.json").read_text())["peak_rss_mb"]

    big = _manifest(tmp_path, 2000, "big.csv")
    results = tmp_path / "big.results.jsonl"
    p = _gohd(tmp_path / "killed.log", "--manifest", big, *argv)
    rss, deadline = [], time.time() + 900
    while p.poll() is None and time.time() < deadline:
        rss.append(_rss_mb(p.pid))
        if sum(1 for r in _results(results) if r["status"] == "ok") >= 1000:
            break
        time.sleep(0.2)
    assert p.poll() is None, _tail(tmp_path / "killed.log")
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = {r["row"] for r in _results(results) if r["status"] == "ok"}
    assert 1000 <= len(done_before) < 2000

    p = _gohd(tmp_path / "resumed.log", "--manifest", big, *argv, "--stats", tmp_path / "big.json")
    assert p.wait(timeout=900) == 0, _tail(tmp_path / "resumed.log")
    s = json.loads((tmp_path / "big.json").read_text())
    assert s["exists"] >= len(done_before) and s["ok"] + s["exists"] == 2000 and s["failed"] == 0, s
    assert s["first_output_s"] < s["last_row_read_s"], s
    lines = _results(results)
    ok = [r["row"] for r in lines if r["status"] == "ok"]
    done = set(ok) | {r["row"] for r in lines if r["status"] == "exists"}
    assert done == set(range(1, 2001))
    # the batch in flight at the kill: rendered twice, or complete without its results line
    assert len(ok) - len(set(ok)) <= 32 and 2000 - len(set(ok)) <= 32, (len(ok), len(set(ok)))
    assert not list((tmp_path / "out").glob("*.partial"))
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 2000
    for k in (0, 999, 1999):
        assert _frames(tmp_path / "out" / f"c{k:05d}.mp4") == [5, 6, 7, 8][k % 4]
    growth = max(max(rss), s["peak_rss_mb"]) - base
    print(f"peak RSS: 100 rows {base:.0f} MB; 2,000 rows: killed run {max(rss):.0f} MB, resumed {s['peak_rss_mb']:.0f}")
    assert growth < 100, (base, max(rss), s["peak_rss_mb"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~1 min: two processes
def test_two_processes_of_a_distributed_run_take_one_shard_each(tmp_path, bundle_dir, capsys):
    """Two processes joined by JAX's distributed runtime on 127.0.0.1 (no shard flags): each takes
    the shard of its process index, and together they render every row once (merge-results)."""
    _inputs(tmp_path)
    man = _manifest(tmp_path, 12)
    port = _free_port()
    procs = [_gohd(tmp_path / f"p{i}.log", "--manifest", man, "--checkpoint", bundle_dir, *FAST, "-v",
                   env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                        "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, _tail(tmp_path / f"p{i}.log")
        assert f"shard {i} of 2" in (tmp_path / f"p{i}.log").read_text()
    files = sorted(tmp_path.glob("jobs.results-*-of-00002.jsonl"))
    assert [f.name for f in files] == ["jobs.results-00000-of-00002.jsonl", "jobs.results-00001-of-00002.jsonl"]
    per_shard = [{r["row"] for r in _results(f) if r["status"] == "ok"} for f in files]
    assert all(per_shard) and not (per_shard[0] & per_shard[1]) and per_shard[0] | per_shard[1] == set(range(1, 13))
    code, out = _run(capsys, "merge-results", "--manifest", man)
    assert code == 0 and "12 done, 0 failed, 0 missing, 0 rendered more than once" in out, out


def test_ctrl_c_says_how_to_resume(tmp_path, bundle_dir, capsys, monkeypatch):
    _inputs(tmp_path)
    man = _manifest(tmp_path, 3)

    def interrupted(self, group):
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchRenderer, "__call__", interrupted)
    code = cli.main(["animate", "--manifest", str(man), "--checkpoint", str(bundle_dir), *FAST])
    err = capsys.readouterr().err
    assert code == 130 and "run the same command again to resume" in err and "Traceback" not in err
