"""Ahead-of-time compile a stage for a TPU slice or NVIDIA GPUs on this machine (``gohd-aot``).

    python launch/aot_compile.py --config=configs/animator.py:official --topology=v5e:4x4 --json=fit.json
    python launch/aot_compile.py --config=configs/motion.py:pose --gpu=h100 --topology=1x2x8

See ``gohd_jax/aot/cli.py`` for the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from gohd_jax.aot.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
