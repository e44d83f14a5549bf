"""Shared pytest fixtures.

``shared`` gives the shared folder (oracles, example media). Tests that need it
skip with a reason where it is absent, but fail when CI=true: CI always has it.
"""

from __future__ import annotations

import os

import pytest

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


def pytest_configure(config):
    # 8 fake CPU devices for the mesh tests; must happen before JAX starts a backend.
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()
