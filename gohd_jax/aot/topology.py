"""Compile targets without the hardware: TPU slices (libtpu) and NVIDIA GPU nodes (the jax CUDA
plugin), each with the chip facts the report compares against.

TPU: ``tpu_target("v5e:4x4")`` asks libtpu for the slice's devices
(``jax.experimental.topologies.get_topology_desc(platform="tpu", ...)``); v4 and v5p are taken
with ``chip_config_name="megacore"`` so that one device is one chip (two TensorCores), as they
run. Needs ``libtpu`` (extra ``.[tpu]``).

GPU: ``gpu_target("h100", "1x2x8")`` gives the CUDA plugin an XLA ``GpuTargetConfigProto`` (text
form, ``gpu_specs/<gpu>.txtpb``, written from the hardware facts XLA keeps per GPU) and a
topology PARTITIONS x HOSTS x GPUS-PER-HOST (``1x1x8`` one node of 8, ``1x2x8`` two nodes). Needs
``jax-cuda12-plugin`` (extra ``.[gpu-aot]``; no CUDA libraries, nothing runs), and JAX started
with ``JAX_PLATFORMS=cpu`` and ``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`` (``prepare_environment``;
``gohd-aot`` sets both before importing JAX).

Chip facts (per chip; peak = dense bf16 matmul rate, bandwidth = HBM):

======  ========  ==============  ============  =================================================
chip    HBM       peak bf16       bandwidth     source
======  ========  ==============  ============  =================================================
v4      32 GiB    275 TFLOP/s     1200 GB/s     Cloud TPU docs, "TPU v4"
v5e     16 GiB    197 TFLOP/s     819 GB/s      Cloud TPU docs, "TPU v5e"
v5p     95 GiB    459 TFLOP/s     2765 GB/s     Cloud TPU docs, "TPU v5p"
v6e     32 GiB    918 TFLOP/s     1640 GB/s     Cloud TPU docs, "TPU v6e"
h100    79.1 GiB  989 TFLOP/s     3352 GB/s     spec (SXM5 80GB); peak from its tensor-core rate
a100    79.3 GiB  312 TFLOP/s     2039 GB/s     spec (SXM4 80GB); peak from its tensor-core rate
b200    178 GiB   2220 TFLOP/s    7672 GB/s     spec; peak from its tensor-core rate (NVIDIA's
                                                datasheet: 2250 TFLOP/s dense)
======  ========  ==============  ============  =================================================

GPU memory and bandwidth are read from the spec file (``device_memory_size``, what the driver
reports, and ``memory_bandwidth``); the peak from its ``matrix_unit_description`` for bf16.

Nothing here imports JAX at module level: ``prepare_environment`` must run first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any

__all__ = ["Chip", "Target", "TopologyError", "MissingExtra", "TPU_CHIPS", "GPUS", "prepare_environment",
           "tpu_target", "gpu_target", "make_target", "gpu_spec_text"]

GiB = 2 ** 30


class TopologyError(ValueError):
    """An unknown TPU generation / GPU name or a malformed topology (the message lists the valid ones)."""


class MissingExtra(RuntimeError):
    """libtpu or the CUDA plugin is not installed (the message names the extra to install)."""


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_flops: float        # dense bf16, FLOP/s
    hbm_bandwidth: float     # bytes/s
    source: str


TPU_CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9, "Cloud TPU docs (TPU v4)"),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, "Cloud TPU docs (TPU v5e)"),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, "Cloud TPU docs (TPU v5p)"),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9, "Cloud TPU docs (TPU v6e)"),
}
_MEGACORE = ("v4", "v5p")  # two TensorCores per chip, one device

# name -> (spec file in gpu_specs/, what it is)
GPUS: dict[str, tuple[str, str]] = {
    "a100": ("a100.txtpb", "NVIDIA A100 SXM4 80GB"),
    "b200": ("b200.txtpb", "NVIDIA B200"),
    "h100": ("h100.txtpb", "NVIDIA H100 SXM5 80GB"),
}
_BF16 = 16  # xla PrimitiveType of bfloat16 (the key of matrix_unit_description's rate_infos)


@dataclasses.dataclass
class Target:
    """A compile target: ``platform`` "tpu" | "gpu", ``name`` ("v5e:4x4", "h100:1x2x8"), the
    chip's facts and the compile-only devices (one per chip)."""

    platform: str
    name: str
    chip: Chip
    devices: list[Any]

    @property
    def chips(self) -> int:
        return len(self.devices)

    def describe(self) -> str:
        return f"{self.name} ({self.chips} x {self.chip.name}, {self.chip.hbm_bytes / GiB:.1f} GiB each)"


