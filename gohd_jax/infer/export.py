"""``gohd export``: the jitted inference functions as serialized StableHLO (``jax.export``).

Each file is one self-contained function (the weights are baked in as constants), loadable with
``jax.export.deserialize(open(f, "rb").read()).call(*args)`` in any JAX with no GoHD code:

=========================  ===============================================================
file                       function
=========================  ===============================================================
encode.stablehlo           source uint8 [1,S,S,3] -> (w_s [1,D], feats 8² … S²)
render.stablehlo           (w_s [R,D], feats [R,r,r,C] …, semantics [R,27,72]) -> uint8 [R,S,S,3]
pose_window.stablehlo      (cond [B,N,320], previous pose [B,6], key data uint32 [B,2]) -> [B,N,6]
gaze_window.stablehlo      (cond [B,N,320], previous gaze [B,2], key data uint32 [B,2]) -> [B,N,2]
=========================  ===============================================================

Each file holds the function lowered for every platform of ``platforms`` (default ``cpu``,
``cuda`` and ``tpu``: an export made on a CPU machine loads on a GPU or TPU, and JAX picks the
caller's). ``export.json`` records the shapes (R, B, N), the bundle's sampling settings, the
platforms and the compute precision. N is the window's input length (``window - 1`` for the
release alignment, ``window`` for ours). The motion directions Q = QR(W) are computed once, in
float32, at export and baked in with the weights: the exported renderer has no QR. ``precision``
("auto" | "float32" | "bfloat16", or a ``Policy``) is one for all the platforms (a function is
traced once): "auto" is bfloat16 when every platform is an accelerator and float32 when the CPU is
one of them; None (the default) exports the models as they are.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["export_bundle", "exported_functions", "PLATFORMS"]

PLATFORMS = ("cpu", "cuda", "tpu")


def _policy_bundle(bundle, precision, platforms=PLATFORMS):
    """(``bundle`` with its four models under ``precision`` (views), the policy); None: (the
    bundle itself, None). The policy's platform (which picks layer forms, e.g. the transposed
    convolution's) is the first accelerator of ``platforms``, else the CPU."""
    if precision is None:
        return bundle, None
    from gohd_jax.nn.policy import with_policy
    from gohd_jax.nn import policy as policy_lib

    accelerators = [p for p in platforms if p != "cpu"]
    target = {"cuda": "gpu", "rocm": "gpu"}.get(accelerators[0], accelerators[0]) if accelerators else "cpu"
    if isinstance(precision, policy_lib.Policy):
        pol = precision
    else:  # "auto" over several platforms: float32 if any of them is the CPU
        pol = policy_lib.resolve(precision if precision != "auto" or "cpu" not in platforms else "float32",
                                 platform=target)
    return dataclasses.replace(bundle, **{role: with_policy(getattr(bundle, role), pol)
                                          for role in ("animator", "pose", "gaze", "expression")}), pol


def exported_functions(bundle, *, render_batch: int = 8, clips: int = 1, precision=None) -> dict:
    """{name: (function, example args)} for the functions ``export_bundle`` writes."""
    from gohd_jax.diffusion import samplers, windowing
    from gohd_jax.infer.animate import quantise

    bundle, _ = _policy_bundle(bundle, precision)
    graph, state = nnx.split(bundle.animator)
    s = bundle.image_size
    anim = nnx.merge(graph, state)
    q = jnp.asarray(anim.directions(), jnp.float32)  # once; baked into the renderer as a constant

    def encode(src):
        return anim.encode_source(src.astype(jnp.float32) / 127.5 - 1.0)

    w_s, feats = jax.eval_shape(encode, jax.ShapeDtypeStruct((1, s, s, 3), jnp.uint8))

    def render(w, *rest):
        *fs, sem = rest
        return quantise(anim.render(w, tuple(fs), sem, directions=q)["rgb"][0])

    r = int(render_batch)
    fns = {"encode": (encode, (jax.ShapeDtypeStruct((1, s, s, 3), jnp.uint8),)),
           "render": (render, (jax.ShapeDtypeStruct((r, w_s.shape[1]), w_s.dtype),
                               *[jax.ShapeDtypeStruct((r, *f.shape[1:]), f.dtype) for f in feats],
                               jax.ShapeDtypeStruct((r, 27, 72), jnp.float32)))}
    for role, residual, ch in (("pose", True, 6), ("gaze", False, 2)):
        spec = getattr(bundle, f"{role}_spec")
        sampler = windowing.WindowSampler(getattr(bundle, role), spec=samplers.SamplerSpec(), residual=residual,
                                          alignment=spec.alignment, data_scale=spec.data_scale)
        n = spec.window - (1 if spec.alignment == "release" else 0)

        def window(cond, prev, key_data, _sampler=sampler):
            keys = jax.vmap(jax.random.wrap_key_data)(key_data)
            return _sampler._window(_sampler.state, cond, prev, keys)

        fns[f"{role}_window"] = (window, (jax.ShapeDtypeStruct((clips, n, 320), jnp.float32),
                                          jax.ShapeDtypeStruct((clips, ch), jnp.float32),
                                          jax.ShapeDtypeStruct((clips, 2), jnp.uint32)))
    return fns


def export_bundle(bundle, out, *, render_batch: int = 8, clips: int = 1, precision=None,
                  platforms=PLATFORMS) -> list[Path]:
    from jax import export

    platforms = tuple(platforms)
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if unknown or not platforms:
        raise ValueError(f"platforms must be among cpu, cuda, rocm, tpu; got {', '.join(platforms) or 'none'}")
    bundle, policy = _policy_bundle(bundle, precision, platforms)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    meta = {"render_batch": render_batch, "clips": clips, "image_size": bundle.image_size,
            "pose_spec": dataclasses.asdict(bundle.pose_spec), "gaze_spec": dataclasses.asdict(bundle.gaze_spec),
            "precision": None if policy is None else policy.compute, "platforms": list(platforms),
            "functions": {}}
    for name, (fn, args) in exported_functions(bundle, render_batch=render_batch, clips=clips).items():
        exp = export.export(jax.jit(fn), platforms=platforms)(*args)
        path = out / f"{name}.stablehlo"
        path.write_bytes(exp.serialize())
        meta["functions"][name] = {"inputs": [[list(a.shape), str(a.dtype)] for a in args],
                                   "outputs": [[list(o.shape), str(o.dtype)] for o in exp.out_avals]}
        files.append(path)
    (out / "export.json").write_text(json.dumps(meta, indent=1))
    files.append(out / "export.json")
    return files
