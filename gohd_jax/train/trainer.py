"""One sharded trainer for every stage.

The trainer builds the mesh, initialises the state inside jit with the rule
table's shardings (no unsharded copy is ever made), jits the task's pure step
with donated state, runs the loop, checkpoints (state + Grain iterator + config,
async, keep-N), resumes exactly, logs metrics, runs evals, keeps an EMA of
parameters, saves and exits cleanly on SIGTERM, and stops on a NaN/Inf loss
naming the step and the term (the last good checkpoint is left intact).

Metrics stay on the device between log/checkpoint boundaries (no host sync per
step); at each boundary they are read in step order, so a NaN is reported at
the first step it appeared, and always before a checkpoint could save it.

Config fields it reads (see ``configs/mouth_regressor.py`` for a full example)::

    seed, batch_size (global), num_steps, log_every, eval_every, eval_steps,
    checkpoint_every, keep_checkpoints, ema_decay, mesh.data, mesh.fsdp,
    sharding_rules (tuple of (regex, "replicate"|"fsdp")), data.num_workers,
    precision, remat (``configs/common.py``; the policy follows the platform of the
    mesh's devices, which for ``gohd-aot`` is the compile target, not the host)

At the first step the compiled step's memory analysis is logged (per device:
arguments, outputs, temporaries, aliased, peak), as MaxText does, and every step
runs inside ``jax.profiler.StepTraceAnnotation("train", step_num=...)`` so that
profiles (``jax.profiler.trace``) show one region per step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from data_pipelines import pipelines
from gohd_jax.nn import policy as policy_lib
from gohd_jax.parallel import host_to_global, make_mesh, param_shardings, sharding_report
from gohd_jax.train.checkpoint import Checkpointer, abstract_like, as_path
from gohd_jax.train.metrics import MetricWriter, Throughput, log_line
from gohd_jax.train.state import StepContext, TrainState, step_with_ema
from gohd_jax.train.task import Task

log = logging.getLogger("gohd_jax.train")


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or Inf; the message names the step and the term."""


@dataclasses.dataclass
class TrainResult:
    status: str              # "done" | "preempted"
    step: int
    metrics: dict[str, float]
    eval_metrics: dict[str, float]


