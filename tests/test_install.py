"""The install: requirements.lock pins every dependency of every extra within pyproject.toml's
ranges, jax's packages to one release, and the environment running the tests is the locked one."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("gohd-jax")]
    return reqs


def test_the_lock_pins_every_dependency_within_its_range():
    pins = _lock()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_jax_and_its_plugins_are_one_release():
    pins = _lock()
    assert pins["jax"] == pins["jaxlib"] == pins["jax-cuda12-plugin"] == pins["jax-cuda12-pjrt"]


def test_the_tests_run_in_the_locked_environment():
    pins = _lock()
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "libtpu",
                 "jax-cuda12-plugin"):
        assert metadata.version(name) == pins[name], (f"{name} {metadata.version(name)} installed, "
                                                      f"lock says {pins[name]}")
