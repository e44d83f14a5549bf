"""Official expression / SyncNet state dicts -> ``FrameExpression``, ``TwoStageExpression`` and
``SyncNet``, and the ``gohd-parity`` checkers of the ``audio2exp`` and ``audio2exp_twostage`` oracles.

The torch names are those of ``audio2exp.pth['state_dict_G']`` (with its ``module.`` prefix, which
is stripped), of Wav2Lip's ``lipsync_expert.pth['state_dict']`` (``SyncNet_color``) and of the
oracle manifests:

* ``audio_encoder.{i}.conv_block.0.{weight,bias}`` conv (out, in, kh, kw) -> (kh, kw, in, out);
  ``conv_block.1.{weight,bias,running_mean,running_var}`` BatchNorm -> scale, bias, mean, var
  (``num_batches_tracked`` is read and dropped: eval-mode BatchNorm ignores it);
* ``mapping1``, ``control_encoder.{0,2}``, ``output.{0,2}``: Linear (out, in) -> (in, out);
* ``lstm.{weight_ih,weight_hh}_l{k}`` (4H, in) -> (in, 4H); ``lstm.{bias_ih,bias_hh}_l{k}`` as is.

Stage 1 of ``TwoStageGenerator`` is under ``simplewarpper.`` (sic).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.models.expression import ExpressionConfig, FrameExpression, TwoStageExpression
from gohd_jax.models.syncnet import SyncNet, SyncNetConfig

__all__ = ["strip_prefix", "copy_entries", "load_state_dict", "frame_expression_from_state_dict",
           "two_stage_from_state_dict", "syncnet_from_state_dict", "parity_audio2exp",
           "parity_audio2exp_twostage"]

_DROPPED = ("num_batches_tracked",)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Removes DataParallel's ``module.`` prefix where every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _encoder(prefix: str, encoder) -> Iterator[tuple[str, Any, str]]:
    for i, block in enumerate(encoder.blocks):
        p = f"{prefix}.{i}.conv_block"
        yield f"{p}.0.weight", block.weight, "conv"
        yield f"{p}.0.bias", block.bias, "copy"
        yield f"{p}.1.weight", block.bn.scale, "copy"
        yield f"{p}.1.bias", block.bn.bias, "copy"
        yield f"{p}.1.running_mean", block.bn.mean, "copy"
        yield f"{p}.1.running_var", block.bn.var, "copy"


def _linear(prefix: str, lin: nnx.Linear) -> Iterator[tuple[str, Any, str]]:
    yield f"{prefix}.weight", lin.kernel, "linear"
    yield f"{prefix}.bias", lin.bias, "copy"


def _frame_entries(model: FrameExpression, prefix: str = ""):
    yield from _encoder(f"{prefix}audio_encoder", model.audio_encoder)
    yield from _linear(f"{prefix}mapping1", model.mapping1)


def _two_stage_entries(model: TwoStageExpression):
    yield from _frame_entries(model.stage1, "simplewarpper.")
    s2 = model.stage2
    yield from _linear("control_encoder.0", s2.control_encoder[0])
    yield from _linear("control_encoder.2", s2.control_encoder[1])
    for k in range(s2.lstm.layers):
        yield f"lstm.weight_ih_l{k}", s2.lstm.kernel_ih[k], "linear"
        yield f"lstm.weight_hh_l{k}", s2.lstm.kernel_hh[k], "linear"
        yield f"lstm.bias_ih_l{k}", s2.lstm.bias_ih[k], "copy"
        yield f"lstm.bias_hh_l{k}", s2.lstm.bias_hh[k], "copy"
    yield from _linear("output.0", s2.output[0])
    yield from _linear("output.2", s2.output[1])


def _syncnet_entries(model: SyncNet):
    yield from _encoder("face_encoder", model.face_encoder)
    yield from _encoder("audio_encoder", model.audio_encoder)


def _transform(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":
        return arr.transpose(2, 3, 1, 0)
    if how == "linear":
        return arr.T
    return arr


def batchnorm_entries(prefix: str, bn: nnx.BatchNorm) -> Iterator[tuple[str, Any, str]]:
    """A torch BatchNorm's four state-dict entries under ``prefix`` -> ``bn``'s variables (for
    ``copy_entries``; ``num_batches_tracked`` is dropped there)."""
    yield f"{prefix}.weight", bn.scale, "copy"
    yield f"{prefix}.bias", bn.bias, "copy"
    yield f"{prefix}.running_mean", bn.mean, "copy"
    yield f"{prefix}.running_var", bn.var, "copy"


def read_state_dict(path, what: str) -> Mapping[str, Any]:
    """A plain state dict saved with ``torch.save`` (or wrapped as ``{"state_dict": ...}``), read
    torch-free; ``what`` names the expected file in the error."""
    from gohd_jax.interop.torch_checkpoint import load_torch_checkpoint

    sd = load_torch_checkpoint(path)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state dict ({what}), got {type(sd).__name__}")
    return sd


def copy_entries(model: nnx.Module, entries, state_dict: Mapping[str, Any], transform, *,
                 ignore: tuple[str, ...] = ()) -> nnx.Module:
    """The strict copy every converter here shares: ``entries`` yields (torch name, variable, how),
    ``transform(array, how)`` converts the layout. Every name must exist with the right shape;
    entries left over are an error, except BatchNorm's ``num_batches_tracked`` and names starting
    with one of ``ignore``. ``module.`` (DataParallel) is stripped first."""
    sd = strip_prefix(state_dict)
    seen = set()
    for name, var, how in entries:
        if name not in sd:
            raise KeyError(f"state dict lacks {name!r} (is this the right checkpoint for "
                           f"{type(model).__name__}?)")
        arr = transform(np.asarray(sd[name], np.float32), how)
        if arr.shape != tuple(var.shape):
            raise ValueError(f"{name}: shape {arr.shape} (converted) != port {tuple(var.shape)}")
        var.value = jnp.asarray(arr, var.dtype)
        seen.add(name)
    extra = sorted(k for k in set(sd) - seen if not k.endswith(_DROPPED) and not k.startswith(ignore))
    if extra:
        raise KeyError(f"unused state-dict entries: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    return model


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> nnx.Module:
    """Copies an official state dict into ``model`` in place: strict on names and shapes."""
    entries = {FrameExpression: _frame_entries, TwoStageExpression: _two_stage_entries,
               SyncNet: _syncnet_entries}[type(model)](model)
    return copy_entries(model, entries, state_dict, _transform)


def _controls_of(sd: Mapping[str, Any], prefix: str = "") -> int:
    w = np.asarray(sd[f"{prefix}mapping1.weight"])
    audio = np.asarray(sd[f"{prefix}audio_encoder.13.conv_block.0.weight"]).shape[0]
    return w.shape[1] - audio - w.shape[0]


def frame_expression_from_state_dict(state_dict: Mapping[str, Any]) -> FrameExpression:
    """``SimpleWrapperV2`` / ``V3`` (e.g. ``audio2exp.pth['state_dict_G']``) -> stage 1."""
    sd = strip_prefix(state_dict)
    cfg = ExpressionConfig(controls=_controls_of(sd))
    return load_state_dict(FrameExpression(cfg, rngs=nnx.Rngs(0)), sd)


def two_stage_from_state_dict(state_dict: Mapping[str, Any]) -> TwoStageExpression:
    sd = strip_prefix(state_dict)
    hidden = np.asarray(sd["lstm.weight_hh_l0"]).shape[1]
    layers = len([k for k in sd if k.startswith("lstm.weight_hh_l")])
    control_dim, control_hidden = np.asarray(sd["control_encoder.0.weight"]).shape[::-1]
    in_dim = np.asarray(sd["lstm.weight_ih_l0"]).shape[1]
    exp_dim = np.asarray(sd["simplewarpper.mapping1.weight"]).shape[0]
    cfg = ExpressionConfig(exp_dim=exp_dim, controls=_controls_of(sd, "simplewarpper."),
                           control_dim=int(control_dim), hidden=int(hidden),
                           control_hidden=int(control_hidden), lstm_layers=layers,
                           noise_dim=int(in_dim - 512 - hidden - exp_dim))
    return load_state_dict(TwoStageExpression(cfg, rngs=nnx.Rngs(0)), sd)


def syncnet_from_state_dict(state_dict: Mapping[str, Any]) -> SyncNet:
    """Wav2Lip's ``SyncNet_color`` (``lipsync_expert.pth['state_dict']``) -> ``SyncNet``."""
    return load_state_dict(SyncNet(SyncNetConfig(), rngs=nnx.Rngs(0)), state_dict)