class Trainer:
    def __init__(self, task: Task, config: ml_collections.ConfigDict, workdir: str | os.PathLike, mesh=None):
        self.task, self.config, self.workdir = task, config, as_path(workdir)  # a folder or gs://...
        self.mesh = mesh if mesh is not None else make_mesh(config.mesh.data, config.mesh.fsdp)
        # The processes whose devices the mesh spans (all of them, except for a mesh of this
        # process's own devices, e.g. restoring a frozen stage on every host).
        procs = sorted({d.process_index for d in self.mesh.devices.flat})
        self.process_index, self.process_count = procs.index(jax.process_index()), len(procs)
        gb = int(config.batch_size)
        if gb % self.mesh.size or gb % self.process_count:
            raise ValueError(f"batch_size {gb} must divide evenly over the mesh's {self.mesh.size} devices "
                             f"and {self.process_count} processes")
        self.global_batch, self.host_batch = gb, gb // self.process_count
        self.policy = policy_lib.from_config(config, platform=policy_lib.platform_of(self.mesh))
        abstract_models = nnx.eval_shape(lambda: self._create_models(nnx.Rngs(0)))
        graphdefs = {n: nnx.split(m)[0] for n, m in abstract_models.items()}
        self.ctx = StepContext(graphdefs=graphdefs, optimizers=task.optimizers())
        self.ema_decay = float(config.get("ema_decay", 0.0))
        self.ema_warmup = bool(config.get("ema_warmup", False))
        rules = tuple(tuple(r) for r in config.get("sharding_rules", ((".*", "fsdp"),)))
        self._rng = jax.random.key_data(jax.random.key(int(config.seed)))
        abstract = jax.eval_shape(self._init, self._rng, task.pretrained)
        self.state_shardings = param_shardings(abstract, self.mesh, rules)
        if self.mesh.shape["fsdp"] > 1 and jax.process_index() == 0:
            log.info("parameter sharding (config.sharding_rules): %s",
                     sharding_report(abstract.params, self.mesh, rules)["summary"])
        self.abstract_state = abstract_like(abstract, self.state_shardings)
        self._train_step = jax.jit(self._step, in_shardings=(self.state_shardings, None),
                                   out_shardings=(self.state_shardings, None), donate_argnums=0)
        self._eval_step = jax.jit(lambda s, b: task.eval_step(self.ctx, s, b))
        self._stop = threading.Event()

    # ------------------------------------------------------------------ pure functions

    def _create_models(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        """The task's models with the run's precision / remat policy."""
        return policy_lib.apply(self.task.create_models(rngs), self.policy)

    def _init(self, rng_data, pretrained: dict[str, Any]) -> TrainState:
        """The initial state; ``pretrained`` (``Task.pretrained``) is an argument, not a constant."""
        key = jax.random.wrap_key_data(rng_data)
        models = self._create_models(nnx.Rngs(jax.random.fold_in(key, 0)))
        for path, weights in pretrained.items():
            name, *attrs = path.split(".")
            module = models[name]
            for a in attrs:
                module = getattr(module, a)
            state = nnx.state(module)
            nnx.replace_by_pure_dict(state, weights)
            nnx.update(module, state)
        params, rest = {}, {}
        for name, model in models.items():
            if name in self.task.frozen_models:
                _, rest[name] = nnx.split(model)
                params[name] = nnx.State({})
            else:
                _, params[name], rest[name] = nnx.split(model, nnx.Param, ...)
        opt = {n: tx.init(params[n]) for n, tx in self.ctx.optimizers.items()}
        ema = {n: params[n] for n in self.task.ema_models} if self.ema_decay > 0 else {}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt=opt, ema=ema,
                          rng=jax.random.key_data(jax.random.fold_in(key, 1)))

    def _step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        return step_with_ema(lambda s, b, k: self.task.train_step(self.ctx, s, b, k), state, batch,
                             self.ema_decay, self.ema_warmup)

    # ------------------------------------------------------------------ state

    def init_state(self) -> TrainState:
        """Fresh state, created directly in its shardings."""
        replicated = NamedSharding(self.mesh, PartitionSpec())  # every process passes the same host weights
        return jax.jit(self._init, in_shardings=(replicated, replicated),
                       out_shardings=self.state_shardings)(self._rng, self.task.pretrained)

    def lower_train_step(self, batch_spec: dict[str, Any]):
        """The jitted train step lowered for the abstract state and ``batch_spec`` (a dict of
        ``jax.ShapeDtypeStruct`` with the global batch, sharded like ``parallel.batch_sharding``);
        ``.compile()`` it for its memory and cost analyses (``gohd-aot``)."""
        return self._train_step.lower(self.abstract_state, batch_spec)

    def process_dataset(self, split: str, start: int = 0):
        """This process's part of the global sample stream of ``split`` from global position
        ``start``: positions start + process_index, + process_count, ... The stream is shuffled
        and sampled over the whole clip list with per-position randomness (window starts, sync
        labels, augmentation), so the processes draw different samples and the global batch at
        a step does not depend on the number of processes."""
        ds = self.task.dataset(split, seed=int(self.config.seed), shard_index=0, shard_count=1)
        return ds[start + self.process_index::self.process_count]

    def data_iterator(self, split: str = "train", start: int = 0):
        return pipelines.make_iterator(self.process_dataset(split, start), self.host_batch,
                                       num_workers=int(self.config.data.num_workers),
                                       read_threads=int(self.config.data.get("read_threads", 1)))

    def _global(self, batch) -> dict[str, jax.Array]:
        return host_to_global(batch, self.mesh)

    def heldout_dataset(self):
        """The fixed held-out stream of this process, built (and checked: a run without held-out
        clips fails here, at start-up) once; every eval reads its first ``eval_steps`` batches."""
        if getattr(self, "_heldout", None) is None:
            self._heldout = self.process_dataset("heldout")
        return self._heldout

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Mean of the task's eval metrics over ``eval_steps`` held-out batches (the same ones every
        time, whatever the number of processes: the global held-out stream's first
        ``eval_steps x batch_size`` samples)."""
        it = pipelines.make_iterator(self.heldout_dataset(), self.host_batch)
        sums: dict[str, float] = {}
        n = int(self.config.eval_steps)
        for _ in range(n):
            m = jax.device_get(self._eval_step(state, self._global(next(it))))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return {f"eval/{k}": v / n for k, v in sums.items()}

    # ------------------------------------------------------------------ loop

    def _check_finite(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if k.startswith("loss") and not math.isfinite(float(v)):
                raise TrainingDiverged(f"loss term {k!r} is {float(v)} at step {step}; stopping. The last "
                                       f"checkpoint in {self.workdir / 'checkpoints'} is from before it "
                                       f"and intact")

    def _compile_step(self, state: TrainState, batch):
        """The train step compiled for these (global) shapes; logs its memory analysis."""
        compiled = self._train_step.lower(state, batch).compile()
        try:
            mem = compiled.memory_analysis()
        except Exception as e:  # an analysis is a courtesy; never fail the run for it
            log.info("train step memory analysis unavailable: %s", e)
            mem = None
        if mem is not None and self.process_index == 0:
            self._log_memory(mem)
        return compiled

    def _log_memory(self, mem) -> None:
        gib = lambda n: n / 2 ** 30  # noqa: E731
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
        log.info("train step memory per device (XLA's estimate): arguments %.3f GiB, outputs %.3f "
                 "GiB, temporaries %.3f GiB, aliased %.3f GiB, peak %.3f GiB; policy %s, remat %s",
                 gib(mem.argument_size_in_bytes), gib(mem.output_size_in_bytes),
                 gib(mem.temp_size_in_bytes), gib(mem.alias_size_in_bytes), gib(peak),
                 self.policy.compute, self.policy.remat)

    def _handle_sigterm(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
        self._stop.set()

    def _preempted(self) -> bool:
        flag = self._stop.is_set()
        if self.process_count > 1:
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
        return flag

    @staticmethod
    def _jax_preemption_service() -> bool:
        """Whether JAX's coordination service watches for preemption (``jax.distributed`` is up
        with its preemption sync manager): it then owns SIGTERM, and every process learns of a
        notice at the same step through ``reached_preemption_sync_point``."""
        from jax._src import distributed

        return (distributed.global_state.client is not None
                and distributed.global_state.preemption_sync_manager is not None)

    def train(self) -> TrainResult:
        cfg = self.config
        total = int(cfg.num_steps)
        if int(cfg.eval_every):
            self.heldout_dataset()  # no held-out clips: fail now, not at the first eval
        ckpt = Checkpointer(self.workdir, keep=int(cfg.keep_checkpoints))
        writer = MetricWriter(self.workdir, enabled=self.process_index == 0)
        old_handler = None
        self._sync_preemption = self._jax_preemption_service()
        if threading.current_thread() is threading.main_thread() and not self._sync_preemption:
            old_handler = signal.signal(signal.SIGTERM, self._handle_sigterm)
        try:
            return self._loop(total, ckpt, writer)
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            ckpt.close()  # finishes pending (good) saves; after a NaN nothing new was saved
            writer.close()

    def _loop(self, total: int, ckpt: Checkpointer, writer: MetricWriter) -> TrainResult:
        cfg = self.config
        latest = ckpt.latest_step()
        data_start = 0  # the global stream position this run's iterators count from
        saved_by = (ckpt.run_info(latest) or {}) if latest is not None else {}
        if latest is None:
            it = self.data_iterator("train")
            state = self.init_state()
        elif int(saved_by.get("process_count", self.process_count)) == self.process_count:
            data_start = int(saved_by.get("data_start", 0))
            it = self.data_iterator("train", start=data_start)
            state = ckpt.restore(latest, self.abstract_state, it)
            log.info("resumed from step %d (%s)", latest, ckpt.directory)
        else:  # the data iterators were saved by another number of processes, one per process
            state = ckpt.restore(latest, self.abstract_state, None)
            data_start = latest * self.global_batch
            it = self.data_iterator("train", start=data_start)
            if self.process_index == 0:
                log.warning("resumed from step %d (%s) on %d processes, saved by %d: the data stream restarts at "
                            "its global position %d (step x batch) instead of the saved iterator states",
                            latest, ckpt.directory, self.process_count, saved_by["process_count"], data_start)
        start = int(jax.device_get(state.step))
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
        log.info("training %s: %d parameters, mesh %s, global batch %d (%d per process), steps %d -> %d%s",
                 type(self.task).__name__, n_params, dict(self.mesh.shape), self.global_batch, self.host_batch,
                 start, total, "".join(f", {k}={v}" for k, v in self.task.describe().items()))
        throughput = Throughput(start, total, self.global_batch)
        sums: dict[str, float] = {}
        count, last, eval_metrics, status = 0, {}, {}, "done"
        pending: list[tuple[int, dict]] = []  # device metrics not yet read: no host sync per step
        saved_step = latest

        def absorb():
            """Reads the pending metrics in step order; raises on the first NaN/Inf loss."""
            nonlocal count, pending
            for step_k, host in zip([k for k, _ in pending], jax.device_get([m for _, m in pending])):
                host = {k: float(v) for k, v in host.items()}
                self._check_finite(step_k, host)
                for k, v in host.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            pending = []

        # Test hook (tests/test_resume_kill.py): SIGKILL this process after step N, once the
        # newest periodic checkpoint has committed: a crash, not a clean exit.
        kill_at = int(os.environ.get("GOHD_TEST_KILL_AFTER_STEP", "0") or 0)
        step = start
        while step < total:
            batch = self._global(next(it))
            if step == start:  # compiled once, ahead of the loop, to log its memory
                train_step = self._compile_step(state, batch)
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, batch)
            step += 1
            pending.append((step, metrics))
            boundary = step % int(cfg.log_every) == 0 or step == total
            save_now = step % int(cfg.checkpoint_every) == 0 or step == total
            if self._sync_preemption:  # every step: cheap, and the same answer on every process
                from jax.experimental import multihost_utils
                stop = multihost_utils.reached_preemption_sync_point(step)
            else:
                stop = self._stop.is_set() if self.process_count == 1 else boundary and self._preempted()
            if boundary or save_now or stop:
                absorb()  # before any checkpoint: a diverged state is never saved
            if boundary:
                last = {k: v / max(count, 1) for k, v in sums.items()}
                last.update(throughput.update(step))
                sums, count = {}, 0
                if self.process_index == 0:
                    log.info(log_line(step, total, last))
                writer.write(step, last)
            if int(cfg.eval_every) and (step % int(cfg.eval_every) == 0 or step == total):
                eval_metrics = self.evaluate(state)
                if self.process_index == 0:
                    log.info("eval at step %d: %s", step,
                             " ".join(f"{k}={v:.4g}" for k, v in sorted(eval_metrics.items())))
                writer.write(step, eval_metrics)
            if save_now or stop:
                ckpt.save(step, state, it, cfg.to_dict(), data_start=data_start)
                saved_step = step
            if kill_at and step == kill_at:
                ckpt.wait()
                jax.block_until_ready(state)
                log.warning("GOHD_TEST_KILL_AFTER_STEP=%d: killing this process (SIGKILL)", kill_at)
                os.kill(os.getpid(), signal.SIGKILL)
            if stop:
                status = "preempted"
                log.warning("preempted: checkpoint of step %d saved; rerun the same command to resume", step)
                break
        self.final_state = state
        log.info("%s at step %d; last checkpoint: step %s", status, step, saved_step)
        return TrainResult(status=status, step=step, metrics=last, eval_metrics=eval_metrics)

