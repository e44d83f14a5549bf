"""Official PyTorch state dicts -> our animator / LIA / discriminator NNX parameters.

Names are the official state-dict names (``reference/animator/manifest.json``,
``reference/lia_generator/manifest.json``; the official checkpoint
``FaceAnimator_GoHD.pt['gen_pose']`` uses the animator's names directly; a LIA checkpoint's
``['gen']`` the LIA names; its ``['dis']`` the discriminator's). Conversions:

* 2-D conv weights OIHW -> HWIO; ModulatedConv2d weights [1, O, I, k, k] -> [k, k, I, O];
* Linear weights [out, in] -> [in, out]; Conv1d [out, in, k] -> [k, in, out];
* per-channel biases [1, C, 1, 1] -> [C]; the constant input [1, C, 4, 4] -> [1, 4, 4, C];
* equal-lr weights stay raw (the 1/sqrt(fan_in) factor is applied in the forward pass);
* Blur / Upsample ``*.kernel`` buffers are not parameters here: they are checked against the
  kernel our layers use (the normalised [1,3,3,1] outer product, ×4 for upsampling).

The mapping is derived from the structure of *our* module (this file is the only place that
knows the PyTorch names), so any config converts, and a state dict that does not fit raises
``WeightConversionError`` naming every unknown, missing and mis-shaped key.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from gohd_jax.models import animator as A
from gohd_jax.nn import stylegan as S

__all__ = ["WeightConversionError", "infer_animator_config", "load_state_dict",
           "animator_from_state_dict", "lia_generator_from_state_dict",
           "discriminator_from_state_dict", "export_state_dict", "abstract_model",
           "parity_animator", "parity_lia_generator"]


class WeightConversionError(ValueError):
    """A state dict that does not fit the model (message lists the offending keys)."""


# Layout transforms, torch -> ours and back.
class _T:
    def __init__(self, fwd, inv):
        self.fwd, self.inv = fwd, inv

    def __call__(self, a):
        return self.fwd(a)


def _mod_fwd(a):
    if a.ndim != 5 or a.shape[0] != 1:
        raise ValueError(f"expected a modulated-conv weight [1,O,I,k,k], got {list(a.shape)}")
    return np.transpose(a[0], (2, 3, 1, 0))


_oihw = _T(lambda a: np.transpose(a, (2, 3, 1, 0)), lambda a: np.transpose(a, (3, 2, 0, 1)))
_mod = _T(_mod_fwd, lambda a: np.transpose(a, (3, 2, 0, 1))[None])
_linear = _T(np.transpose, np.transpose)
_conv1d = _T(lambda a: np.transpose(a, (2, 1, 0)), lambda a: np.transpose(a, (2, 1, 0)))
_chan = _T(lambda a: a.reshape(-1), lambda a: a.reshape(1, -1, 1, 1))
_const = _T(lambda a: np.transpose(a, (0, 2, 3, 1)), lambda a: np.transpose(a, (0, 3, 1, 2)))
_copy = _T(lambda a: a, lambda a: a)


# Entry: (torch name, (variable owner module, attribute name) or None for a kernel buffer,
#         a _T transform or the expected kernel array)
Entry = tuple[str, Any, Any]


def _p(name, module, attr, fn) -> Entry:
    return (name, (module, attr), fn)


def _blur_kernel(taps, factor: int = 1) -> np.ndarray:
    k = np.asarray(taps, np.float64)
    k2 = np.outer(k, k)
    return (k2 / k2.sum() * (factor ** 2 if factor > 1 else 1)).astype(np.float32)


def _walk(m: Any, t: str) -> Iterator[Entry]:
    """Yields the official names of module ``m`` (torch prefix ``t``)."""
    if isinstance(m, S.EqualConv2d):
        yield _p(f"{t}.weight", m, "weight", _oihw)
        if m.bias is not None:
            yield _p(f"{t}.bias", m, "bias", _copy)
    elif isinstance(m, S.EqualLinear):
        yield _p(f"{t}.weight", m, "weight", _linear)
        if m.bias is not None:
            yield _p(f"{t}.bias", m, "bias", _copy)
    elif isinstance(m, S.FusedLeakyReLU):
        yield _p(f"{t}.bias", m, "bias", _chan)
    elif isinstance(m, S.ConvLayer):  # nn.Sequential([Blur], EqualConv2d, [FusedLeakyReLU])
        i = 0
        if m.blur is not None:
            yield (f"{t}.0.kernel", None, _blur_kernel(m.blur.kernel))
            i = 1
        yield from _walk(m.conv, f"{t}.{i}")
        if m.act is not None:
            yield from _walk(m.act, f"{t}.{i + 1}")
    elif isinstance(m, S.ResBlock):
        for name in ("conv1", "conv2", "skip"):
            yield from _walk(getattr(m, name), f"{t}.{name}")
    elif isinstance(m, S.ModulatedConv2d):
        yield _p(f"{t}.weight", m, "weight", _mod)
        if m.blur is not None:
            factor = 2 if m.upsample else 1
            yield (f"{t}.blur.kernel", None, _blur_kernel(m.blur.kernel, factor))
        yield from _walk(m.modulation, f"{t}.modulation")
    elif isinstance(m, S.NoiseInjection):
        yield _p(f"{t}.weight", m, "weight", _copy)
    elif isinstance(m, S.StyledConv):
        yield from _walk(m.conv, f"{t}.conv")
        yield from _walk(m.noise, f"{t}.noise")
        yield from _walk(m.activate, f"{t}.activate")
    elif isinstance(m, (S.ToRGB, S.ToFlow)):
        yield _p(f"{t}.bias", m, "bias", _chan)
        if m.upsample is not None:
            yield (f"{t}.upsample.kernel", None, _blur_kernel(m.upsample.kernel, m.upsample.factor))
        yield from _walk(m.conv, f"{t}.conv")
    elif isinstance(m, S.Conv2d):
        yield _p(f"{t}.weight", m, "weight", _oihw)
        if m.bias is not None:
            yield _p(f"{t}.bias", m, "bias", _copy)
    elif isinstance(m, S.ConstantInput):
        yield _p(f"{t}.input", m, "input", _const)
    elif isinstance(m, A.Conv1d):
        yield _p(f"{t}.weight", m, "weight", _conv1d)
        yield _p(f"{t}.bias", m, "bias", _copy)
    elif isinstance(m, A.MappingNet):
        yield from _walk(m.first, f"{t}.first.0")
        for i, conv in enumerate(m.encoder):
            yield from _walk(conv, f"{t}.encoder{i}.1")
    elif isinstance(m, A.EncoderApp):
        for i, conv in enumerate(m.convs):
            yield from _walk(conv, f"{t}.convs.{i}")
    elif isinstance(m, (A.SemanticEncoder, A.LIAEncoder)):
        yield from _walk(m.net_app, f"{t}.net_app")
        if isinstance(m, A.SemanticEncoder):
            yield from _walk(m.semantics_enc, f"{t}.semantics_enc")
        for i, layer in enumerate(m.fc):
            yield from _walk(layer, f"{t}.fc.{i}")
    elif isinstance(m, A.Direction):
        yield _p(f"{t}.weight", m, "weight", _copy)
    elif isinstance(m, A.SFTBlock):
        for name in ("scale1", "scale2", "shift1", "shift2"):
            yield from _walk(getattr(m, name), f"{t}.{name}")
    elif isinstance(m, A.Synthesis):
        yield from _walk(m.direction, f"{t}.direction")
        yield from _walk(m.input, f"{t}.input")
        yield from _walk(m.conv1, f"{t}.conv1")
        yield from _walk(m.to_rgb1, f"{t}.to_rgb1")
        for group in ("convs", "to_rgbs", "to_flows", "sft"):
            for i, sub in enumerate(getattr(m, group)):
                yield from _walk(sub, f"{t}.{group}.{i}")
    elif isinstance(m, (A.SemanticAnimator, A.LIAGenerator)):
        yield from _walk(m.enc, _join(t, "enc"))
        yield from _walk(m.dec, _join(t, "dec"))
    else:
        from gohd_jax.models import discriminator as D

        if isinstance(m, D.Discriminator):
            for i, conv in enumerate(m.convs):
                yield from _walk(conv, _join(t, f"convs.{i}"))
            yield from _walk(m.final_conv, _join(t, "final_conv"))
            for i, layer in enumerate(m.final_linear):
                yield from _walk(layer, _join(t, f"final_linear.{i}"))
        else:
            raise TypeError(f"no official-name mapping for {type(m).__name__}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _list(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, Any], *, dtype=None,
                    prefix: str = "", strict: bool = True) -> nnx.Module:
    """Fills ``model``'s parameters (in place; an ``abstract_model`` works) from an official state
    dict and returns it. ``dtype`` casts every weight (np.float64 needs jax_enable_x64);
    ``prefix`` is stripped from the keys (e.g. 'module.'). With ``strict``, keys the model does
    not have are an error (missing and mis-shaped keys always are)."""
    if dtype is not None and np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        raise WeightConversionError("dtype float64 needs 64-bit JAX: wrap the call in "
                                    "`with jax.enable_x64(True):`")
    sd = {}
    for k, v in state_dict.items():
        if prefix and not k.startswith(prefix):
            continue
        sd[k[len(prefix):]] = v
    entries = list(_walk(model, ""))
    missing, bad_shape, bad_kernel, assigned = [], [], [], []
    for name, target, fn in entries:
        if name not in sd:
            missing.append(name)
            continue
        arr = np.asarray(sd[name])
        if target is None:  # blur kernel buffer: must be the kernel our layer uses
            if arr.shape != fn.shape or not np.allclose(arr, fn, rtol=1e-6, atol=1e-7):
                bad_kernel.append(name)
            continue
        module, attr = target
        var = getattr(module, attr)
        try:
            new = fn(arr)
        except ValueError as exc:
            bad_shape.append(f"{name} ({exc})")
            continue
        want = tuple(var.shape)
        if tuple(new.shape) != want:
            bad_shape.append(f"{name} {list(arr.shape)} -> {list(new.shape)}, model wants "
                             f"{list(want)}")
            continue
        cast = np.dtype(dtype) if dtype is not None else np.dtype(var.dtype)
        assigned.append((var, np.ascontiguousarray(new, dtype=cast)))
    known = {name for name, _, _ in entries}
    unknown = sorted(set(sd) - known) if strict else []
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_list(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {_list(unknown)}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} mis-shaped key(s): {_list(bad_shape, 6)}")
    if bad_kernel:
        problems.append(f"{len(bad_kernel)} blur kernel(s) differ from the [1,3,3,1] kernel our "
                        f"layers use: {_list(bad_kernel)}")
    if problems:
        raise WeightConversionError(f"state dict does not fit {type(model).__name__}: "
                                    + "; ".join(problems))
    covered = {id(var) for var, _ in assigned}
    uncovered = [".".join(map(str, path)) for path, var in nnx.to_flat_state(nnx.state(model))
                 if id(var) not in covered]
    if uncovered:  # a parameter of ours with no official name: a bug in _walk
        raise WeightConversionError(f"internal: no official name maps to {_list(uncovered)}")
    for var, value in assigned:
        var.value = jax.numpy.asarray(value)
    return model


def export_state_dict(model: nnx.Module, *, prefix: str = "") -> dict[str, np.ndarray]:
    """Our parameters under the official names and layouts (the inverse of ``load_state_dict``),
    blur-kernel buffers included: a PyTorch ``load_state_dict(strict=True)`` of the official
    module accepts it."""
    out = {}
    for name, target, fn in _walk(model, ""):
        if target is None:
            out[prefix + name] = fn.copy()
        else:
            module, attr = target
            value = np.asarray(getattr(module, attr)[...])
            out[prefix + name] = np.ascontiguousarray(fn.inv(value))
    return out


def abstract_model(cls: Callable[..., nnx.Module], *args, **kwargs) -> nnx.Module:
    """``cls(*args, rngs=…, **kwargs)`` with shape-only parameters (no random init cost)."""
    return nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs))


def _get(sd, name):
    if name not in sd:
        raise WeightConversionError(f"cannot infer the architecture: key {name!r} is missing")
    return np.asarray(sd[name]).shape


def infer_animator_config(state_dict: Mapping[str, Any], *, semantic: bool = True,
                          release_sft_wiring: bool = True, prefix: str = ""
                          ) -> "A.AnimatorConfig":
    """The AnimatorConfig an official state dict was built with (sizes and channels from the
    shapes; ``release_sft_wiring`` defaults to True, as for the released weights)."""
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    style_dim, motion_dim = _get(sd, "dec.direction.weight")
    n_res = sum(1 for k in sd
                if k.startswith("enc.net_app.convs.") and k.endswith("conv1.0.weight"))
    size = 2 ** (n_res + 2)
    chans = {size: _get(sd, "enc.net_app.convs.0.0.weight")[0]}
    for i in range(1, n_res + 1):
        chans[size >> i] = _get(sd, f"enc.net_app.convs.{i}.conv2.1.weight")[0]
    in_channels = _get(sd, "enc.net_app.convs.0.0.weight")[1]
    out_channels = _get(sd, "dec.to_rgbs.0.bias")[1]
    chans = {int(r): int(c) for r, c in chans.items()}
    official = all(A.OFFICIAL_CHANNELS.get(r) == c for r, c in chans.items())
    kw: dict[str, Any] = dict(size=size, style_dim=int(style_dim), motion_dim=int(motion_dim),
                              channels=None if official else tuple(sorted(chans.items())),
                              in_channels=int(in_channels), out_channels=int(out_channels),
                              use_sft=any(k.startswith("dec.sft.") for k in sd),
                              release_sft_wiring=release_sft_wiring)
    if semantic:
        kw["semantic_dim"] = int(_get(sd, "enc.semantics_enc.first.0.weight")[1])
        kw["mapping_layers"] = sum(1 for k in sd if k.startswith("enc.semantics_enc.encoder")
                                   and k.endswith(".1.weight"))
    if kw["use_sft"]:
        n_sft = len({k.split(".")[2] for k in sd if k.startswith("dec.sft.")})
        kw["sft_min_res"] = size >> (n_sft - 1)
    return A.AnimatorConfig(**kw)


def animator_from_state_dict(state_dict: Mapping[str, Any],
                             config: "A.AnimatorConfig | None" = None, *, dtype=None,
                             prefix: str = "") -> "A.SemanticAnimator":
    """A SemanticAnimator holding an official ``Generator_Semantic`` state dict (e.g.
    ``FaceAnimator_GoHD.pt['gen_pose']``). ``config`` defaults to the one inferred from the
    shapes, with the release's SFT wiring on."""
    cfg = config or infer_animator_config(state_dict, prefix=prefix)
    model = abstract_model(A.SemanticAnimator, cfg)
    return load_state_dict(model, state_dict, dtype=dtype, prefix=prefix)


