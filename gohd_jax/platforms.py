"""Keep JAX on the CPU cleanly on machines without an accelerator, with the AOT extras installed.

``libtpu`` (extra ``.[tpu]``) and ``jax-cuda12-plugin`` (extra ``.[gpu-aot]``) let ``gohd-aot``
compile for TPU slices and NVIDIA GPUs on a CPU machine. Installed, JAX would also try to start
their backends in every other command, printing TPU/CUDA initialisation errors on stderr. So,
when the user has not set ``JAX_PLATFORMS`` and this machine has no TPU (``/dev/accel*``,
``/dev/vfio/*``) and no NVIDIA GPU (``/dev/nvidia*``), ``JAX_PLATFORMS=cpu`` is set before JAX
starts (or, when JAX is already imported but has not started a backend, its ``jax_platforms``
setting). Importing ``gohd_jax`` (or ``data_pipelines``) does this; a machine with an
accelerator, or an explicit ``JAX_PLATFORMS``, is left alone.
"""

from __future__ import annotations

import glob
import os
import sys

__all__ = ["has_accelerator", "prefer_cpu_without_accelerator"]


def has_accelerator() -> bool:
    """True when this machine exposes a TPU or an NVIDIA GPU device file."""
    return any(glob.glob(p) for p in ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*"))


def prefer_cpu_without_accelerator() -> None:
    if "JAX_PLATFORMS" in os.environ or has_accelerator():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax = sys.modules.get("jax")
    if jax is not None and not jax.config.jax_platforms:
        try:
            from jax._src import xla_bridge
            if not xla_bridge.backends_are_initialized():
                jax.config.update("jax_platforms", "cpu")
        except (ImportError, AttributeError):  # a JAX without these internals: env var only
            pass
