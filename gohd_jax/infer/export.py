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

``export.json`` records the shapes (R, B, N) and the bundle's sampling settings. N is the
window's input length (``window - 1`` for the release alignment, ``window`` for ours).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["export_bundle", "exported_functions"]


def exported_functions(bundle, *, render_batch: int = 8, clips: int = 1) -> dict:
    """{name: (function, example args)} for the functions ``export_bundle`` writes."""
    from gohd_jax.diffusion import samplers, windowing

    graph, state = nnx.split(bundle.animator)
    s = bundle.image_size
    anim = nnx.merge(graph, state)

    def encode(src):
        return anim.encode_source(src.astype(jnp.float32) / 127.5 - 1.0)

    w_s, feats = jax.eval_shape(encode, jax.ShapeDtypeStruct((1, s, s, 3), jnp.uint8))

    def render(w, *rest):
        *fs, sem = rest
        out = anim.render(w, tuple(fs), sem)["rgb"][0]
        return jnp.round((jnp.clip(out, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)

    r = int(render_batch)
    fns = {"encode": (encode, (jax.ShapeDtypeStruct((1, s, s, 3), jnp.uint8),)),
           "render": (render, (jax.ShapeDtypeStruct((r, w_s.shape[1]), jnp.float32),
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


def export_bundle(bundle, out, *, render_batch: int = 8, clips: int = 1) -> list[Path]:
    from jax import export

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    meta = {"render_batch": render_batch, "clips": clips, "image_size": bundle.image_size,
            "pose_spec": dataclasses.asdict(bundle.pose_spec), "gaze_spec": dataclasses.asdict(bundle.gaze_spec),
            "functions": {}}
    for name, (fn, args) in exported_functions(bundle, render_batch=render_batch, clips=clips).items():
        exp = export.export(jax.jit(fn))(*args)
        path = out / f"{name}.stablehlo"
        path.write_bytes(exp.serialize())
        meta["functions"][name] = {"inputs": [[list(a.shape), str(a.dtype)] for a in args],
                                   "outputs": [[list(o.shape), str(o.dtype)] for o in exp.out_avals]}
        files.append(path)
    (out / "export.json").write_text(json.dumps(meta, indent=1))
    files.append(out / "export.json")
    return files
