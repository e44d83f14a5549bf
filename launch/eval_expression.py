"""Scores trained expression runs on the held-out synthetic clips.

    python launch/eval_expression.py --data=workdir/demo/data/synthetic \
        --stage1=workdir/stage1 --stage2=workdir/stage2 --expert=workdir/sync

Each run folder is a finished (or interrupted) training run; its latest checkpoint is used.
Prints mouth error and correlation, blink rate and duration and, with --expert, the lip-sync
expert's LSE-C / LSE-D of the clips re-rendered with the generated expressions, next to the
"copy exp0" baseline and the ground truth (definitions: gohd_jax/eval/expression.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

_DATA = flags.DEFINE_string("data", None, "The clip dataset folder.", required=True)
_STAGE1 = flags.DEFINE_string("stage1", "", "A configs/expression.py:stage1* run folder.")
_STAGE2 = flags.DEFINE_string("stage2", "", "A configs/expression.py:stage2* run folder.")
_EXPERT = flags.DEFINE_string("expert", "", "A configs/expression.py:sync* run folder (lip-sync scores).")
_WINDOW = flags.DEFINE_integer("window", 30, "Inference window in frames (consecutive windows share one).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed of the two-stage model.")


def main(argv) -> None:
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from data_pipelines.records import DatasetError
    from gohd_jax.eval import expression as E
    from gohd_jax.train.restore import RunNotFound

    if not (_STAGE1.value or _STAGE2.value):
        logging.error("give --stage1 and/or --stage2 (run folders of configs/expression.py)")
        sys.exit(2)
    try:
        report = E.evaluate_runs(_DATA.value, stage1_dir=_STAGE1.value or None, stage2_dir=_STAGE2.value or None,
                                 expert_dir=_EXPERT.value or None, seed=_SEED.value, window=_WINDOW.value)
    except (DatasetError, RunNotFound, ValueError) as e:
        logging.error("%s", e)
        sys.exit(1)
    print(E.format_report(report))


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app.run(main)
