"""JAX's persistent compilation cache, on by default for the trainer and ``gohd animate``.

A compiled XLA program is written to disk keyed by everything that decides it (the lowered
module, the devices, the compile options, the JAX/XLA versions and the config flags that reach
the compiler), and read back the next time a process compiles the same program: a restarted
or resumed run, or the next ``gohd animate`` with the same bundle and settings, skips its
compiles.

    from gohd_jax import compile_cache
    compile_cache.enable()              # before the first compile; returns the folder (or None)

Where (first that applies): ``enable(directory)``; the environment variable
``GOHD_COMPILE_CACHE`` (a folder, or ``off`` / ``0`` / ``false`` / ``none`` to turn the cache off);
``$XDG_CACHE_HOME/gohd_jax/xla``; ``~/.cache/gohd_jax/xla``. ``enable(enabled=False)`` turns it
off (also one set through JAX's own ``JAX_COMPILATION_CACHE_DIR``).

What is written: every program, however quick to compile or small
(``jax_persistent_cache_min_compile_time_secs`` = 0, ``jax_persistent_cache_min_entry_size_bytes``
= -1). JAX's defaults (1 s; a filesystem-dependent size floor) keep only the slow compiles: of the
46 compiles of a ``gohd animate`` start with the tiny bundle on CPU, 5 take over a second (the
big jitted functions: 24 s of 26 s on a busy 2-core machine) and 41 take 0.01-1 s (eager ops,
PRNG key handling, small jitted helpers: 2.3 s). Left out, those 41 would compile on every start,
a second or two of the time to the first frame for nothing: an entry is a few KB (the whole cache
of that start is 0.8 MB) and is read back in milliseconds. With no floor, "a second run compiles
nothing" holds exactly, which tests/test_compile_cache.py checks. A value the user set in the
environment (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``,
``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES``) is kept. The folder grows with every new program
(new shapes, bundles, JAX versions); ``JAX_COMPILATION_CACHE_MAX_SIZE`` (bytes) bounds it, or
delete it: it holds nothing else.

The cache is trusted code: a folder others can write to lets them run code in your processes.
In a multi-process run only process 0 writes (JAX's rule); every process reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["ENV_VAR", "default_dir", "resolve_dir", "enable", "current_dir"]

log = logging.getLogger(__name__)

ENV_VAR = "GOHD_COMPILE_CACHE"
_OFF = ("", "0", "off", "false", "no", "none")
MIN_COMPILE_TIME_SECS = 0.0  # cache every program (see the module docstring)
MIN_ENTRY_SIZE_BYTES = -1    # no size floor, and no filesystem-specific override of it


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/gohd_jax/xla``, else ``~/.cache/gohd_jax/xla``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gohd_jax" / "xla"


def resolve_dir(directory: str | os.PathLike | None = None) -> Path | None:
    """The cache folder to use: ``directory``; else ``$GOHD_COMPILE_CACHE`` (None when it says
    off); else ``default_dir()``."""
    if directory is not None and str(directory) != "":
        return Path(directory).expanduser()
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    return default_dir()


def current_dir() -> str | None:
    """The folder JAX's persistent cache is set to (None when off)."""
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir


def _reset_jax_cache() -> None:
    """JAX opens its cache once, at the first compile: after a change of folder (or off) it must
    be reopened for the change to take effect in this process."""
    try:
        from jax._src import compilation_cache as cc

        if cc._cache_initialized or cc._cache is not None:  # noqa: SLF001
            cc.reset_cache()
    except (ImportError, AttributeError):  # a JAX without these internals: best effort
        pass


def enable(directory: str | os.PathLike | None = None, *, enabled: bool = True) -> Path | None:
    """Turns JAX's persistent compilation cache on in ``resolve_dir(directory)`` (created if
    needed) and returns the folder; or off (``enabled=False``, ``GOHD_COMPILE_CACHE=off``, or a
    folder that cannot be created, with a warning), returning None. Call it before the first
    compile of the process; calling it again switches folder."""
    import jax

    path = resolve_dir(directory) if enabled else None
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("compilation cache off: cannot create %s (%s)", path, e.strerror or e)
            path = None
    if path is None:
        if current_dir() is not None:
            jax.config.update("jax_compilation_cache_dir", None)
            _reset_jax_cache()
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = path.resolve()
    changed = current_dir() != str(path)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
    if changed:
        _reset_jax_cache()
    log.info("persistent compilation cache: %s", path)
    return path
