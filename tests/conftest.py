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
