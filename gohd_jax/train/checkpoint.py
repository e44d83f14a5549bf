"""Orbax checkpoints of a run: train state, Grain iterator state, resolved config and the run's
shape, in one.

Layout: ``WORKDIR/checkpoints/<step>/{state, data_iter, config, run}``. ``WORKDIR`` is a local
folder or a bucket URI (``gs://bucket/run``): paths are ``etils.epath`` paths, as in Orbax, and a
URI is never turned into a local path. Saves are asynchronous (the loop goes on while the arrays
are written); keep-N. A checkpoint restores onto any mesh (the restore target carries the current
shardings) and any number of processes: ``run`` records the process count and global batch of
the run that saved it, and the trainer restores the data iterators only when the process count matches, and otherwise
restarts the stream at the step's position.

Several processes: each must restore the same step, so process 0 decides the latest step and
broadcasts it (a host whose view of a shared file system lags would otherwise pick another).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger("gohd_jax.train")

__all__ = ["Checkpointer", "abstract_like", "as_path", "is_uri"]


def is_uri(path: str | os.PathLike) -> bool:
    """``gs://b/run``, ``s3://...``: a path that names no local folder."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an epath: a URI as it is, a local path made absolute (Orbax wants one)."""
    return epath.Path(path) if is_uri(path) else epath.Path(os.path.abspath(os.fspath(path)))


def _broadcast_step(step: int | None) -> int | None:
    """Process 0's ``step`` on every process (identity with one process)."""
    if jax.process_count() == 1:
        return step
    from jax.experimental import multihost_utils

    value = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if step is None else step)))
    return None if value < 0 else value


class Checkpointer:
    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = as_path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data_iter", "config", "run"))

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, the same on every process (process 0's)."""
        return _broadcast_step(self.manager.latest_step())

    def save(self, step: int, state: Any, data_iter, config: dict, *, data_start: int = 0) -> None:
        """``data_start``: the global stream position the iterators' positions count from."""
        import grain

        run = {"process_count": jax.process_count(), "device_count": jax.device_count(), "data_start": data_start}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(json.loads(json.dumps(config, default=str))),
            run=ocp.args.JsonSave(run)), force=True)

    def run_info(self, step: int) -> dict | None:
        """``{"process_count", "device_count", "data_start"}`` of the run that saved ``step``
        (None for checkpoints written before this was recorded)."""
        if not (self.directory / str(step) / "run").exists():
            return None
        return self.manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]

    def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
        """Restores into ``abstract_state`` (ShapeDtypeStructs with shardings) and, when given,
        ``data_iter`` (in place; only when ``run_info(step)`` says the run had as many processes:
        one iterator state per process). Returns the state."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            import grain

            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"]

    def restore_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` placed with ``shardings`` (an Orbax restore target)."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  tree, shardings)
