"""``gohd serve``: the batching queue's rules, and the real server (a subprocess on 127.0.0.1 with the
tiny random-init bundle) driven through its page in headless Chromium (Debian's ``chromium``, by
playwright's library; no browser is downloaded) and through its API with ``gradio_client``.

The page test uploads the example portrait and real speech, changes controls, renders, and checks
the video element's file (frames, an audio stream) and that the page asked nothing of any address
but 127.0.0.1. The API test sends four requests at once (a barrier; ``--max-wait-ms 2000``) and
checks they were served in fewer batches than requests, each with its frame count and the same
frames as ``gohd animate --manifest`` (which equals single-clip ``gohd animate``: test_animate.py).
Screenshots go to ``$GOHD_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gohd_jax.infer.serve.batcher import BatchQueue, Busy
from gohd_jax.infer.serve.service import bucket
from tests.conftest import require_shared

ROOT = Path(__file__).resolve().parent.parent
SR = 16000
# the README's examples' sampling (every test on one engine: one compile per batch size)
FAST = {"sampler": "ddim", "steps": 25}


# ------------------------------------------------------------------------------------ the queue


def test_batches_share_a_key_fill_up_or_wait_and_a_full_queue_says_busy():
    q = BatchQueue(max_batch=3, max_wait_s=0.3, max_pending=5)
    a = [q.submit("A", i) for i in range(4)]
    b = q.submit("B", 9)
    with pytest.raises(Busy):
        q.submit("A", 5)  # 5 waiting: the sixth is refused, not queued
    t0 = time.monotonic()
    first = q.next_batch(timeout=5)
    assert [t.item for t in first] == [0, 1, 2] and time.monotonic() - t0 < 0.1  # full: at once
    second = q.next_batch(timeout=5)  # A's last arrived before B: A first, after its wait
    assert [t.item for t in second] == [3] and time.monotonic() - t0 >= 0.29
    assert [t.item for t in q.next_batch(timeout=5)] == [9]
    assert q.next_batch(timeout=0.05) == [] and len(q) == 0
    t = q.submit("C", 1)
    assert q.position(t) == 0 and q.position(a[0]) == -1
    q.close()
    assert [x.item for x in q.next_batch()] == [1]  # closed: what is left goes without waiting
    assert q.next_batch() == [] and b.done is False
    with pytest.raises(Busy):
        q.submit("C", 2)


def test_tickets_resolve_across_threads_and_buckets_are_powers_of_two():
    q = BatchQueue(max_batch=4, max_wait_s=1.0, max_pending=8)
    got = []

    def consumer():
        for t in q.next_batch(timeout=5):
            t.resolve(t.item * 10)

    threading.Thread(target=consumer).start()
    tickets = [q.submit("k", i) for i in range(4)]
    for t in tickets:
        assert t.wait(5)
        got.append(t.result)
    assert got == [0, 10, 20, 30]
    assert [bucket(n, 4) for n in range(1, 5)] == [1, 2, 4, 4]
    assert [bucket(n, 6) for n in (3, 5, 6)] == [4, 6, 6] and bucket(1, 1) == 1


def test_request_checks_and_output_cleanup(tiny_bundle_dir, tmp_path):
    """Settings no engine takes are refused before any file is read; outputs older than
    ``keep_outputs_s`` are deleted, younger ones kept; engines beyond ``max_engines`` are dropped,
    least recently used first."""
    from gohd_jax.infer.serve.service import AnimateService, Request, RequestError, ServeOptions

    service = AnimateService(ServeOptions(str(tiny_bundle_dir), outputs=str(tmp_path), keep_outputs_s=60,
                                          max_engines=1))
    try:
        for bad, cause in [({"sampler": "euler"}, "sampler 'euler'"), ({"steps": 0}, "steps 0"),
                           ({"precision": "fp8"}, "precision 'fp8'"), ({"pose_scale": float("nan")}, "pose_scale nan"),
                           ({"image": ""}, "no portrait")]:
            with pytest.raises(RequestError, match=cause):
                service.check(Request(**{"image": "x.png", "audio": "y.wav", **bad}))
        assert Request("a", "b", sampler="ddpm", steps=7).key() == ("ddpm", 150, "auto")  # DDPM runs 150
        old, new = tmp_path / "old.mp4", tmp_path / "new.mp4"
        old.write_bytes(b"x"), new.write_bytes(b"x")
        os.utime(old, (time.time() - 120, time.time() - 120))
        assert service.clean_outputs() == 1 and not old.exists() and new.exists()
        assert service.alive and service.stats()["requests"] == 0
        first = service.engine(("ddim", 2, "float32"))
        assert service.engine(("ddim", 2, "float32")) is first
        service.engine(("ddim", 3, "float32"))  # --max-engines 1: the first is dropped
        assert list(service.engines) == [("ddim", 3, "float32")]
    finally:
        service.close()


def test_page_values_map_to_gohd_animate_controls():
    from gohd_jax.infer.serve.page import INPUTS, request_from
    from gohd_jax.infer.serve.service import RequestError

    r = request_from("p.png", "s.wav", pose="still", gaze="angles", gaze_pitch=0.1, gaze_yaw=-0.2, blink="off")
    assert (r.pose, r.gaze, r.blink) == ("still", "0.1,-0.2", "off")
    r = request_from("p.png", "s.wav", pose="from a video", pose_reference="ref.mp4", gaze="left")
    assert (r.pose, r.gaze) == ("ref.mp4", "left")
    with pytest.raises(RequestError, match="upload the pose reference"):
        request_from("p.png", "s.wav", pose="from a video")
    assert INPUTS[:2] == ("portrait", "audio") and len(INPUTS) == 15


# ------------------------------------------------------------------------------------ the server


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _free_port() -> int:
    import portpicker

    return portpicker.pick_unused_port()


def _speech(seconds: float) -> np.ndarray:
    from data_pipelines.audio import load_audio

    wav = load_audio(require_shared("assets", "gohd_examples", "audios", "monalisa.mp3"))
    return np.resize(wav, int(seconds * SR)).astype(np.float32)  # loops the 10.6 s of speech if longer


def _wav(path: Path, wav: np.ndarray) -> str:
    import soundfile as sf

    sf.write(str(path), wav, SR)
    return str(path)


def _decode(path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as c:
        audio = sum(s.type == "audio" for s in c.streams)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return frames, audio


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bundle_dir):
    """``gohd serve`` with the tiny bundle on a free port: batches of up to 4, a 2 s wait, 20 s of
    audio and 2 MB uploads at most; yields (base URL, its compile cache folder, the bundle)."""
    portrait = require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg")
    work = tmp_path_factory.mktemp("serve")
    cache, port = work / "xla", _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GOHD_SHARED": str(portrait.parents[3])}
    env.pop("XLA_FLAGS", None)
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gohd_jax.infer.cli", "serve", "--checkpoint", str(tiny_bundle_dir),
                             "--port", str(port), "--max-batch-clips", "4", "--max-wait-ms", "2000",
                             "--max-audio-s", "20", "--max-upload-mb", "2", "--compile-cache", str(cache),
                             "--outputs", str(work / "out"), "-v"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if _get(base + "/healthz")["ok"]:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("gohd serve did not start:\n" + (work / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield base, cache, tiny_bundle_dir
    proc.terminate()
    assert proc.wait(30) == 0, (work / "server.log").read_text()[-3000:]
    log.close()


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "Debian's chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but " + msg)
        pytest.skip(msg)
    return path


def _artifacts() -> Path:
    where = Path(os.environ.get("GOHD_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


class _Browser:
    """Headless Chromium on one page that records every request to an address other than
    127.0.0.1 (and aborts it: the page must work offline)."""

    FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=_chromium(), args=self.FLAGS)
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 1300})
        self.outside: list[str] = []

        def route(r):
            if r.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
                return r.continue_()
            self.outside.append(r.request.url)
            return r.abort()

        self.page.route("**/*", route)
        return self

    def __exit__(self, *exc):
        self.browser.close()
        self._pw.stop()


def _fill(page, base: str, portrait: str, speech: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#animate")
    page.locator("#portrait input[type=file]").set_input_files(portrait)
    page.locator("#speech input[type=file]").set_input_files(speech)
    page.wait_for_selector("#portrait img")
    page.wait_for_selector("#speech audio, #speech .waveform-container, #speech button[aria-label*=lay]",
                           state="attached")


@pytest.mark.xdist_group("serve")  # one server per module (with --dist loadgroup)
@pytest.mark.slow  # with the module's server: ~1 min of a worker (server start, two engine compiles)
def test_page_in_headless_chromium_renders_a_video_with_audio(server, tmp_path):
    base, _, _ = server
    portrait = str(require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg"))
    speech = _wav(tmp_path / "speech.wav", _speech(2.0))
    with _Browser() as b:
        page = b.page
        _fill(page, base, portrait, speech)
        page.locator("#pose label", has_text="still").click()  # two controls changed, and the sampler
        page.locator("#seed input").fill("5")
        page.locator("#sampler label", has_text="ddim").click()
        page.locator("#steps input[type=number]").fill(str(FAST["steps"]))
        page.locator("#steps input[type=number]").press("Enter")
        before = _get(base + "/stats")["requests"]
        page.locator("#animate").click()
        video = page.wait_for_selector("#result video[src]", timeout=180_000)
        src = video.get_attribute("src")
        body = page.request.get(src if src.startswith("http") else base + src).body()
        page.screenshot(path=str(_artifacts() / "serve_page.png"), full_page=True)
        assert b.outside == [], f"the page asked outside addresses: {b.outside}"
    (tmp_path / "got.mp4").write_bytes(body)
    frames, audio_streams = _decode(tmp_path / "got.mp4")
    assert frames.shape == (50, 64, 64, 3) and audio_streams == 1  # 2 s of speech at 25 fps
    assert _get(base + "/stats")["requests"] == before + 1


@pytest.mark.xdist_group("serve")  # one server per module (with --dist loadgroup)
@pytest.mark.slow  # seconds with the module's server
def test_page_shows_bad_input_and_silence_and_the_server_keeps_running(server, tmp_path):
    from PIL import Image

    base, _, _ = server
    portrait = str(require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg"))
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(blank)
    speech = _wav(tmp_path / "speech.wav", _speech(1.0))
    silent = _wav(tmp_path / "silent.wav", np.zeros(SR, np.float32))
    with _Browser() as b:
        page = b.page
        _fill(page, base, str(blank), speech)
        page.locator("#animate").click()
        page.get_by_text("no face found").first.wait_for(timeout=60_000)  # the cause, in the page
        assert not page.get_by_text("Traceback").count()
        assert _get(base + "/healthz")["ok"]
        _fill(page, base, portrait, silent)
        page.locator("#sampler label", has_text="ddim").click()
        page.locator("#steps input[type=number]").fill(str(FAST["steps"]))
        page.locator("#steps input[type=number]").press("Enter")
        page.locator("#animate").click()
        page.get_by_text("the audio is silent").first.wait_for(timeout=120_000)  # a warning, and the clip
        page.wait_for_selector("#result video[src]", timeout=120_000)
        assert b.outside == []
    assert _get(base + "/healthz")["ok"]


@pytest.mark.xdist_group("serve")  # one server per module (with --dist loadgroup)
@pytest.mark.slow  # ~40 s with the module's server (a batch of 4 compiles; gohd animate in a subprocess)
def test_four_concurrent_api_requests_share_a_batch_and_equal_gohd_animate(server, tmp_path):
    from gradio_client import Client, handle_file

    base, cache, bundle = server
    portrait = str(require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg"))
    seconds = (1.0, 1.5, 2.0, 2.4)  # different lengths: padded into the batch's windows
    wavs = [_wav(tmp_path / f"s{i}.wav", _speech(s)) for i, s in enumerate(seconds)]
    clients = [Client(base + "/", verbose=False) for _ in wavs]
    barrier = threading.Barrier(len(wavs))
    got: list = [None] * len(wavs)

    def request(i: int) -> None:
        barrier.wait()
        try:
            got[i] = clients[i].predict(handle_file(portrait), handle_file(wavs[i]), seed=i, **FAST,
                                        api_name="/animate")
        except Exception as e:  # reported below
            got[i] = e

    before = _get(base + "/stats")
    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(wavs))]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    after = _get(base + "/stats")
    assert not any(isinstance(g, Exception) or g is None for g in got), got
    assert after["requests"] - before["requests"] == 4
    assert after["batches_run"] - before["batches_run"] < 4, (before, after)
    served = [_decode(g) for g in got]
    assert [f.shape[0] for f, _ in served] == [round(25 * s) for s in seconds] and all(a == 1 for _, a in served)
    assert after["mean_batch_size"] > 1 and after["frames_per_s"] > 0 and after["queue_length"] == 0

    # the same clips from gohd animate (its manifest mode: the same engine code, batched)
    rows = ["image,audio,out,seed"] + [f"{portrait},{w},{tmp_path / f'o{i}.mp4'},{i}" for i, w in enumerate(wavs)]
    (tmp_path / "jobs.csv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "gohd_jax.infer.cli", "animate", "--manifest", str(tmp_path / "jobs.csv"),
           "--checkpoint", str(bundle), "--batch-clips", "4", "--sampler", "ddim", "--steps", str(FAST["steps"]),
           "--compile-cache", str(cache)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for i, (frames, _) in enumerate(served):  # the same frames (and bytes: Mp4Writer keeps x264 deterministic)
        np.testing.assert_array_equal(frames, _decode(tmp_path / f"o{i}.mp4")[0])

    # bad input and limits: too long an audio, an unreadable one, too big an upload: refused with
    # the cause; the server carries on
    long_wav = _wav(tmp_path / "long.wav", _speech(21.0))
    with pytest.raises(Exception, match="at most 20 s"):
        clients[0].predict(handle_file(portrait), handle_file(long_wav), **FAST, api_name="/animate")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + os.urandom(4000))
    with pytest.raises(Exception, match="broken.wav"):  # the file named, not a stack trace
        clients[0].predict(handle_file(portrait), handle_file(str(broken)), **FAST, api_name="/animate")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + os.urandom(3 * 2**20))
    with pytest.raises(Exception):
        clients[0].predict(handle_file(str(big)), handle_file(wavs[0]), **FAST, api_name="/animate")
    assert _get(base + "/healthz")["ok"]


@pytest.mark.xdist_group("serve")  # one server per module (with --dist loadgroup)
@pytest.mark.slow  # seconds with the module's server
def test_the_readmes_curl_example_runs_as_written(server, tmp_path):
    """The README's curl block, run by bash against the server: out.mp4 has the frames of the
    speech and an audio stream."""
    import re

    base, _, _ = server
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "gradio_api/upload" in b)
    shutil.copy(require_shared("assets", "gohd_examples", "source", "HDTF_0.jpg"), tmp_path / "face.jpg")
    _wav(tmp_path / "speech.wav", _speech(1.2))
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env={**os.environ, "URL": base},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    frames, audio = _decode(tmp_path / "out.mp4")
    assert frames.shape[0] == 30 and audio == 1

