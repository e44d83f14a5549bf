"""Official LDA (pose / gaze diffusion) state dict -> ``MotionDenoiser``, and the parity checkers.

The torch names are those of ``audio2pose.pt['model']`` / ``audio2gaze.pt['model']`` and of the
oracle manifests. Layout changes: Linear (out, in) -> (in, out); Conv1d (out, in, k) -> (k, in, out);
TISA offsets / amplitudes / sharpness (1, K, H, 1, 1) -> (K, H); TISA bias (1, H, 1, 1) -> (H,);
slopes (H, 1, 1) -> (H,); LayerNorm weight -> scale.

``parity_pose_diffusion`` / ``parity_gaze_diffusion`` are the ``gohd-parity`` checkers of the
``pose_diffusion`` and ``gaze_diffusion`` oracles (registered at import of this module and by
``gohd_jax.interop.parity``): the single denoiser call with all its intermediates, and the full
150-step ancestral sampler with the oracle's injected noise.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig
from gohd_jax.nn import tisa as T

__all__ = ["infer_config", "export_state_dict", "load_state_dict", "denoiser_from_state_dict", "run_single",
           "run_sampler", "parity_pose_diffusion", "parity_gaze_diffusion"]


def _linear(prefix: str, lin: nnx.Linear) -> Iterator[tuple[str, Any, str, Any]]:
    yield f"{prefix}.weight", lin.kernel, "linear", None
    if lin.bias is not None:
        yield f"{prefix}.bias", lin.bias, "copy", None


def _conv(prefix: str, conv: T.Conv1d) -> Iterator[tuple[str, Any, str, Any]]:
    yield f"{prefix}.weight", conv.kernel, "conv", None
    if conv.bias is not None:
        yield f"{prefix}.bias", conv.bias, "copy", None


def _entries(model: MotionDenoiser) -> Iterator[tuple[str, Any, str, Any]]:
    """(torch name, variable, transform) for every state-dict entry, in official order."""
    yield from _conv("input_projection.conv1d", model.input_projection)
    yield from _linear("diffusion_embedding.projection1", model.diffusion_embedding.projection1)
    yield from _linear("diffusion_embedding.projection2", model.diffusion_embedding.projection2)
    for i, layer in enumerate(model.residual_layers):
        p = f"residual_layers.{i}"
        yield from _linear(f"{p}.nn.in_proj", layer.nn.in_proj)
        for j, blk in enumerate(layer.nn.attention_blocks):
            q = f"{p}.nn.attention_blocks.{j}"
            yield from _linear(f"{q}.attn.in_proj", blk.attn.in_proj)
            yield from _linear(f"{q}.attn.gate", blk.attn.gate)
            ps = blk.attn.position_scorer
            for n in ("offsets", "amplitudes", "sharpness"):
                yield f"{q}.attn.position_scorer.{n}", getattr(ps, n), "tisa_kh", None
            yield f"{q}.attn.position_scorer.bias", ps.bias, "flat", None
            yield f"{q}.attn.position_scorer.slopes", ps.slopes, "flat", None
            if isinstance(blk.ff, T.ConvFeedForward):
                yield from _conv(f"{q}.ff.conv_1", blk.ff.conv_1)
                yield from _conv(f"{q}.ff.conv_2", blk.ff.conv_2)
            else:
                yield from _linear(f"{q}.ff.linear_1", blk.ff.linear_1)
                yield from _linear(f"{q}.ff.linear_2", blk.ff.linear_2)
            for n in ("norm_1", "norm_2"):
                norm = getattr(blk, n)
                yield f"{q}.{n}.weight", norm.scale, "copy", None
                yield f"{q}.{n}.bias", norm.bias, "copy", None
        yield from _linear(f"{p}.nn.out_proj", layer.nn.out_proj)
        yield from _linear(f"{p}.diffusion_projection", layer.diffusion_projection)
        yield from _linear(f"{p}.local_cond_projection", layer.local_cond_projection)
        yield from _conv(f"{p}.output_projection.conv1d", layer.output_projection)
    yield from _conv("skip_projection.conv1d", model.skip_projection)
    yield from _conv("output_projection.conv1d", model.output_projection)


def _transform(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "linear":
        return arr.T
    if how == "conv":
        return np.transpose(arr, (2, 1, 0))
    if how == "tisa_kh":
        return arr.reshape(arr.shape[1], arr.shape[2])
    if how == "flat":
        return arr.reshape(-1)
    return arr


def export_state_dict(model: MotionDenoiser) -> dict[str, np.ndarray]:
    """Our denoiser -> an official ``LDA`` state dict (the inverse of ``load_state_dict``; what
    ``audio2pose.pt['model']`` holds), e.g. to run our trained weights with the official code."""
    out = {}
    for name, var, how, _ in _entries(model):
        a = np.asarray(var[...], np.float32)
        if how == "linear":
            a = a.T
        elif how == "conv":
            a = np.transpose(a, (2, 1, 0))
        elif how == "tisa_kh":
            a = a.reshape(1, a.shape[0], a.shape[1], 1, 1)
        elif how == "flat":
            a = a.reshape((1, -1, 1, 1) if name.endswith(".bias") else (-1, 1, 1))
        out[name] = np.ascontiguousarray(a)
    return out


def infer_config(state_dict: Mapping[str, Any]) -> MotionDenoiserConfig:
    """Sizes from the state dict (in/global channels, layers, widths, heads, kernels, d_ff)."""
    def shape(name):
        return tuple(np.shape(state_dict[name]))
    c_in = shape("input_projection.conv1d.weight")[1]
    r = shape("input_projection.conv1d.weight")[0]
    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("residual_layers."))
    n_blocks = 1 + max(int(k.split(".")[4]) for k in state_dict
                       if k.startswith("residual_layers.0.nn.attention_blocks."))
    pfx = "residual_layers.0.nn.attention_blocks.0."
    _, k, h, _, _ = shape(pfx + "attn.position_scorer.offsets")
    ff = pfx + ("ff.linear_1.weight" if pfx + "ff.linear_1.weight" in state_dict
                else "ff.conv_1.weight")
    cond = shape("residual_layers.0.local_cond_projection.weight")[1]
    emb = shape("diffusion_embedding.projection1.weight")
    # The dilation cycle is not in the state dict: the official [0, 1, 2] is assumed and checked
    # against the FF type of every layer.
    cfg = MotionDenoiserConfig(in_channels=c_in, global_dim=cond - 320, local_dim=320,
                               residual_layers=n_layers, residual_channels=r,
                               embedding_dim=emb[0], step_in_dim=emb[1], num_blocks=n_blocks,
                               num_heads=h, d_ff=shape(ff)[0], num_kernels=k)
    for i in range(n_layers):
        is_lin = f"residual_layers.{i}.nn.attention_blocks.0.ff.linear_1.weight" in state_dict
        if is_lin != (cfg.dilation_cycle[i % 3] == 0):
            raise ValueError(f"layer {i}: FF type does not match the dilation cycle (0, 1, 2)")
    return cfg


def load_state_dict(model: MotionDenoiser, state_dict: Mapping[str, Any]) -> MotionDenoiser:
    """Copies an official state dict into ``model`` in place (strict: every name, every shape)."""
    seen = set()
    for name, var, how, _ in _entries(model):
        if name not in state_dict:
            raise KeyError(f"state dict lacks {name!r}")
        arr = _transform(np.asarray(state_dict[name], np.float32), how)
        if arr.shape != tuple(var.shape):
            raise ValueError(f"{name}: shape {arr.shape} (converted) != port {tuple(var.shape)}")
        var.value = jnp.asarray(arr, var.dtype)
        seen.add(name)
    extra = sorted(set(state_dict) - seen)
    if extra:
        raise KeyError(f"unused state-dict entries: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    return model


def denoiser_from_state_dict(state_dict: Mapping[str, Any], step_table=None) -> MotionDenoiser:
    cfg = infer_config(state_dict)
    model = MotionDenoiser(cfg, rngs=nnx.Rngs(0))
    load_state_dict(model, state_dict)
    if step_table is not None:
        model.set_step_table(step_table)
    return model


# --------------------------------------------------------------------------------------------
# Oracle runs
# --------------------------------------------------------------------------------------------

def run_single(model: MotionDenoiser, io: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The single denoiser call of the oracle: float step (shared, shape [1]) and integer steps."""
    @nnx.jit
    def fwd(m, x, step, lc, gc):
        eps, inter = m(x, step, lc, gc, return_intermediates=True)
        return eps, inter

    @nnx.jit
    def bias(m, t):
        return m.residual_layers[0].nn.attention_blocks[0].attn.position_scorer(t.shape[0])

    x = jnp.asarray(io["x_t"], jnp.float32)
    lc = jnp.asarray(io["local_cond"], jnp.float32)
    gc = jnp.asarray(io["global_cond"], jnp.float32)
    eps, inter = fwd(model, x, jnp.asarray(io["diffusion_step"], jnp.float32), lc, gc)
    step_int = np.asarray(io["diffusion_step_int"]).astype(np.int32)
    eps_i, inter_i = fwd(model, x, jnp.asarray(step_int), lc, gc)
    tb = bias(model, jnp.zeros((x.shape[1],)))
    out = {"eps": eps, "eps_int_step": eps_i, "step_embedding": inter["step_embedding"],
           "step_embedding_int_step": inter_i["step_embedding"], "res0_x": inter["res0_x"],
           "res0_skip": inter["res0_skip"], "skip_sum_scaled": inter["skip_sum_scaled"],
           "tisa_bias_l0_b0": tb[None]}
    return {k: np.asarray(v) for k, v in out.items()}


