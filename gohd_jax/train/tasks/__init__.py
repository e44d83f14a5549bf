"""Training tasks, one per stage, registered by name for ``launch/train.py``."""

from __future__ import annotations

import importlib

# name -> "module:Class"
TASKS = {
    "mouth_regressor": "gohd_jax.train.tasks.mouth_regressor:MouthRegressorTask",
    "animator": "gohd_jax.train.tasks.animator:AnimatorTask",
    "motion_diffusion": "gohd_jax.train.tasks.motion_diffusion:MotionDiffusionTask",
    "syncnet": "gohd_jax.train.tasks.syncnet:SyncNetTask",
    "expression_stage1": "gohd_jax.train.tasks.expression:ExpressionStage1Task",
    "expression_stage2": "gohd_jax.train.tasks.expression:ExpressionStage2Task",
}


def get_task_class(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
