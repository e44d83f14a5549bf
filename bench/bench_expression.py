"""Expression benchmarks on this machine: frames/s of the jitted expression models (stage 1 alone,
two-stage with generated controls) at batch 1 and 32, official and tiny sizes, and train steps/s
of the three tiny trainings (lip-sync expert, stage 1, stage 2) on synthetic batches.

    .venv/bin/python bench/bench_expression.py [--repeats 3] [--batches 1,32] [--frames 30]

A "frame" is one 25 fps video frame: one 80x16 Wav2Lip mel window through the SyncNet audio
encoder, then the head (and for the two-stage model one LSTM step). Train steps are timed on
random batches of the tiny configs' shapes (the data pipeline is benchmarked by bench_data.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from gohd_jax.models.expression import ExpressionConfig, FrameExpression, TwoStageExpression  # noqa: E402
from gohd_jax.models.syncnet import SyncNet, SyncNetConfig, face_input, sync_probability  # noqa: E402
from bench_animator import best_of  # noqa: E402  (same folder; the shared timing helper)


def count(model) -> float:
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))) / 1e6


def infer_rows(batches, frames, repeats):
    rows = []
    for size, cfg in (("official", ExpressionConfig.two_stage()), ("tiny", ExpressionConfig.tiny())):
        for kind in ("stage 1", "two-stage"):
            model = (FrameExpression(cfg, rngs=nnx.Rngs(0)) if kind == "stage 1"
                     else TwoStageExpression(cfg, rngs=nnx.Rngs(0)))
            graphdef, state = nnx.split(model)
            for b in batches:
                audio = jnp.asarray(np.random.default_rng(0).normal(size=(b, frames, 80, 16)), jnp.float32)
                exp0 = jnp.zeros((b, 64))
                ctrl = jnp.full((b, frames, 21), 0.3)
                if kind == "stage 1":
                    fn = jax.jit(lambda s, a, e, c: nnx.merge(graphdef, s)(a, e, c))
                    t = best_of(lambda: fn(state, audio, exp0, ctrl), repeats)
                else:
                    fn = jax.jit(lambda s, a, e, c, k: nnx.merge(graphdef, s)(
                        a, e, c, jax.random.normal(k, (a.shape[0], a.shape[1] - 1, cfg.noise_dim))))
                    t = best_of(lambda: fn(state, audio, exp0, ctrl[:, 0], jax.random.key(0)), repeats)
                rows.append((f"{size} {kind}", count(model), b, b * frames / t, t * 1e3))
                print(f"  measured {size} {kind} batch {b}", file=sys.stderr, flush=True)
    return rows


def train_rows(repeats):
    """Steps/s of the tiny configs' step math (model + loss + Adam) on random batches."""
    from configs import expression as econf

    rows = []
    rng = np.random.default_rng(0)
    # lip-sync expert
    c = econf.get_config("sync_tiny")
    model = SyncNet(SyncNetConfig.tiny(), rngs=nnx.Rngs(0))
    g, p, r = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    b = int(c.batch_size)
    batch = {"mel": jnp.asarray(rng.normal(size=(b, 80, 16)), jnp.float32),
             "faces": jnp.asarray(rng.integers(0, 255, (b, 5, 64, 64, 3)), jnp.uint8),
             "label": jnp.asarray(rng.integers(0, 2, b), jnp.float32)}

    def sync_step(p, r, o, batch):
        def loss(p):
            m = nnx.merge(g, p, r, copy=True)
            a, v = m(batch["mel"][..., None], face_input(batch["faces"], (48, 96)), train=True)
            q = jnp.clip(sync_probability(a, v), 1e-7, 1 - 1e-7)
            return -jnp.mean(batch["label"] * jnp.log(q) + (1 - batch["label"]) * jnp.log(1 - q))
        grads = jax.grad(loss)(p)
        u, o = tx.update(grads, o, p)
        return optax.apply_updates(p, u), o

    step = jax.jit(sync_step)
    o = tx.init(p)
    t = best_of(lambda: step(p, r, o, batch), repeats)
    rows.append(("lip-sync expert (sync_tiny)", b, 1 / t))
    for stage in ("stage1", "stage2"):
        c = econf.get_config(f"{stage}_tiny")
        cfg = ExpressionConfig.tiny()
        model = (FrameExpression(cfg, rngs=nnx.Rngs(0)) if stage == "stage1"
                 else TwoStageExpression(cfg, rngs=nnx.Rngs(0)))
        g, p, r = nnx.split(model, nnx.Param, ...)
        b, w = int(c.batch_size), int(c.data.window)
        batch = {"mel_windows": jnp.asarray(rng.normal(size=(b, w, 80, 16)), jnp.float32),
                 "expression": jnp.asarray(rng.normal(size=(b, w, 64)), jnp.float32),
                 "controls": jnp.full((b, w, 21), 0.3), "exp0": jnp.zeros((b, 64))}
        o = tx.init(p)

        def expr_step(p, r, o, batch, stage=stage):
            def loss(p):
                m = nnx.merge(g, p, r, copy=True)
                if stage == "stage1":
                    em = jax.lax.stop_gradient(m.embed_audio(batch["mel_windows"]))  # frozen expert
                    exp = m.head(em, batch["exp0"], batch["controls"])
                else:
                    em = jax.lax.stop_gradient(m.stage1.embed_audio(batch["mel_windows"]))
                    ctrl = m.stage2.sample(em, batch["exp0"], batch["controls"][:, 0], jax.random.key(0))
                    exp = m.stage1.head(em, batch["exp0"], ctrl)
                return jnp.mean((exp - batch["expression"]) ** 2)
            grads = jax.grad(loss)(p)
            u, o = tx.update(grads, o, p)
            return optax.apply_updates(p, u), o

        step = jax.jit(expr_step)
        t = best_of(lambda: step(p, r, o, batch), repeats)
        rows.append((f"expression {stage} ({stage}_tiny, {w}-frame windows)", b, 1 / t))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--frames", type=int, default=30, help="frames per clip window")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); date {time.strftime('%Y-%m-%d')}")
    rows = infer_rows(batches, args.frames, args.repeats)
    print(f"\n| model | params (M) | batch | frames/s | ms per {args.frames}-frame window batch |")
    print("|---|---:|---:|---:|---:|")
    for name, params, b, fps, ms in rows:
        print(f"| {name} | {params:.2f} | {b} | {fps:,.0f} | {ms:.1f} |")
    print("\n| training (tiny) | batch | steps/s |")
    print("|---|---:|---:|")
    for name, b, sps in train_rows(args.repeats):
        print(f"| {name} | {b} | {sps:.2f} |")


if __name__ == "__main__":
    main()
