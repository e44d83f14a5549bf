"""gohd-aot: abstract batches, the report's parsing, clear errors, and real AOT compiles of the tiny
stages for a TPU slice (v5e:2x2, data 2 x fsdp 2) and two H100s (1x1x2, fsdp 2).

The compiles run the CLI in subprocesses (the CUDA plugin's environment must be set before JAX
starts), two at a time. Compiling for TPU and GPU is slow on XLA's side even for the tiny models
(the tiny animator's train step takes about 3 minutes for v5e on one core, the tiny stage-1
step 1.5 minutes; the GPU compiles are faster): the default suite compiles expression stage 2
(train step + one expression window) for both targets, and the slow suite (``make test-slow``)
every tiny stage and all its programs. GPU subprocesses run with Triton GEMM fusions off
(``XLA_FLAGS``), which halves their compile time and changes nothing these tests check.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import pipelines, records
from tests.fakes import FakeClips

ROOT = Path(__file__).resolve().parent.parent
TPU = ("--topology=v5e:2x2", "--config.mesh.data=2", "--config.mesh.fsdp=2")
GPU = ("--gpu=h100", "--topology=1x1x2", "--config.mesh.data=1", "--config.mesh.fsdp=2")
GPU_ENV = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=0"}
CONFIGS = {"animator": "configs/animator.py:tiny", "motion": "configs/motion.py:pose_tiny",
           "stage1": "configs/expression.py:stage1_tiny", "stage2": "configs/expression.py:stage2_tiny"}
PROGRAMS = {"animator": {"train", "encode", "render"}, "motion": {"train", "motion_ddpm150", "motion_ddim25"},
            "stage1": {"train", "expression"}, "stage2": {"train", "expression"}}
FAST = ("stage2",)


def _load_config(spec: str):
    import importlib

    path, variant = spec.split(":")
    return importlib.import_module(path.removesuffix(".py").replace("/", ".")).get_config(variant)


def _env(extra: dict | None = None) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    e.update(extra or {})
    return e


def _cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "aot_compile.py"), *args], cwd=ROOT,
                          env=_env(env), capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- batches

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("aot_clips")
    records.write_dataset(root, 8, FakeClips(frames=56, size=64, identities=4, landmarks=True),
                          clips_per_shard=8, progress=False)
    return root


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_abstract_batch_matches_a_real_batch(stage, clip_dir):
    from gohd_jax.aot import batches, programs
    from gohd_jax.parallel import make_mesh

    cfg = _load_config(CONFIGS[stage])
    cfg.data.dir = str(clip_dir)
    cfg.batch_size = 2
    task = programs.make_task(cfg)
    it = pipelines.make_iterator(task.dataset("train", seed=0, shard_index=0, shard_count=1), 2)
    real = next(it)
    spec = batches.train_batch_spec(cfg, make_mesh(1, 1, devices=jax.devices()[:1]))
    assert sorted(spec) == sorted(real)
    for k, v in real.items():
        assert spec[k].shape == v.shape, k
        assert spec[k].dtype == v.dtype, k


def test_batch_spec_is_sharded_over_the_batch_axes():
    from gohd_jax.aot import batches
    from gohd_jax.parallel import make_mesh

    cfg = _load_config(CONFIGS["motion"])
    mesh = make_mesh(2, 2, devices=jax.devices()[:4])
    spec = batches.train_batch_spec(cfg, mesh, 8)
    assert spec["cond"].shape == (8, 50, 320)
    assert spec["cond"].sharding.shard_shape(spec["cond"].shape) == (2, 50, 320)
    with pytest.raises(ValueError, match="does not divide"):
        batches.train_batch_spec(cfg, mesh, 6)


# ----------------------------------------------------------------------------- report pieces

_HLO = """
ENTRY %main {
  %all-reduce.1 = f32[256]{0} all-reduce(%p0), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %all-reduce.2 = (f32[4,8]{1,0:T(8,128)}, bf16[16]{0}) all-reduce(%a, %b), channel_id=2, to_apply=%add
  %all-gather-start = (bf16[32,512]{1,0}, bf16[64,512]{1,0}) all-gather-start(%x), dimensions={0}
  %all-gather-done = bf16[64,512]{1,0} all-gather-done(%all-gather-start)
  ROOT %reduce-scatter.3 = f32[128]{0} reduce-scatter(%g), dimensions={0}, to_apply=%add
  %fusion-start = ((f32[]), f32[]) fusion-start(%r), kind=kCustom, calls=%fused_all-reduce.1.clone
  %cp = u32[2]{0} collective-permute(%k), source_target_pairs={{0,1},{1,0}}
  %not = f32[8]{0} add(%all-reduce.1, %all-reduce.1)
}
"""


def test_collectives_counted_once_with_their_result_bytes():
    from gohd_jax.aot import report

    c = report.collectives(_HLO)
    assert c["all-reduce"] == {"count": 2, "bytes": 256 * 4 + 32 * 4 + 16 * 2}
    assert c["all-gather"] == {"count": 1, "bytes": 64 * 512 * 2}
    assert c["reduce-scatter"] == {"count": 1, "bytes": 128 * 4}
    assert c["collective-permute"] == {"count": 1, "bytes": 8}
    assert c["all-to-all"] == {"count": 0, "bytes": 0}


def test_padded_bytes_follow_the_tiles():
    from types import SimpleNamespace

    from gohd_jax.aot import report

    tile = lambda order, *t: SimpleNamespace(major_to_minor=order, tiling=t)  # noqa: E731
    assert report.padded_nbytes((27, 72), np.float32, tile((0, 1), (8, 128))) == 32 * 128 * 4
    assert report.padded_nbytes((3, 3, 16, 16), np.float32, tile((0, 1, 2, 3), (8, 128))) == 9 * 16 * 128 * 4
    assert report.padded_nbytes((8, 8, 3), np.uint8, tile((2, 0, 1), (8, 128), (4, 1))) == 3 * 8 * 128
    assert report.padded_nbytes((), np.int32, tile((), (128,))) == 128 * 4
    assert report.padded_nbytes((27, 72), np.float32) == 27 * 72 * 4
    assert report.is_oom("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm")
    assert not report.is_oom("INVALID_ARGUMENT: bad shape")


def test_time_bound_names_what_binds():
    from gohd_jax.aot import report, topology

    chip = topology.TPU_CHIPS["v5e"]
    t, by = report.time_bound(197e12, 1.0, chip)
    assert by == "compute" and t == pytest.approx(1.0)
    t, by = report.time_bound(1.0, 819e9, chip)
    assert by == "memory" and t == pytest.approx(1.0)


def test_gpu_chip_facts_come_from_the_specs():
    from gohd_jax.aot import topology

    h100, a100, b200 = (topology.gpu_chip(g) for g in ("h100", "a100", "b200"))
    assert h100.peak_flops == pytest.approx(989e12, rel=0.01)
    assert a100.peak_flops == pytest.approx(312e12, rel=0.01)
    assert b200.peak_flops == pytest.approx(2.22e15, rel=0.01)
    assert h100.hbm_bandwidth == pytest.approx(3.35e12, rel=0.01)
    assert a100.hbm_bytes == 85100068864 and h100.hbm_bytes == 84942979072
    assert b200.hbm_bytes > 170 * 2 ** 30


@pytest.mark.parametrize("limit,expected", [(37, 36), (5, 4), (2, 0), (10 ** 9, 4 * 64)])
def test_max_batch_search_finds_the_largest_fitting_multiple(limit, expected):
    from types import SimpleNamespace

    from gohd_jax.aot import programs

    spec = SimpleNamespace(name="train", unit=4, default_batch=8)
    calls = []

    def compile_at(b):
        calls.append(b)
        return {"batch": b, "fits": b <= limit}

    rec = programs.search_max_batch(spec, compile_at, max_per_unit=64)
    assert rec["max_batch"] == expected
    assert all(b % 4 == 0 for b in calls) and len(calls) == len(set(calls)) <= 12
    if expected:
        assert rec["batch"] == expected and rec["fits"]


@pytest.mark.parametrize("curve,limit_compiles", [("linear", 4), ("convex", 12)])
def test_max_batch_search_uses_the_memory_it_measured(curve, limit_compiles):
    """With peaks in the records, the search guesses from them: few compiles on a linear memory
    curve, and still the exact answer when the curve is not linear."""
    from types import SimpleNamespace

    from gohd_jax.aot import programs

    hbm = 16.0
    peak = {"linear": lambda b: 1.0 + 0.1 * b, "convex": lambda b: 1.0 + 0.02 * b + 0.0005 * b * b}[curve]
    want = max(b for b in range(4, 4 * 64 + 1, 4) if peak(b) <= hbm)
    spec = SimpleNamespace(name="train", unit=4, default_batch=8)
    calls = []

    def compile_at(b):
        calls.append(b)
        return {"batch": b, "fits": peak(b) <= hbm, "peak_bytes_per_chip": peak(b), "hbm_bytes_per_chip": hbm}

    rec = programs.search_max_batch(spec, compile_at, max_per_unit=64)
    assert rec["max_batch"] == want and rec["max_batch_next_tried"] == want + 4
    assert len(calls) == len(set(calls)) <= limit_compiles, calls
    calls.clear()
    coarse = programs.search_max_batch(spec, compile_at, max_per_unit=64, resolution=0.25)
    assert coarse["fits"] and coarse["max_batch"] >= 0.75 * want
    assert coarse["max_batch_next_tried"] - coarse["max_batch"] <= max(4, 0.25 * coarse["max_batch"])


def test_max_batch_search_never_leaps_past_its_growth_cap():
    """A small batch's memory can hide the per-example slope (the gaze step on 8 H100s: 11 MB at
    batch 64, 4 TiB at 467,808): the search grows at most 8x the largest fit per compile, so it
    never compiles far beyond the limit, and still ends at the exact answer."""
    from types import SimpleNamespace

    from gohd_jax.aot import programs

    hbm = 100.0
    peak = lambda b: 1e-4 * b if b <= 64 else 1e-4 * 64 + 0.05 * (b - 64)  # noqa: E731
    want = max(b for b in range(4, 4 * 4096 + 1, 4) if peak(b) <= hbm)
    spec = SimpleNamespace(name="train", unit=4, default_batch=64)
    calls = []

    def compile_at(b):
        calls.append(b)
        return {"batch": b, "fits": peak(b) <= hbm, "peak_bytes_per_chip": peak(b), "hbm_bytes_per_chip": hbm}

    rec = programs.search_max_batch(spec, compile_at, max_per_unit=1 << 20)
    assert rec["max_batch"] == want, calls
    fits_so_far = [max([64] + [c for c in calls[:i] if peak(c) <= hbm]) for i in range(len(calls))]
    assert all(c <= 8 * f for c, f in zip(calls, fits_so_far)), calls
    uncapped = programs.search_max_batch(spec, compile_at, max_per_unit=1 << 20, max_growth=float("inf"))
    assert uncapped["max_batch"] == want and max(calls) > 50 * want  # the leap the cap prevents


def test_max_batch_search_starts_where_told():
    """``start`` is the first compile (rounded down to the unit); the answer does not depend on it,
    and a start past the limit halves down to a fit first."""
    from types import SimpleNamespace

    from gohd_jax.aot import programs

    peak = lambda b: 2.0 + 0.05 * b  # noqa: E731
    spec = SimpleNamespace(name="train", unit=16, default_batch=64)
    for start, first in ((256, 256), (263, 256), (4096, 4096)):
        calls = []

        def compile_at(b):
            calls.append(b)
            return {"batch": b, "fits": peak(b) <= 16.0, "peak_bytes_per_chip": peak(b), "hbm_bytes_per_chip": 16.0}

        rec = programs.search_max_batch(spec, compile_at, max_per_unit=1 << 10, start=start)
        assert calls[0] == first and 64 not in calls, calls
        assert rec["max_batch"] == 272, (start, calls)  # 2 + 0.05 * 272 = 15.6; 288 needs 16.4


# ----------------------------------------------------------------------------- clear errors

def test_missing_extras_name_what_to_install(monkeypatch):
    from gohd_jax.aot import topology

    monkeypatch.setattr(topology, "_installed", lambda name: False)
    with pytest.raises(topology.MissingExtra, match=r"pip install -e '\.\[tpu\]'"):
        topology.tpu_target("v5e:2x2")
    with pytest.raises(topology.MissingExtra, match=r"pip install -e '\.\[gpu-aot\]'"):
        topology.gpu_target("h100", "1x1x8")


def test_a_cuda_plugin_of_another_jaxlib_release_is_named(monkeypatch):
    from importlib import metadata

    from gohd_jax.aot import topology

    real = metadata.version
    monkeypatch.setattr(topology, "_installed", lambda name: True)
    monkeypatch.setattr(metadata, "version",
                        lambda dist: "0.0.1" if dist == "jax-cuda12-plugin" else real(dist))
    with pytest.raises(topology.MissingExtra, match=r"jax-cuda12-plugin 0\.0\.1 does not match jaxlib"):
        topology.gpu_target("h100", "1x1x8")


def test_unknown_names_are_one_line_errors():
    from gohd_jax.aot import topology

    with pytest.raises(topology.TopologyError, match="v4, v5e, v5p, v6e"):
        topology.tpu_target("v9:2x2")
    with pytest.raises(topology.TopologyError, match="GENERATION:DIMS"):
        topology.tpu_target("v5litepod-16")
    with pytest.raises(topology.TopologyError, match="a100, b200, h100"):
        topology.gpu_target("h800", "1x1x8")
    with pytest.raises(topology.TopologyError, match="PARTITIONSxHOSTSxGPUS"):
        topology.gpu_target("h100", "8")


def test_cli_errors_are_one_line():
    r = _cli("--config=configs/motion.py:pose_tiny", "--topology=v5e:3x3")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gohd-aot: error: libtpu rejects TPU topology 'v5e:3x3'")
    assert "Traceback" not in r.stderr
    r = _cli("--config=configs/motion.py:pose_tiny", "--topology=v5e:2x2", "--programs=render")
    assert r.returncode == 2 and "motion_diffusion has no program render" in r.stderr, r.stderr
    r = _cli("--config=configs/motion.py:pose_tiny", "--gpu=rtx", "--topology=1x1x2")
    assert r.returncode == 2 and "choose one of a100, b200, h100" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- compiles

class _Compiles:
    """``gohd-aot`` subprocesses, two at a time (2 cores), each started once; the ones still
    running when the module ends (a failure under -x) are killed."""

    def __init__(self, out: Path):
        self.out, self.futures, self.procs = out, {}, []
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)

    def _run(self, stage: str, target: str) -> dict:
        path = self.out / f"{stage}.{target}.json"
        args = (f"--config={CONFIGS[stage]}", f"--json={path}", "--render-batch=2",
                *(TPU if target == "tpu" else GPU))
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "aot_compile.py"), *args], cwd=ROOT,
                                env=_env(GPU_ENV if target == "gpu" else None), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        stdout, stderr = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"gohd-aot {' '.join(args)} failed:\n{stderr[-4000:]}"
        report = json.loads(path.read_text())
        report["stdout"], report["stderr"] = stdout, stderr
        return report

    def start(self, key) -> None:
        if key not in self.futures:
            self.futures[key] = self.pool.submit(self._run, *key)

    def result(self, stage: str, target: str) -> dict:
        self.start((stage, target))
        return self.futures[(stage, target)].result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in self.procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def compiles(tmp_path_factory, request):
    """Starts every compile test's subprocess up front when this process runs them all; under
    pytest-xdist (``make test``: tests of a module may go to either worker) each test starts its own."""
    c = _Compiles(tmp_path_factory.mktemp("aot"))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for item in request.session.items:
            if item.path == Path(__file__) and item.name.startswith("test_aot_compiles"):
                c.start((item.callspec.params["stage"], item.callspec.params["target"]))
    yield c
    c.close()


def _expected_argument_bytes(rec: dict) -> tuple[int, int]:
    """(as laid out per chip, from the global sizes) of the program's arguments: replicated state
    + sharded state / shards + inputs / chips."""
    b = rec["argument_breakdown"]
    shards = b["state_shards"] or [1]
    assert len(shards) == 1, shards
    laid_out = b["state_replicated_per_chip"] + b["state_sharded_per_chip"] + b["inputs_per_chip"]
    plain = b["state_replicated_global"] + b["state_sharded_global"] / shards[0] + b["inputs_global"] / rec["chips"]
    return laid_out, plain


def _check(report: dict, stage: str, target: str) -> None:
    recs = {r["name"]: r for r in report["programs"]}
    assert set(recs) == PROGRAMS[stage]
    assert report["target"]["chips"] == (4 if target == "tpu" else 2)
    for name, r in recs.items():
        assert r["fits"], (name, r)
        assert 0 < r["peak_bytes_per_chip"] <= r["hbm_bytes_per_chip"]
        assert r["gflops_per_chip"] > 0 and r["gflops_total"] == pytest.approx(r["gflops_per_chip"] * r["chips"])
        assert r["bytes_accessed_per_chip"] > 0 and r["bound_by"] in ("compute", "memory")
        assert r["cost_source"] == ("xla-tpu" if target == "tpu" else "cpu-twin")
        laid_out, plain = _expected_argument_bytes(r)
        assert r["argument_bytes_per_chip"] == pytest.approx(laid_out, rel=0.01), (name, r["argument_breakdown"])
        if target == "gpu":  # no tiles on GPU: the plain share is the argument size
            assert r["argument_bytes_per_chip"] == pytest.approx(plain, rel=0.01), name
        if r["kind"] == "infer":  # data-parallel, replicated parameters: nothing to communicate
            assert sum(c["count"] for c in r["collectives"].values()) == 0, (name, r["collectives"])
    train = recs["train"]
    b = train["argument_breakdown"]
    assert b["state_shards"] == [2] and b["state_sharded_global"] > b["state_replicated_global"]
    assert train["batch"] == _load_config(CONFIGS[stage]).batch_size and train["remat"] == "none"
    c = train["collectives"]
    # the gradients of the data-parallel batch are reduced across chips and the fsdp-sharded
    # parameters gathered: all-reduce, or reduce-scatter + all-gather
    assert c["all-reduce"]["count"] > 0 or (c["reduce-scatter"]["count"] > 0 and c["all-gather"]["count"] > 0)
    assert c["all-gather"]["count"] > 0
    if "motion_ddpm150" in recs:  # XLA counts a loop body once: 150 steps must cost 6x 25 steps
        ddpm, ddim = recs["motion_ddpm150"], recs["motion_ddim25"]
        assert ddpm["loops"] >= 1 and ddpm["loop_correction_gflops_per_chip"] > 0
        assert 4 < ddpm["gflops_per_chip"] / ddim["gflops_per_chip"] < 7
    if "render" in recs:
        r = recs["render"]
        assert r["batch"] == 2 * r["chips"] and r["gflops_per_frame"] > 0 and r["bytes_per_frame"] > 0
    assert "| train |" in report["stdout"] and "compiling train for" in report["stderr"]


@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("stage", FAST)
def test_aot_compiles_fit_and_shard(compiles, stage, target):
    _check(compiles.result(stage, target), stage, target)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("stage", sorted(set(CONFIGS) - set(FAST)))
def test_aot_compiles_fit_and_shard_every_stage(compiles, stage, target):
    _check(compiles.result(stage, target), stage, target)


def test_constant_bytes_sees_closed_over_weights_and_ignores_splats():
    from gohd_jax.aot.report import constant_bytes

    w = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
    closed = jax.jit(lambda x: x @ w + jnp.zeros((256,), jnp.float32)).lower(np.zeros((1, 256), np.float32))
    passed = jax.jit(lambda x, w: x @ w + jnp.zeros((256,), jnp.float32)).lower(np.zeros((1, 256), np.float32), w)
    assert constant_bytes(closed.as_text()) == w.nbytes
    assert constant_bytes(passed.as_text()) == 0
