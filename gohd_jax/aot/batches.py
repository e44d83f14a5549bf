"""The abstract batch of each stage's train step, from the config alone (no data).

``train_batch_spec(config, mesh)`` gives ``{name: jax.ShapeDtypeStruct}`` with the global batch
(``config.batch_size``) on the leading axis, each sharded like ``parallel.batch_sharding``: the
same keys, shapes and dtypes as a batch of the stage's Grain pipeline (``data_pipelines/
pipelines.py``; ``tests/test_aot.py`` checks them against a real one), including the tracing
fields ``clip_index`` and ``start`` that the step receives but ignores.

Shapes the config decides: the animator's frame size (``task.model.preset`` and overrides), the
motion and expression window (``data.window``). The rest are fixed by the record schema.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import pipelines, schema
from gohd_jax.parallel import batch_sharding

__all__ = ["sample_spec", "train_batch_spec", "SUPPORTED_TASKS"]

MEL_WINDOW = (schema.MEL_BINS, 16)  # Wav2Lip's 0.2 s window of the 80 Hz mel
COND_DIM = 4 * schema.MEL_BINS      # 4 rows of the 100 Hz mel per frame
EXPRESSION_DIM = schema.EXPRESSION.stop - schema.EXPRESSION.start
POSE_DIM = schema.POSE.stop - schema.POSE.start
GAZE_DIM = schema.GAZE.stop - schema.GAZE.start

# task name -> pipeline stage
SUPPORTED_TASKS = {"animator": "animator", "motion_diffusion": "motion", "expression_stage1": "expression",
                   "expression_stage2": "expression", "mouth_regressor": "expression"}


def _image_size(config) -> int:
    from gohd_jax.train.tasks.animator import animator_config

    return int(animator_config(config.task).size)


def sample_spec(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of one sample (no batch axis) of ``config``'s stage."""
    task = config.task_name
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"gohd-aot has no batch description for task {task!r}; supported: "
                         f"{', '.join(sorted(SUPPORTED_TASKS))}")
    stage = SUPPORTED_TASKS[task]
    f32, i32, u8 = np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint8)
    tracing = {"clip_index": ((), i32), "start": ((), i32)}
    if stage == "animator":
        s = _image_size(config)
        w = pipelines.DEFAULT_WINDOW["animator"]  # AnimatorTask samples the default 27-frame window
        mouth = {"mouth_box": ((4,), i32)} if config.task.loss.get("mouth", 0.0) else {}
        return {"source": ((s, s, 3), u8), "target": ((s, s, 3), u8),
                "descriptor_window": ((w, schema.DESCRIPTOR_DIM), f32), **mouth, **tracing}
    w = int(config.data.get("window", pipelines.DEFAULT_WINDOW[stage]))
    if stage == "motion":
        return {"cond": ((w, COND_DIM), f32), "pose": ((w, POSE_DIM), f32), "gaze": ((w, GAZE_DIM), f32),
                "pose0": ((POSE_DIM,), f32), "gaze0": ((GAZE_DIM,), f32), **tracing}
    return {"mel_windows": ((w, *MEL_WINDOW), f32), "expression": ((w, EXPRESSION_DIM), f32),
            "controls": ((w, schema.CONTROL_DIM), f32), "exp0": ((EXPRESSION_DIM,), f32), **tracing}


def train_batch_spec(config, mesh, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of ``config``'s train step (``batch_size`` default ``config.batch_size``),
    sharded over the mesh's batch axes."""
    b = int(config.batch_size if batch_size is None else batch_size)
    if b % mesh.size:
        raise ValueError(f"batch {b} does not divide over the mesh's {mesh.size} devices")
    return {k: jax.ShapeDtypeStruct((b, *shape), jnp.dtype(dtype), sharding=batch_sharding(mesh, 1 + len(shape)))
            for k, (shape, dtype) in sample_spec(config).items()}
