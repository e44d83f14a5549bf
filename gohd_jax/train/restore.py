"""Trained models out of a run directory: the latest checkpoint's state, merged into live modules.

    model = load_model("workdir/sync", "syncnet")               # EMA weights when the run kept them
    models, config = load_models("workdir/stage1")               # every model of the run

The run's own resolved config (saved in every checkpoint) says which task built it, so the caller
needs neither the config file nor the task class. Restores onto one device of this process
(``jax.local_devices()[0]``: on a multi-host run every process restores its own copy), with no
data iterator. ``workdir`` is a folder or a bucket URI (``gs://...``).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from gohd_jax.train.checkpoint import Checkpointer, as_path

__all__ = ["RunNotFound", "load_models", "load_model", "run_config"]


class RunNotFound(FileNotFoundError):
    """The folder has no checkpoint of a training run."""


def _latest(workdir: str | os.PathLike) -> tuple[Checkpointer, int]:
    workdir = as_path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise RunNotFound(f"{workdir}: no checkpoints/ folder; is this a training run's --workdir?")
    ckpt = Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise RunNotFound(f"{workdir}: no finished checkpoint in checkpoints/")
    return ckpt, step


def _as_config(d: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(json.dumps(d)))


def run_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config saved with the run's latest checkpoint."""
    ckpt, step = _latest(workdir)
    try:
        return _as_config(ckpt.restore_config(step))
    finally:
        ckpt.close()


def load_models(workdir, *, ema: bool = True, expect_task: str | None = None
                ) -> tuple[dict[str, nnx.Module], ml_collections.ConfigDict]:
    """({name: module}, config) of the run in ``workdir`` at its latest checkpoint.

    ``ema``: the EMA weights for the models the run kept an EMA of. ``expect_task``: raise a
    clear error when the run is of another task (a checkpoint of the wrong kind)."""
    from gohd_jax.parallel import make_mesh
    from gohd_jax.train.tasks import get_task_class
    from gohd_jax.train.trainer import Trainer

    config = run_config(workdir)
    if expect_task is not None and config.task_name != expect_task:
        raise ValueError(f"{workdir} is a {config.task_name!r} run, not {expect_task!r}")
    task = get_task_class(config.task_name)(config)
    trainer = Trainer(task, config, workdir, mesh=make_mesh(1, 1, devices=jax.local_devices()[:1]))
    ckpt, step = _latest(workdir)
    try:
        state = ckpt.restore(step, trainer.abstract_state, None)
    finally:
        ckpt.close()
    models = {}
    for name in trainer.ctx.graphdefs:
        if ema and name in state.ema:
            models[name] = trainer.ctx.ema_model(state, name)
        else:
            models[name] = trainer.ctx.model(state, name)
    return models, config


def load_model(workdir, name: str, *, ema: bool = True, expect_task: str | None = None) -> nnx.Module:
    models, config = load_models(workdir, ema=ema, expect_task=expect_task)
    if name not in models:
        raise ValueError(f"{workdir} ({config.task_name}) has models {sorted(models)}, not {name!r}")
    return models[name]
