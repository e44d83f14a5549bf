"""Trainer benchmarks on CPU: per-step overhead of the trainer loop vs the bare jitted
step, checkpoint save time (blocking part and total), and steps/s on 1 vs 8 fake devices.
Prints Markdown tables for BENCHMARKS.md.

    .venv/bin/python bench/bench_trainer.py [--steps 60] [--hidden 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

from configs import mouth_regressor  # noqa: E402
from data_pipelines.synthetic.cli import write_synthetic_dataset  # noqa: E402
from data_pipelines.synthetic.generator import SynthConfig  # noqa: E402
from gohd_jax.parallel import make_mesh  # noqa: E402
from gohd_jax.train.checkpoint import Checkpointer  # noqa: E402
from gohd_jax.train.tasks.mouth_regressor import MouthRegressorTask  # noqa: E402
from gohd_jax.train.trainer import Trainer  # noqa: E402


def config(data_dir, steps, hidden, batch):
    c = mouth_regressor.get_config("tiny")
    c.data.dir, c.data.window, c.batch_size = str(data_dir), 8, batch
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = steps, steps, 0, 10 ** 9
    c.task.hidden = hidden
    return c


class InMemoryTask(MouthRegressorTask):
    """The same task reading 64 pre-drawn samples from memory: isolates the trainer's own overhead."""

    def dataset(self, split, *, seed, shard_index, shard_count):
        import grain

        real = super().dataset(split, seed=seed, shard_index=shard_index, shard_count=shard_count)
        cached = [real[i] for i in range(64)]
        return grain.MapDataset.source(cached).repeat()


def loop_rate(trainer: Trainer, steps: int) -> tuple[float, float]:
    """(trainer loop steps/s, bare jitted step steps/s), both in steady state.

    The loop rate is the trainer's own steps/s over its last logging interval
    (steps 2n..3n of a run resumed at n), so compile, restore and the final save
    are not counted; the bare rate calls the same jitted step on one fixed batch.
    """
    import json
    trainer.config.unlock()
    trainer.config.update(num_steps=steps, log_every=steps)
    trainer.train()  # warm-up: compile, data start
    trainer.config.num_steps = 3 * steps
    trainer.train()  # resumes at n; logs at 2n and 3n
    rows = [json.loads(line) for line in (trainer.workdir / "metrics.jsonl").read_text().splitlines()]
    loop = [r for r in rows if r["step"] == 3 * steps][-1]["steps_per_s"]
    state = trainer.final_state
    batch = trainer._global(next(trainer.data_iterator()))
    state, m = trainer._train_step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = trainer._train_step(state, batch)
    jax.block_until_ready((state, m))
    return loop, steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; "
          f"date {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = tmp / "data"
        write_synthetic_dataset(data, SynthConfig(size=32, seconds=4.0, num_identities=4), 16, workers=2)
        print(f"\n### Trainer loop vs bare jitted step (mouth regressor, hidden {args.hidden}, "
              f"batch {args.batch} x 8 frames)\n")
        print("| devices (mesh) | data | trainer loop (steps/s) | bare jitted step (steps/s) "
              "| overhead per step (ms) |")
        print("|---|---|---:|---:|---:|")
        for n, (dd, ff) in ((1, (1, 1)), (8, (8, 1)), (8, (4, 2))):
            for label, task_cls in (("in memory", InMemoryTask), ("Grain, 0 workers", MouthRegressorTask)):
                cfg = config(data, args.steps, args.hidden, args.batch)
                mesh = make_mesh(dd, ff, devices=jax.devices()[:n])
                trainer = Trainer(task_cls(cfg), cfg, tmp / f"run{n}-{dd}x{ff}-{task_cls.__name__}", mesh=mesh)
                loop, bare = loop_rate(trainer, args.steps)
                print(f"| {n} ({dd}x{ff}) | {label} | {loop:.1f} | {bare:.1f} | {1000 / loop - 1000 / bare:.2f} |")

        print("\n### Checkpoint save (state = params + Adam + EMA; async Orbax)\n")
        print("| hidden | state size (MiB) | blocking part of save (s) | total until written (s) |")
        print("|---:|---:|---:|---:|")
        for hidden in (512, 2048):
            cfg = config(data, 1, hidden, args.batch)
            trainer = Trainer(MouthRegressorTask(cfg), cfg, tmp / f"ck{hidden}", mesh=make_mesh(8, 1))
            state = trainer.init_state()
            it = trainer.data_iterator()
            size = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) / 2 ** 20
            ckpt = Checkpointer(tmp / f"ck{hidden}")
            ckpt.save(0, state, it, cfg.to_dict())  # first save creates folders
            ckpt.wait()
            t0 = time.perf_counter()
            ckpt.save(1, state, it, cfg.to_dict())
            blocking = time.perf_counter() - t0
            ckpt.wait()
            total = time.perf_counter() - t0
            ckpt.close()
            print(f"| {hidden} | {size:.1f} | {blocking:.3f} | {total:.3f} |")


if __name__ == "__main__":
    main()