def lia_generator_from_state_dict(state_dict: Mapping[str, Any],
                                  config: "A.AnimatorConfig | None" = None, *, dtype=None,
                                  prefix: str = "") -> "A.LIAGenerator":
    """An LIAGenerator holding an official LIA ``Generator`` state dict."""
    cfg = config or infer_animator_config(state_dict, semantic=False, prefix=prefix)
    model = abstract_model(A.LIAGenerator, cfg)
    return load_state_dict(model, state_dict, dtype=dtype, prefix=prefix)


def discriminator_from_state_dict(state_dict: Mapping[str, Any], config, *, dtype=None,
                                  prefix: str = ""):
    """A Discriminator holding an official StyleGAN2/LIA discriminator state dict."""
    from gohd_jax.models import discriminator as D

    model = abstract_model(D.Discriminator, config)
    return load_state_dict(model, state_dict, dtype=dtype, prefix=prefix)


# --------------------------------------------------------------------------------------------
# Parity with the reference oracles (gohd-parity kinds `animator` and `lia_generator`)
# --------------------------------------------------------------------------------------------

def _nhwc(x):
    return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 2, 3, 1)))


def _nchw(x) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))


def _run_animator(state_dict, io, dtype) -> dict[str, np.ndarray]:
    """Our animator on the oracle inputs in ``dtype``; every oracle array name -> NCHW numpy."""
    import jax.numpy as jnp

    model = animator_from_state_dict(state_dict, dtype=dtype)
    graphdef, state = nnx.split(model)
    src = jnp.asarray(_nhwc(io["img_source"]), dtype)
    sem = jnp.asarray(np.transpose(np.asarray(io["semantics"]), (0, 2, 1)), dtype)

    @jax.jit
    def run(state, src, sem):
        m = nnx.merge(graphdef, state)
        w_s, feats = m.encode_source(src)
        out = m.render(w_s, feats, sem)
        return w_s, feats[0], out, m.directions()

    with jax.default_matmul_precision("highest"):
        w_s, feat8, out, q = run(state, src, sem)
    res = {"w_s": w_s, "alpha": out["alpha"], "mapping_out": out["mapping_out"],
           "latent": out["latent"], "Q": q, "enc_feat_8": _nchw(feat8)}
    for img, raw in zip(out["rgb"], out["flow_raw"]):
        r = img.shape[1]
        res[f"rgb_{r}"] = _nchw(img)
        res[f"flow_raw_{r}"] = _nchw(raw)
    return {k: np.asarray(v) for k, v in res.items()}


