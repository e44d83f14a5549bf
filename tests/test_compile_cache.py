"""The persistent compilation cache (``gohd_jax/compile_cache.py``): where it lives, how it is
turned off, and that a second ``gohd animate`` compiles nothing.

Each run is a fresh subprocess (the cache is process-global JAX state) that counts JAX's
monitoring events: ``compile_requests_use_cache`` (every XLA compile that consulted the cache),
``cache_hits`` (served from disk) and ``cache_misses`` (JAX records it when it *writes* an entry).
A miss is a request that did not hit: requests - hits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gohd_jax import compile_cache

REPO = Path(__file__).resolve().parent.parent
SR = 16000

_COUNT = r"""
import json, sys
from jax import monitoring
names = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
         "/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "writes"}
counts = dict.fromkeys(names.values(), 0)
def on_event(event, **kw):
    if event in names:
        counts[names[event]] += 1
monitoring.register_event_listener(on_event)
"""

_ANIMATE = _COUNT + r"""
from gohd_jax.infer import cli
code = cli.main(sys.argv[1:])
print("COUNTS " + json.dumps(dict(counts, code=code)))
"""

_TINY = _COUNT + r"""
import jax, jax.numpy as jnp
from gohd_jax import compile_cache
where = compile_cache.enable(sys.argv[1] if len(sys.argv) > 1 else None)
y = jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8)))
print("COUNTS " + json.dumps(dict(counts, where=where and str(where), current=compile_cache.current_dir())))
"""


def _run(code: str, *argv, env: dict | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if k != compile_cache.ENV_VAR}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          env={**base, "JAX_PLATFORMS": "cpu", **(env or {})}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("COUNTS ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(line[-1][len("COUNTS "):])


def _decode(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _quick_tiny_bundle(out: Path) -> Path:
    """``random_bundle("tiny")``'s architectures with numpy-random parameters, saved: built
    abstractly (no XLA compile of an initialiser per parameter shape: 4 s instead of 25 s). Its
    frames mean nothing; the programs are the tiny bundle's."""
    import dataclasses

    import jax
    from flax import nnx

    from gohd_jax.infer.bundle import random_bundle, save_bundle

    roles = ("animator", "pose", "gaze", "expression")
    held = {}

    def build():
        held["bundle"] = random_bundle("tiny", window=16)
        return [getattr(held["bundle"], r) for r in roles]

    models = nnx.eval_shape(build)
    rng = np.random.default_rng(0)
    for m in models:
        nnx.update(m, jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), nnx.state(m)))
    return save_bundle(dataclasses.replace(held["bundle"], **dict(zip(roles, models))), out)


def test_second_gohd_animate_has_zero_cache_misses(tmp_path):
    """A small ``gohd animate`` (tiny bundle, 1.2 s of speech, 64 px, generated gaze; the pose
    sampler is the same program with 6 channels and is left out for time) twice with one cache
    folder: the first writes every program it compiles, the second compiles none (every request a
    hit) and gives the same frames."""
    import soundfile as sf
    from PIL import Image

    bundle = _quick_tiny_bundle(tmp_path / "bundle")
    img = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(img)
    t = np.arange(int(1.2 * SR)) / SR
    sf.write(str(tmp_path / "speech.wav"), (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
                                          ).astype(np.float32), SR)
    cache = tmp_path / "xla"
    runs = []
    for k in range(2):
        out = tmp_path / f"out{k}.mp4"
        runs.append(_run(_ANIMATE, "animate", "--image", img, "--audio", tmp_path / "speech.wav", "--out", out,
                         "--checkpoint", bundle, "--sampler", "ddim", "--steps", "2", "--render-batch", "8",
                         "--pose", "still", "--compile-cache", cache))
    first, second = runs
    assert first["code"] == 0 and second["code"] == 0
    assert first["requests"] > 10 and first["hits"] == 0
    assert first["writes"] == first["requests"], "every program is written, however quick its compile"
    assert len(list(cache.iterdir())) == first["requests"]
    assert second["requests"] == first["requests"]
    assert second["requests"] - second["hits"] == 0 and second["hits"] > 0, second
    assert second["writes"] == 0
    a, b = _decode(tmp_path / "out0.mp4"), _decode(tmp_path / "out1.mp4")
    assert len(a) == 30 and np.array_equal(a, b)


def test_env_folder_and_off(tmp_path):
    on = _run(_TINY, env={compile_cache.ENV_VAR: str(tmp_path / "env_cache")})
    assert on["where"] == on["current"] == str((tmp_path / "env_cache").resolve())
    assert on["writes"] == on["requests"] > 0 and any((tmp_path / "env_cache").iterdir())
    again = _run(_TINY, env={compile_cache.ENV_VAR: str(tmp_path / "env_cache")})
    assert again["hits"] == again["requests"] > 0
    off = _run(_TINY, env={compile_cache.ENV_VAR: "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert off["where"] is None and off["current"] is None and off["writes"] == off["hits"] == 0
    assert not (tmp_path / "xdg").exists()
    # an explicit folder wins over the environment
    explicit = _run(_TINY, tmp_path / "flag_cache", env={compile_cache.ENV_VAR: "off"})
    assert explicit["where"] == str((tmp_path / "flag_cache").resolve()) and explicit["writes"] > 0


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.resolve_dir() == tmp_path / "xdg" / "gohd_jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.resolve_dir() == Path.home() / ".cache" / "gohd_jax" / "xla"
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.resolve_dir() == tmp_path / "mine"
    assert compile_cache.resolve_dir(tmp_path / "flag") == tmp_path / "flag"
    for off in ("off", "0", "false", "none", ""):
        monkeypatch.setenv(compile_cache.ENV_VAR, off)
        assert compile_cache.resolve_dir() is None


@pytest.mark.parametrize("flags", [["--config.compile_cache.enabled=False"], []])
def test_trainer_flags_reach_the_cache(tmp_path, flags):
    """launch/train.py reads ``compile_cache.enabled`` / ``compile_cache.dir`` of the config (only
    the parsing and the call: the config is read and the cache started, then the run stops on a
    missing dataset)."""
    cache = tmp_path / "xla"
    cmd = [sys.executable, str(REPO / "launch" / "train.py"),
           "--config", str(REPO / "configs" / "mouth_regressor.py:tiny"), f"--workdir={tmp_path / 'run'}",
           f"--config.data.dir={tmp_path / 'no_data'}", f"--config.compile_cache.dir={cache}", *flags]
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV_VAR}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert "no_data" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]  # it got to the data
    assert cache.is_dir() == (not flags), (proc.stdout + proc.stderr)[-3000:]
