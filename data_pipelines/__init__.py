"""Data for GoHD-JAX: clip records, audio features, the synthetic talking-head
generator, TFDS builders and the Grain pipelines of each training stage."""

from gohd_jax.platforms import prefer_cpu_without_accelerator as _cpu_unless_accelerator

_cpu_unless_accelerator()
