"""GoHD-JAX: JAX/Flax reimplementation of GoHD (AAAI 2025).

Rooms (see DESIGN.md of the project): ``interop`` (official weights, parity),
and, as the stage issues land, ``nn``, ``models``, ``diffusion``, ``train``,
``parallel``, ``infer``, ``eval``. Data lives in the sibling package
``data_pipelines``.
"""

__version__ = "0.1.0"

from gohd_jax.platforms import prefer_cpu_without_accelerator as _cpu_unless_accelerator

_cpu_unless_accelerator()