# ----------------------------------------------------------------------------- environment

def prepare_environment(*, gpu: bool = False) -> None:
    """Sets what JAX must see before it starts: the host compiles only (``JAX_PLATFORMS=cpu``), and
    for GPU targets the CUDA plugin loads without a driver (``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``).
    Call before importing JAX."""
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            platforms = os.environ.get("JAX_PLATFORMS", "")
            if platforms != "cpu" or (gpu and os.environ.get("JAX_SKIP_CUDA_CONSTRAINTS_CHECK") != "1"):
                raise RuntimeError("JAX has already started; gohd-aot's targets need JAX_PLATFORMS=cpu "
                                   "and JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 set before it starts")
            return
    os.environ["JAX_PLATFORMS"] = "cpu"
    # libtpu takes /tmp/libtpu_lockfile (one process per TPU host); compiling needs no TPU, and
    # another process holding it (a test worker, a second gohd-aot) must not stop us.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if gpu:
        os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"


@contextlib.contextmanager
def _quiet_stderr():
    """libtpu prints TPU-host discovery warnings (worker hostnames, accelerator type) on the C
    stderr when asked for a topology on a machine that is not a TPU host. They are irrelevant for
    compiling; hide them, and give them back if the call fails."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode(errors="replace")[-4000:])


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ----------------------------------------------------------------------------- TPU

_TPU_RE = re.compile(r"^(v\d+[a-z]*)[:=](\d+(?:x\d+){1,2})$")


def tpu_target(topology: str) -> Target:
    """The devices of a TPU slice, e.g. ``"v5e:4x4"``, ``"v5p:4x4x4"``, ``"v6e:8x8"``, ``"v4:2x2x2"``."""
    gens = ", ".join(TPU_CHIPS)
    m = _TPU_RE.match(topology.strip().lower())
    if not m:
        raise TopologyError(f"TPU topology {topology!r} is not GENERATION:DIMS (e.g. v5e:4x4, v5p:4x4x4, "
                            f"v6e:8x8; generations: {gens}); for NVIDIA GPUs add --gpu=a100|b200|h100")
    gen, dims = m.groups()
    if gen not in TPU_CHIPS:
        raise TopologyError(f"unknown TPU generation {gen!r} in {topology!r}; choose one of {gens}")
    if not _installed("libtpu"):
        raise MissingExtra("compiling for TPU needs libtpu: pip install -e '.[tpu]'")
    from jax.experimental import topologies

    kwargs = {"chip_config_name": "megacore"} if gen in _MEGACORE else {}
    try:
        with _quiet_stderr():
            devices = topologies.get_topology_desc(platform="tpu", topology_name=f"{gen}:{dims}", **kwargs).devices
    except Exception as e:  # noqa: BLE001  (libtpu's JaxRuntimeError: one line for the user)
        raise TopologyError(f"libtpu rejects TPU topology {topology!r}: {_first_line(e)}") from None
    return Target(platform="tpu", name=f"{gen}:{dims}", chip=TPU_CHIPS[gen], devices=list(devices))


# ----------------------------------------------------------------------------- GPU

def gpu_spec_text(gpu: str) -> str:
    """The GpuTargetConfigProto text of ``gpu`` (package data)."""
    if gpu not in GPUS:
        raise TopologyError(f"unknown GPU {gpu!r}; choose one of {', '.join(sorted(GPUS))}")
    return importlib.resources.files("gohd_jax.aot").joinpath("gpu_specs", GPUS[gpu][0]).read_text()


def _spec_number(text: str, field: str) -> float:
    m = re.search(rf"^\s*{field}:\s*([0-9.e+]+)\s*$", text, re.M)
    if not m:
        raise ValueError(f"GPU spec has no {field}")
    return float(m.group(1))


def _spec_peak_bf16(text: str) -> float:
    """Dense bf16 FLOP/s from the spec: cores x units x FMA/clock x 2 x clock."""
    m = re.search(r"rate_infos\s*{\s*key:\s*%d\s*value\s*{([^}]*)}" % _BF16, text)
    if not m:
        raise ValueError("GPU spec has no bf16 matrix_unit_description rate")
    fields = dict(re.findall(r"(\w+):\s*([0-9.e+]+)", m.group(1)))
    return (_spec_number(text, "core_count") * float(fields["units_per_core"]) * float(fields["ops_per_clock"])
            * 2.0 * float(fields["clock_rate_ghz"]) * 1e9)


def gpu_chip(gpu: str) -> Chip:
    text = gpu_spec_text(gpu)
    return Chip(GPUS[gpu][1], int(_spec_number(text, "device_memory_size")), _spec_peak_bf16(text),
                _spec_number(text, "memory_bandwidth"), f"gohd_jax/aot/gpu_specs/{GPUS[gpu][0]}")


_GPU_TOPO_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def _check_plugin_matches_jaxlib() -> None:
    """jaxlib ignores a CUDA plugin of another version (a warning, then an unreadable failure):
    say so plainly. The ``.[gpu-aot]`` extra pins jax, jaxlib and the plugin together."""
    from importlib import metadata

    try:
        plugin = metadata.version("jax-cuda12-plugin")
    except metadata.PackageNotFoundError:
        return
    jaxlib = metadata.version("jaxlib")
    if plugin != jaxlib:
        raise MissingExtra(f"jax-cuda12-plugin {plugin} does not match jaxlib {jaxlib}, so JAX will not load it: "
                           f"pip install -e '.[gpu-aot]' (it pins jax, jaxlib and the plugin to one version)")


def gpu_target(gpu: str, topology: str) -> Target:
    """The devices of ``topology`` = PARTITIONSxHOSTSxGPUS (``1x1x8``: one node of 8 GPUs,
    ``1x2x8``: two nodes) of ``gpu`` (h100, a100, b200)."""
    gpu = gpu.strip().lower()
    text = gpu_spec_text(gpu)
    m = _GPU_TOPO_RE.match(topology.strip().lower())
    if not m or min(int(x) for x in m.groups()) < 1:
        raise TopologyError(f"GPU topology {topology!r} is not PARTITIONSxHOSTSxGPUS, e.g. 1x1x8 (one node "
                            f"of 8 GPUs) or 1x2x8 (two nodes of 8)")
    if not (_installed("jax_cuda12_plugin") or _installed("jax_plugins.xla_cuda12")):
        raise MissingExtra("compiling for NVIDIA GPUs needs the jax CUDA plugin: pip install -e '.[gpu-aot]'")
    _check_plugin_matches_jaxlib()
    from jax.experimental import topologies

    try:
        devices = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=text,
                                               topology=topology.strip().lower()).devices
    except NotImplementedError:
        raise RuntimeError("the CUDA plugin did not load: set JAX_PLATFORMS=cpu and "
                           "JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before JAX starts (gohd-aot does)") from None
    except Exception as e:  # noqa: BLE001
        raise TopologyError(f"the CUDA plugin rejects {gpu} topology {topology!r}: {_first_line(e)}") from None
    return Target(platform="gpu", name=f"{gpu}:{topology.strip().lower()}", chip=gpu_chip(gpu),
                  devices=list(devices))


def make_target(topology: str, gpu: str | None = None) -> Target:
    return gpu_target(gpu, topology) if gpu else tpu_target(topology)


def gpu_topology_chips(topology: str) -> int:
    """Number of GPUs of a PARTITIONSxHOSTSxGPUS string (0 if malformed), known before JAX starts."""
    m = _GPU_TOPO_RE.match(topology.strip().lower())
    if not m:
        return 0
    a, b, c = (int(x) for x in m.groups())
    return a * b * c