def run_sampler(model: MotionDenoiser, io: Mapping[str, np.ndarray], *,
                residual_pose: bool) -> dict[str, np.ndarray]:
    """The official 150-step ancestral sampler with the oracle's injected noise."""
    from gohd_jax.diffusion import samplers

    lc = np.asarray(io["sampler_local_cond"], np.float32)
    gc = np.asarray(io["sampler_global_cond"], np.float32)
    if lc.ndim == 2:
        lc, gc = lc[None], gc[None]
    res = samplers.sample(model, jnp.asarray(lc), jnp.asarray(gc),
                      noise_init=jnp.asarray(io["sampler_noise_init"], jnp.float32),
                      noise_steps=jnp.asarray(io["sampler_noise_steps"], jnp.float32),
                      betas=np.asarray(io["sampler_beta"], np.float32), return_trace=True)
    clamped = np.asarray(res["clamped"])[0]
    out = {"sampler_T": np.asarray(res["T"]), "sampler_x_in": np.asarray(res["x_in"]),
           "sampler_eps": np.asarray(res["eps"]),
           "sampler_out_preclamp": np.asarray(res["preclamp"])[0],
           "sampler_out_clamped": clamped}
    if residual_pose:
        out["sampler_out_final"] = clamped + np.asarray(io["sampler_pose0"], np.float32)[None]
    else:
        out["sampler_out_final"] = clamped
    return out


def _parity(io, state_dict, *, residual_pose: bool, sampler: bool = True):
    if state_dict is None:
        raise ValueError("the diffusion oracle needs its weights (manifest.json)")
    model = denoiser_from_state_dict(state_dict, io.get("diffusion_embedding_table"))
    out = run_single(model, io)
    if sampler and "sampler_noise_init" in io:
        out.update(run_sampler(model, io, residual_pose=residual_pose))
    return out


def parity_pose_diffusion(io, state_dict, fp64_ref=None, *, sampler: bool = True):
    return _parity(io, state_dict, residual_pose=True, sampler=sampler)


def parity_gaze_diffusion(io, state_dict, fp64_ref=None, *, sampler: bool = True):
    return _parity(io, state_dict, residual_pose=False, sampler=sampler)

