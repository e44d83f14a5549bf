"""The animator (GoHD's Generator_Semantic) trained as LIA: self-reconstruction GAN.

    python launch/train.py --config=configs/animator.py:tiny --workdir=workdir/animator \
        --config.data.dir=workdir/demo/data/synthetic

Variants:
  tiny      64 px, style 128, narrow channels: trains on CPU in minutes (make demo).
  official  256 px, style 512, 20 directions (51.6 M parameters); LIA's batch 64 and
            learning rates; give converted VGG19 weights with --config.task.vgg19_weights=PATH.
  official_v5e16, official_h100x8
            official, set for a TPU v5e-16 slice / one node of 8 H100s: data-parallel over
            every chip, bfloat16, global batch 64; remat blocks on v5e (5.7 GiB of 16 per
            chip), none on H100s (7.9 GiB of 79 per GPU, 20% fewer FLOPs than with blocks).
            From `gohd-aot` (BENCHMARKS.md "Fit on accelerators"); check a change with
            `gohd-aot --config=configs/animator.py:official_v5e16 --topology=v5e:4x4`.
            data.num_workers from BENCHMARKS.md "Feeding a host": a host of 8 H100s consumes at
            most ~1,440 samples/s (the step's bound), a core's pipeline gives ~500 at 256 px: 3
            worker processes, plus one for headroom; a v5e host (4 chips) needs ~100/s: one.
"""

import ml_collections

from configs import common


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = common.base()
    c.task_name = "animator"
    c.batch_size = 8
    c.num_steps = 800
    c.log_every = 50
    c.eval_every = 300
    c.eval_steps = 4
    c.checkpoint_every = 300
    c.ema_decay = 0.99
    # expression_pairs: the share of training pairs whose target is the frame within
    # expression_radius frames of the source that differs most in expression (mouth, eyes); the
    # rest are uniform pairs, which differ mostly by head pose. With loss.changed 4, 800 steps on
    # the make demo data: mouth-motion correlation 0.50 on held-out identities (0.60 on training
    # ones) where uniform pairs gave -0.03 (BENCHMARKS.md "make demo").
    c.data = ml_collections.ConfigDict({"dir": "workdir/demo/data/synthetic", "num_workers": 0,
                                        "heldout_fraction": 0.25, "expression_pairs": 0.5,
                                        "expression_radius": 12, "mouth_margin": 2})
    c.task = ml_collections.ConfigDict()
    # identity_init: start as "copy the source" (identity warp, image path passing the source
    # through; the official random field scrambles it): held-out 26.3 dB at 500 CPU steps, above
    # copying the source (25.7), instead of ~16 dB with the official init (BENCHMARKS.md).
    # release_grid off: the exact identity grid (the release's linspace grid is a sub-pixel zoom,
    # nn/warp.py), so that a zero field copies the source without resampling it.
    c.task.model = ml_collections.ConfigDict({"preset": "tiny", "identity_init": True,
                                              "release_grid": False})
    # LIA: Adam(beta1=0), G lr 0.002 * 4/5, D lr 0.002 * 16/17, beta2 = 0.99 ** (those ratios).
    c.task.g_lr = 0.002 * 4 / 5
    c.task.d_lr = 0.002 * 16 / 17
    c.task.g_beta2 = 0.99 ** (4 / 5)
    c.task.d_beta2 = 0.99 ** (16 / 17)
    c.task.vgg19_weights = ""  # path to the .npz from `python -m gohd_jax.interop.vgg19_weights`
    # changed: L1 where target and source differ (the mouth, eyes and moved edges); not in LIA.
    # Tiny, 1200 CPU steps: held-out L1 in those regions 0.185 (copying the source: 0.304) and
    # PSNR 26.9 dB; without it the model stays close to a copy (BENCHMARKS.md). Weight 4 with the
    # expression pairs above: at weight 1 their mouth-motion correlation is 0.17, at 4 0.50.
    # mouth: L1 inside the pair's mouth box (from the clips' landmarks, grown by data.mouth_margin
    # px). At weight 1 the demo's held-out mouth-motion correlation rose from 0.38/0.69/0.42 to
    # 0.56/0.66/0.59 on three whole 8 s clips; 0.5, 2 and 4 scored lower (BENCHMARKS.md "make demo").
    c.task.loss = ml_collections.ConfigDict({"l1": 1.0, "vgg": 1.0, "ms_ssim": 1.0, "gradient": 1.0,
                                             "gan": 0.5, "changed": 4.0, "mouth": 1.0})
    # 500 reconstruction steps learn to follow the target, then the GAN sharpens: held-out
    # sharpness (gradient energy vs the target) 0.78 -> 0.91 at 800 steps, PSNR 26.5 vs copying
    # 25.8 dB. A GAN from step 100 is sharper (0.94) but follows the target less (BENCHMARKS.md).
    c.task.gan_start_step = 500
    if variant in ("official_v5e16", "official_h100x8"):  # per-hardware settings (docstring)
        c = get_config("official")
        c.update(precision="bfloat16", batch_size=64,
                 remat="blocks" if variant == "official_v5e16" else "none")
        c.mesh.update(data=-1, fsdp=1)
        c.data.num_workers = 4 if variant == "official_h100x8" else 1
        return c
    if variant == "official":
        c.task.model = ml_collections.ConfigDict({"preset": "official", "release_grid": False})
        c.update(batch_size=64, num_steps=800_000, log_every=100, eval_every=5000, checkpoint_every=5000,
                 ema_decay=0.999)
        c.task.loss.gan = 1.0
        c.task.loss.changed = 0.0  # LIA's recipe as published (uniform pairs, no changed or mouth loss)
        c.task.loss.mouth = 0.0
        c.data.expression_pairs = 0.0
        c.task.gan_start_step = 0  # LIA: adversarial from the start
        c.data.num_workers = 8
    elif variant != "tiny":
        raise ValueError(f"unknown variant {variant!r}: choose tiny, official, official_v5e16 or "
                         f"official_h100x8")
    return c
