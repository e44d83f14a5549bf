"""Shared pytest fixtures.

``shared`` gives the shared folder (oracles, example media). Tests that need it
skip with a reason where it is absent, but fail when CI=true: CI always has it.
"""

from __future__ import annotations

import os

import pytest

# The tests' subprocesses (gohd animate, launch/train.py) must not write the user's persistent
# compilation cache; tests of the cache give their own folder.
os.environ.setdefault("GOHD_COMPILE_CACHE", "off")

from gohd_jax import shared_data


def require_shared(*parts: str):
    path = shared_data.shared_path(*parts)
    if path is None:
        msg = shared_data.describe_missing(*parts)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)
    return path


@pytest.fixture
def shared():
    """The shared folder (skips, or fails under CI=true, when absent)."""
    return require_shared()


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory):
    """A saved bundle of the tiny random-init models (64 px), built once per test process; tests
    only read it."""
    from gohd_jax.infer.bundle import random_bundle, save_bundle

    return save_bundle(random_bundle("tiny", window=32), tmp_path_factory.mktemp("tiny_bundle"))


def pytest_configure(config):
    # 8 fake CPU devices for the mesh tests; must happen before JAX starts a backend.
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    # Test speed only: XLA:CPU takes ~1 s to compile each partitionable-threefry draw of a new
    # shape (every parameter of every freshly built model), 0.15 s for the classic threefry
    # (FrameExpression.tiny: 35 s -> 4 s to build). The values differ, the code paths do not;
    # the package keeps JAX's default (partitionable, for sharded initialisation on pods).
    jax.config.update("jax_threefry_partitionable", False)
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` (minutes each: the quality trainings) run first, so that under
    pytest-xdist the workers finish together instead of one starting a 10-minute test last."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: order kept otherwise


@pytest.fixture
def gcs_bucket(tmp_path):
    """A local Google Cloud Storage (gcp-storage-emulator, in memory) with bucket ``gohd``; yields
    (the environment that points gcsfs / epath, TensorStore (Orbax) and google-cloud-storage at
    it, the bucket's URI)."""
    import subprocess
    import sys
    import time
    import urllib.request

    import portpicker

    port = portpicker.pick_unused_port()
    log = open(tmp_path / "gcs.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                               f"--port={port}", "--in-memory", "--default-bucket=gohd"], stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/gohd", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    # One request at a time per process: the emulator (a small threaded Python server) sometimes
    # answers concurrent conditional writes with a generation TensorStore cannot parse.
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
           "GOOGLE_CLOUD_PROJECT": "test", "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "1"}
    try:
        yield env, "gs://gohd"
    finally:
        server.terminate()
        server.wait(timeout=30)
