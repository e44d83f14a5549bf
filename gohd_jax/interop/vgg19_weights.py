"""torchvision VGG19 weights -> :class:`gohd_jax.models.vgg19.VGG19Features` (``.npz``).

LIA's perceptual loss uses torchvision's ImageNet VGG19 (``vgg19-dcbb9e9d.pth``). It cannot be
downloaded from here; whoever has it converts it once::

    python -m gohd_jax.interop.vgg19_weights vgg19-dcbb9e9d.pth --out vgg19.npz

and training configs point at ``vgg19.npz`` (:func:`load_vgg19`). The ``.pth`` is read with the
torch-free, code-refusing reader (:mod:`gohd_jax.interop.torch_checkpoint`).

Accepted state-dict names (after an optional ``--key`` and a ``module.`` prefix are removed):

* torchvision: ``features.{i}.weight`` [out, in, 3, 3] and ``features.{i}.bias`` [out] for the
  conv indices i = 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28 (conv1_1 .. conv5_1). The
  later convs (30, 32, 34) and ``classifier.*`` are not needed and are ignored;
* LIA's own ``Vgg19`` module: ``slice{1..5}.{i}.weight`` / ``.bias`` (the same global index i),
  optionally under ``vgg.`` (its ``VGGLoss``) -- what a saved LIA trainer would contain.

The ``.npz`` holds ``conv1_1.kernel`` [3, 3, 3, 64] (HWIO: torch's OIHW transposed by
(2, 3, 1, 0)), ``conv1_1.bias`` [64], ... for the 13 convs, all float32, plus ``__format__``
(a version string). No pickles: it loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gohd_jax.interop.torch_checkpoint import (
    TorchCheckpointError,
    load_torch_checkpoint,
    state_dict_from,
)
from gohd_jax.models.vgg19 import VGG19_CONVS, VGG19Features

__all__ = ["VGG19WeightsError", "convert_torchvision_vgg19", "save_vgg19_npz", "load_vgg19_params",
           "load_vgg19", "main"]

NPZ_FORMAT = "gohd-vgg19-features-v1"
_NAME = re.compile(r"^(?:vgg\.)?(?:features|slice[1-5])\.(\d+)\.(weight|bias)$")


class VGG19WeightsError(ValueError):
    """Weights that are missing, of the wrong shape, or not a VGG19 state dict."""


def convert_torchvision_vgg19(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision-format VGG19 state dict -> ``{"conv1_1.kernel": HWIO, "conv1_1.bias": ...}``.

    Args:
      state_dict: ``features.{i}.weight`` [O, I, 3, 3] / ``features.{i}.bias`` [O] (or LIA's
        ``slice{k}.{i}.*`` names), numpy arrays of any float dtype. Other entries are ignored.

    Returns:
      13 kernels [3, 3, I, O] and 13 biases [O], float32, keyed as :class:`VGG19Features` wants.

    Raises:
      VGG19WeightsError: a needed conv is missing or has the wrong shape.
    """
    by_index: dict[tuple[int, str], np.ndarray] = {}
    for key, value in state_dict.items():
        m = _NAME.match(key)
        if m:
            by_index[(int(m.group(1)), m.group(2))] = np.asarray(value)
    out: dict[str, np.ndarray] = {}
    missing = []
    for name, cin, cout, idx in VGG19_CONVS:
        w, b = by_index.get((idx, "weight")), by_index.get((idx, "bias"))
        if w is None or b is None:
            missing.append(f"features.{idx} ({name})")
            continue
        if w.shape != (cout, cin, 3, 3) or b.shape != (cout,):
            raise VGG19WeightsError(
                f"features.{idx} ({name}) has weight {w.shape} and bias {b.shape}; expected "
                f"({cout}, {cin}, 3, 3) and ({cout},): not torchvision's VGG19")
        out[f"{name}.kernel"] = np.ascontiguousarray(w.astype(np.float32).transpose(2, 3, 1, 0))
        out[f"{name}.bias"] = b.astype(np.float32)
    if missing:
        sample = list(state_dict)[:6]
        raise VGG19WeightsError(
            f"not a torchvision VGG19 state dict: missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} (first keys: {sample})")
    return out


def save_vgg19_npz(params: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Write converted params to ``path`` (``.npz`` added if absent). Returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __format__=np.array(NPZ_FORMAT), **{k: np.asarray(v) for k, v in params.items()})
    tmp.replace(path)  # never leave a half-written file under the final name
    return path


def load_vgg19_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``.npz`` written by :func:`save_vgg19_npz` (checks format and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise VGG19WeightsError(
            f"{path}: no such VGG19 weights file; convert torchvision's vgg19-dcbb9e9d.pth with "
            f"`python -m gohd_jax.interop.vgg19_weights vgg19-dcbb9e9d.pth --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise VGG19WeightsError(f"{path}: not a readable .npz ({e})") from None
    fmt = str(data.pop("__format__", ""))
    if fmt != NPZ_FORMAT:
        raise VGG19WeightsError(f"{path}: not a VGG19 weights file of this project (format {fmt!r})")
    for name, cin, cout, _ in VGG19_CONVS:
        k, b = data.get(f"{name}.kernel"), data.get(f"{name}.bias")
        if k is None or b is None or k.shape != (3, 3, cin, cout) or b.shape != (cout,):
            raise VGG19WeightsError(f"{path}: {name} missing or of the wrong shape")
    return data


def load_vgg19(path: str | Path, *, dtype=None) -> VGG19Features:
    """:class:`VGG19Features` with the weights of a converted ``.npz`` (see the module docstring).

    Raises:
      VGG19WeightsError: the file is missing (the message says how to make it) or malformed.
    """
    return VGG19Features(params=load_vgg19_params(path), dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gohd_jax.interop.vgg19_weights",
        description="Convert torchvision's VGG19 weights (vgg19-dcbb9e9d.pth) into the .npz that "
                    "LIA's perceptual loss loads (gohd_jax.interop.vgg19_weights.load_vgg19). "
                    "Reads the .pth without torch and refuses pickles that would run code.")
    parser.add_argument("checkpoint", help="torchvision VGG19 state dict (.pth), or a checkpoint holding one")
    parser.add_argument("--out", default="vgg19.npz", help="output .npz (default: %(default)s)")
    parser.add_argument("--key", default=None,
                        help="entry of the checkpoint holding the state dict, if it is nested "
                             "(e.g. 'state_dict'); default: the file is the state dict")
    args = parser.parse_args(argv)
    try:
        ckpt = load_torch_checkpoint(args.checkpoint)
        sd = state_dict_from(ckpt, key=args.key)
        params = convert_torchvision_vgg19(sd)
        out = save_vgg19_npz(params, args.out)
    except (TorchCheckpointError, VGG19WeightsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.size for v in params.values())
    print(f"wrote {out}: 13 convs (conv1_1 .. conv5_1), {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
