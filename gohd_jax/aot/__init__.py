"""Ahead-of-time compilation without the hardware (``gohd-aot``): the stages' train steps and
inference programs compiled for TPU slices (libtpu) or NVIDIA GPU nodes (the jax CUDA plugin) on a
CPU machine, with per-chip memory, FLOPs, bytes accessed and collectives against the chip.

Modules: ``topology`` (targets and chip facts), ``batches`` (abstract train batches), ``programs``
(what is compiled), ``report`` (analysis and the table), ``cli`` (the command). Importing this
package does not import JAX (``topology.prepare_environment`` must run before JAX starts).
"""
