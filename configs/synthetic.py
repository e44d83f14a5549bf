"""Synthetic talking-head dataset settings (``gohd-synth`` / ``make demo``).

Usage::

    python launch/demo.py --config=configs/synthetic.py:demo --workdir=workdir/demo
    python launch/demo.py --config=configs/synthetic.py:demo --config.clips=96 --workdir=...

Variants: ``tiny`` (tests: 8 clips x 2 s), ``demo`` (make demo: 48 clips x 8 s
at 64 px, a minute or so on 2 cores), ``full256`` (official-size models: 256 px).
"""

import ml_collections


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.size = 64              # frame side, px
    c.seconds = 8.0          # clip length, s (>= 6 s so motion windows of 150 frames fit)
    c.clips = 48
    c.identities = 12        # clip i shows face i % identities
    c.seed = 0
    c.clips_per_shard = 16
    c.jpeg_quality = 95
    c.workers = 2            # generator processes
    if variant == "tiny":
        c.update(clips=8, seconds=2.0, identities=4, clips_per_shard=4, workers=0)
    elif variant == "full256":
        c.update(size=256, seconds=10.0, clips=2000, identities=200, clips_per_shard=32)
    elif variant != "demo":
        raise ValueError(f"unknown variant {variant!r}: choose tiny, demo or full256")
    return c
