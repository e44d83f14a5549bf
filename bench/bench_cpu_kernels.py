"""Side by side on this machine: the two ways of computing two hot spots of the tiny animator's
train step, forward and gradient (ms, best of N):

* ``conv_transpose2d`` (the modulated conv's 2x upsampling): "dilated" (one correlation of the
  zero-dilated input) vs "phases" (one ordinary conv per output phase), which ``method="auto"``
  picks on CPU;
* the MS-SSIM Gaussian filter (``losses._depthwise_1d``): a grouped (depthwise) convolution vs the
  banded-matrix product the loss uses.

    .venv/bin/python bench/bench_cpu_kernels.py [--repeats 10]
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
from jax import lax  # noqa: E402

from gohd_jax.nn.stylegan import conv_transpose2d  # noqa: E402
from gohd_jax.train import losses  # noqa: E402


def best_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def grouped_conv_1d(x, taps, axis):
    """The depthwise-convolution form of ``losses._depthwise_1d`` (stride 1), for comparison."""
    c = x.shape[-1]
    shape = (len(taps), 1, 1, c) if axis == 1 else (1, len(taps), 1, c)
    kernel = jnp.broadcast_to(jnp.asarray(taps, x.dtype).reshape(shape[:2] + (1, 1)), shape)
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"backend {jax.default_backend()}")
    rng = np.random.default_rng(0)
    print("\nconv_transpose2d, stride 2, 3x3, batch 8 (ms)")
    print(f"{'input':>16s} {'out ch':>6s} | {'dilated fwd':>11s} {'dilated grad':>12s} | "
          f"{'phases fwd':>10s} {'phases grad':>11s}")
    for r, ci, co in ((8, 64, 64), (16, 64, 64), (32, 64, 32), (32, 32, 16)):
        x = jnp.asarray(rng.normal(size=(8, r, r, ci)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, ci, co)), jnp.float32)
        row = []
        for m in ("dilated", "phases"):
            fwd = jax.jit(lambda x, w, m=m: conv_transpose2d(x, w, method=m))
            grad = jax.jit(jax.grad(lambda x, w, m=m: jnp.sum(conv_transpose2d(x, w, method=m) ** 2),
                                    argnums=(0, 1)))
            row += [best_ms(fwd, x, w, repeats=args.repeats), best_ms(grad, x, w, repeats=args.repeats)]
        print(f"{str([8, r, r, ci]):>16s} {co:6d} | {row[0]:11.2f} {row[1]:12.2f} | {row[2]:10.2f} {row[3]:11.2f}")

    print("\nMS-SSIM loss at [8, 64, 64, 3] (3 scales), and its 11-tap Gaussian filter (ms)")
    x = jnp.asarray(rng.uniform(-1, 1, size=(8, 64, 64, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, size=(8, 64, 64, 3)), jnp.float32)
    taps = losses._gaussian_taps(11, 1.5)
    blur_band = lambda a: losses._depthwise_1d(losses._depthwise_1d(a, taps, 1), taps, 2)  # noqa: E731
    blur_grouped = lambda a: grouped_conv_1d(grouped_conv_1d(a, taps, 1), taps, 2)  # noqa: E731
    np.testing.assert_allclose(blur_band(x), blur_grouped(x), atol=1e-5)
    print(f"{'':22s} {'band matrix':>11s} {'grouped conv':>12s}")
    for name, fn_b, fn_g in (("filter, forward", blur_band, blur_grouped),
                             ("filter, gradient", jax.grad(lambda a: jnp.sum(blur_band(a) ** 2)),
                              jax.grad(lambda a: jnp.sum(blur_grouped(a) ** 2)))):
        print(f"{name:22s} {best_ms(jax.jit(fn_b), x, repeats=args.repeats):11.2f} "
              f"{best_ms(jax.jit(fn_g), x, repeats=args.repeats):12.2f}")
    print(f"{'MS-SSIM loss, gradient':22s} "
          f"{best_ms(jax.jit(jax.grad(losses.ms_ssim_loss)), x, y, repeats=args.repeats):11.2f}")


if __name__ == "__main__":
    main()