def _run_lia(state_dict, io, dtype) -> dict[str, np.ndarray]:
    import jax.numpy as jnp

    model = lia_generator_from_state_dict(state_dict, dtype=dtype)
    graphdef, state = nnx.split(model)
    src, drv, start = (jnp.asarray(_nhwc(io[k]), dtype)
                       for k in ("img_source", "img_drive", "img_start"))

    # One compiled encoder for the three images and one compiled relative-mode decoder for both
    # modes: with α_start = α_source = 0 the relative latent w + (Qα − 0) + 0 is the absolute
    # latent w + Qα exactly.
    @jax.jit
    def encode(state, img):
        m = nnx.merge(graphdef, state)
        w, feats = m.encode_source(img)
        return w, feats, m.enc.motion_from_code(w)

    @jax.jit
    def render(state, w_s, feats, a_drive, a_start, a_source):
        m = nnx.merge(graphdef, state)
        return m.render(w_s, feats, a_drive, a_start, a_source)["rgb"], m.directions()

    with jax.default_matmul_precision("highest"):
        w_s, feats, a_source = encode(state, src)
        _, _, a_drive = encode(state, drv)
        _, _, a_start = encode(state, start)
        zeros = jnp.zeros_like(a_drive)
        rgb, q = render(state, w_s, feats, a_drive, zeros, zeros)
        rgb_rel, _ = render(state, w_s, feats, a_drive, a_start, a_source)
    res = {"w_s": w_s, "alpha_drive": a_drive, "alpha_start": a_start, "alpha_source": a_source,
           "Q": q}
    res = {k: np.asarray(v) for k, v in res.items()}
    for img in rgb:
        res[f"rgb_{img.shape[1]}"] = _nchw(img)
    res[f"rgb_{rgb_rel[0].shape[1]}_relative"] = _nchw(rgb_rel[0])
    return res


def _parity(runner, io, state_dict, fp64_ref, *, float32: bool = True, float64: bool = True):
    from gohd_jax.interop.parity import PortOutputs

    result = PortOutputs()
    if float32:
        result.float32 = runner(state_dict, io, np.float32)
    if float64 and fp64_ref:
        with jax.enable_x64(True):
            out64 = runner(state_dict, io, np.float64)
        result.float64 = {k: v for k, v in out64.items() if k in fp64_ref}
    return result


def parity_animator(io, state_dict, fp64_ref, *, float32: bool = True, float64: bool = True):
    """Checker of the ``animator`` oracle: float32 outputs for io.npz and, when the folder has
    io_fp64.npz, the same forward in float64 (weights upcast, linspace grid rounded to float32
    then upcast) for the arrays it holds."""
    return _parity(_run_animator, io, state_dict, fp64_ref, float32=float32, float64=float64)


def parity_lia_generator(io, state_dict, fp64_ref, *, float32: bool = True,
                         float64: bool = True):
    """Checker of the ``lia_generator`` oracle (absolute and relative mode)."""
    return _parity(_run_lia, io, state_dict, fp64_ref, float32=float32, float64=float64)