# --------------------------------------------------------------------------------------------
# Oracle checks
# --------------------------------------------------------------------------------------------

def _audio_nhwc(audio: np.ndarray) -> jax.Array:
    """The oracles' [B, T, 80, 16] mel windows are already in our layout (mel x time)."""
    return jnp.asarray(np.asarray(audio, np.float32))


def parity_audio2exp(io, state_dict, fp64_ref=None):
    if state_dict is None:
        raise ValueError("the audio2exp oracle needs its weights (manifest.json)")
    model = frame_expression_from_state_dict(state_dict)
    audio, exp0 = _audio_nhwc(io["audio"]), jnp.asarray(io["exp0"], jnp.float32)

    @nnx.jit
    def run(m, audio, exp0):
        em = m.embed_audio(audio)
        return em, m.head(em, exp0, None)

    em, exp = run(model, audio, exp0)
    exp = np.asarray(exp)
    post = exp[0].copy()
    post[0] = (np.asarray(io["exp0"], np.float32)[0] + post[0]) / 2  # get_target_seqs' blend
    return {"exp_motion_pred": exp, "audio_embedding": np.asarray(em).reshape(-1, em.shape[-1]),
            "exp_window_postprocessed": post}


def parity_audio2exp_twostage(io, state_dict, fp64_ref=None):
    if state_dict is None:
        raise ValueError("the audio2exp_twostage oracle needs its weights (manifest.json)")
    model = two_stage_from_state_dict(state_dict)
    zb, bc = np.asarray(io["zb"], np.float32), np.asarray(io["bc"], np.float32)
    control0 = jnp.asarray(np.concatenate([zb[:, 0], bc[:, 0]], axis=-1))
    noise = np.asarray(io["noise_z"], np.float32)  # [T-1, B, 1, N], drawn in time order
    noise = jnp.asarray(noise[:, :, 0].transpose(1, 0, 2))  # -> [B, T-1, N]
    out = nnx.jit(lambda m, a, e, c, z: m(a, e, c, z))(
        model, _audio_nhwc(io["audio"]), jnp.asarray(io["exp0"], jnp.float32), control0, noise)
    return {"control_seq": np.asarray(out["controls"]), "exp_motion_pred": np.asarray(out["exp"]),
            "audio_embedding": np.asarray(out["audio_em"])}
