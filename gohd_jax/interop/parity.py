"""``gohd-parity``: checks our port against oracle folders made from the official PyTorch code.

An oracle folder (format: ``reference/README.md`` of the shared folder) holds

* ``io.npz``: the inputs, outputs and intermediates of one official module (always);
* ``manifest.json``: the module's state dict as a rule that rebuilds it (modules with weights);
  the weights are rebuilt with the manifest's ``seed`` (1 when absent);
* ``io_fp64.npz``: float64 outputs of the same module, where torch's own float32 rounding is large.

Which oracle a folder holds is read from its content (the manifest's ``module`` field, or for a
weight-less folder the names in ``io.npz``), never from the folder's name, so folders made with
other seeds or other inputs are checked the same way.

Each oracle kind registers a *checker* ``fn(io, state_dict, fp64) -> outputs``: it reads the inputs
from ``io`` (a dict of arrays), runs our port, and returns its outputs keyed like ``io.npz`` (or a
``PortOutputs`` that adds float64 outputs to compare with ``io_fp64.npz``). Every ``io.npz`` array
that is not one of the kind's declared inputs is an expected output; each is compared with the
rule of ``rule_for`` and printed as one JSON line on stdout:

    {"oracle": ..., "array": ..., "shape": [...], "max_rel": ..., "mean_rel": ..., "tol": ...,
     "pass": ..., "ref": "io.npz", "rule": ..., "dir": ...}

with ``max_rel = max|port - ref| / max|ref|`` over the whole array (absolute error when the
reference is all zeros). Non-finite errors are written as null and fail. A summary goes to stderr.
Exit status: 0 all pass, 1 some array fails, 2 usage error / bad folder / kind not yet ported
(the highest status over all folders).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gohd_jax.interop import oracle_weights

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
PROG = "gohd-parity"


# --------------------------------------------------------------------------------------------
# Pass rules
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """A pass rule over relative errors |port - ref| / max|ref| (None: not checked)."""
    name: str
    max_rel: float
    mean_rel: float | None = None
    p999_rel: float | None = None
    exact: bool = False


FLOAT32 = Rule("float32", 1e-4)
# Warped 128^2 / 256^2 images: torch's own float32 result moves by up to 1e-2 against float64.
WARPED_FLOAT32 = Rule("warped-image float32", 2e-2, mean_rel=1e-5, p999_rel=1e-3)
FLOAT64 = Rule("float64", 1e-8)
EXACT = Rule("exact", 0.0, exact=True)

# (kind, array) -> rule, for the float32 comparison with io.npz. Everything else: FLOAT32, and
# EXACT for integer arrays. Float64 outputs (compared with io_fp64.npz) always use FLOAT64.
RULES: dict[tuple[str, str], Rule] = {
    ("animator", "rgb_128"): WARPED_FLOAT32,
    ("animator", "rgb_256"): WARPED_FLOAT32,
    ("lia_generator", "rgb_128"): WARPED_FLOAT32,
    ("lia_generator", "rgb_256"): WARPED_FLOAT32,
    ("lia_generator", "rgb_256_relative"): WARPED_FLOAT32,
}


def rule_for(kind: str, array: str, ref: np.ndarray, fp64: bool = False) -> Rule:
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        return EXACT
    if fp64:
        return FLOAT64
    return RULES.get((kind, array), FLOAT32)


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def compare(port: Any, ref: np.ndarray, rule: Rule) -> dict[str, Any]:
    """Errors of ``port`` against ``ref`` and whether ``rule`` passes (a dict for the JSON line)."""
    out: dict[str, Any] = {"shape": list(ref.shape)}
    port = np.asarray(port)
    if port.shape != ref.shape:
        out.update(max_rel=None, mean_rel=None, tol=rule.max_rel, rule=rule.name, error=(
            f"shape {list(port.shape)} differs from the reference's {list(ref.shape)}"))
        out["pass"] = False
        return out
    if rule.exact:
        equal = bool(np.array_equal(port, ref))
    if ref.size == 0:
        max_rel = mean_rel = p999 = 0.0
    else:
        try:
            diff = np.abs(port.astype(np.float64) - ref.astype(np.float64))
        except (TypeError, ValueError):
            out.update(max_rel=None, mean_rel=None, tol=rule.max_rel, rule=rule.name,
                       error=f"port output has non-numeric dtype {port.dtype}")
            out["pass"] = False
            return out
        denom = float(np.abs(ref.astype(np.float64)).max())
        denom = denom if denom > 0 else 1.0  # all-zero reference: absolute error
        max_rel = float(diff.max()) / denom if not np.isnan(diff).any() else float("nan")
        mean_rel = float(diff.mean()) / denom
        p999 = float(np.percentile(diff, 99.9)) / denom if rule.p999_rel is not None else None
    ok = bool(max_rel <= rule.max_rel)
    if rule.mean_rel is not None:
        ok = ok and bool(mean_rel <= rule.mean_rel)
    if rule.p999_rel is not None:
        ok = ok and bool(p999 is not None and p999 <= rule.p999_rel)
        out["p999_rel"] = _num(p999) if p999 is not None else None
    if rule.exact:
        ok = equal
    out.update(max_rel=_num(max_rel), mean_rel=_num(mean_rel), tol=rule.max_rel, rule=rule.name)
    out["pass"] = ok
    return out


# --------------------------------------------------------------------------------------------
# Registry of oracle kinds
# --------------------------------------------------------------------------------------------

@dataclass
class PortOutputs:
    """What a checker may return: float32 outputs (vs io.npz) and float64 ones (vs io_fp64.npz)."""
    float32: dict[str, np.ndarray] = field(default_factory=dict)
    float64: dict[str, np.ndarray] = field(default_factory=dict)


Checker = Callable[[Mapping[str, np.ndarray], "Mapping[str, np.ndarray] | None",
                    "Mapping[str, np.ndarray] | None"], "dict[str, np.ndarray] | PortOutputs"]


@dataclass
class OracleKind:
    name: str
    description: str
    inputs: frozenset[str]  # io.npz arrays the checker reads; every other array is an output
    needs_weights: bool
    checker: Checker | None = None


REGISTRY: dict[str, OracleKind] = {}


def declare(name: str, description: str, inputs: tuple[str, ...] = (),
            needs_weights: bool = True) -> None:
    """Makes a kind known (recognised) before its port exists."""
    REGISTRY[name] = OracleKind(name, description, frozenset(inputs), needs_weights)


def register(name: str) -> Callable[[Checker], Checker]:
    """Decorator: the port's checker for an already declared kind."""
    def wrap(fn: Checker) -> Checker:
        if name not in REGISTRY:
            raise KeyError(f"unknown oracle kind {name!r}; declare() it first")
        REGISTRY[name].checker = fn
        return fn
    return wrap


declare("animator", "networks/generator.py: Generator_Semantic (GoHD face animator)",
        ("img_source", "semantics", "crop_boxes"))
declare("lia_generator", "networks/generator.py: Generator (plain LIA)",
        ("img_source", "img_drive", "img_start"))
_DIFFUSION_INPUTS = ("x_t", "local_cond", "global_cond", "diffusion_step", "diffusion_step_int",
                     "diffusion_embedding_table", "sampler_local_cond", "sampler_global_cond",
                     "sampler_noise_init", "sampler_noise_steps", "sampler_beta")
declare("pose_diffusion", "networks/models/nn.py: LDA('tisa') + diff_synthesize_pose (pose)",
        _DIFFUSION_INPUTS + ("sampler_pose0",))
declare("gaze_diffusion", "networks/models/nn.py: LDA('tisa') + diff_synthesize_pose (gaze)",
        _DIFFUSION_INPUTS + ("sampler_gaze0",))
declare("audio2exp", "networks/audio2exp.py: SimpleWrapperV2 via get_exp_from_audio",
        ("audio", "exp0"))
declare("audio2exp_twostage", "networks/audio2exp.py: TwoStageGenerator (LSTM stage)",
        ("audio", "exp0", "zb", "bc", "noise_z"))
declare("l2cs", "networks/L2CS.py: L2CS gaze estimator + get_gaze_params",
        ("img_input", "face_boxes", "decode_test_logits_first", "decode_test_logits_second"))
declare("deep3d_recon", "Deep3DFaceRecon_pytorch ReconNetWrapper (coefficient regressor)",
        ("img_input",))
# The papers' metric networks (gohd-eval).
declare("syncnet", "syncnet_python SyncNetModel.S + SyncNetInstance.evaluate (LSE-C/D)",
        ("aud_input", "lip_input", "window_index", "lse_video", "lse_audio", "lse_clip_start_frame"))
declare("fid_inception", "pytorch-fid InceptionV3 (FID features) + calculate_frechet_distance",
        ("img_input", "fd_act1", "fd_act2", "fd_small_act1", "fd_small_act2"))
declare("arcface", "insightface arcface_torch iresnet (CSIM embeddings)", ("img_input",))
declare("audio_features", "inference.py read_audio + audio.py + AudioConfig.py (no weights)",
        ("wav_16k",), needs_weights=False)


@register("audio_features")
def _check_audio_features(io, state_dict, fp64):
    from data_pipelines import audio

    wav = np.asarray(io["wav_16k"])
    if wav.ndim != 1:
        raise _InputError(f"wav_16k must be a 1-D waveform, got shape {list(wav.shape)}")
    return audio.audio_features(wav)


def _lazy_checker(module: str, function: str) -> Checker:
    """A checker that imports ``gohd_jax.interop.<module>`` only when its kind is checked
    (the ports pull in JAX models; the audio check must not pay for them)."""
    def check(io, state_dict, fp64):
        import importlib

        return getattr(importlib.import_module(f"gohd_jax.interop.{module}"), function)(io, state_dict, fp64)
    return check


# Ported kinds whose checkers live next to their weight converters.
for _kind, _module, _function in (
        ("animator", "animator_weights", "parity_animator"),
        ("lia_generator", "animator_weights", "parity_lia_generator"),
        ("pose_diffusion", "motion_weights", "parity_pose_diffusion"),
        ("gaze_diffusion", "motion_weights", "parity_gaze_diffusion"),
        ("audio2exp", "expression_weights", "parity_audio2exp"),
        ("audio2exp_twostage", "expression_weights", "parity_audio2exp_twostage"),
        ("deep3d_recon", "estimator_weights", "parity_deep3d_recon"),
        ("l2cs", "estimator_weights", "parity_l2cs"),
        ("syncnet", "syncnet_v2_weights", "parity_syncnet"),
        ("fid_inception", "inception_weights", "parity_fid_inception"),
        ("arcface", "arcface_weights", "parity_arcface")):
    register(_kind)(_lazy_checker(_module, _function))


# Manifest `module` (its first word) -> kind. LDA serves two kinds: see _detect_kind.
_MODULES = {
    "networks.generator.Generator_Semantic": "animator",
    "networks.generator.Generator": "lia_generator",
    "networks.models.nn.LDA": "pose_or_gaze_diffusion",
    "networks.audio2exp.SimpleWrapperV2": "audio2exp",
    "networks.audio2exp.TwoStageGenerator": "audio2exp_twostage",
    "networks.L2CS.L2CS": "l2cs",
    "Deep3DFaceRecon_pytorch.models.networks.L2CS": "l2cs",
    "Deep3DFaceRecon_pytorch.models.networks.ReconNetWrapper": "deep3d_recon",
    "SyncNetModel.py:": "syncnet",
    "pytorch_fid.inception.fid_inception_v3": "fid_inception",
    "recognition/arcface_torch/backbones/iresnet.py:": "arcface",
}
# Weight-less kinds, recognised by the io.npz names they must hold.
_WEIGHTLESS_SIGNATURES = {"audio_features": {"wav_16k"}}


class _InputError(Exception):
    """A folder that cannot be checked (exit 2), with a one-line message."""


def _detect_kind(manifest: Mapping[str, Any] | None, io_keys: set[str]) -> str:
    if manifest is not None:
        module = str(manifest.get("module", "")).strip()
        head = module.split()[0].split("(")[0] if module else ""
        kind = _MODULES.get(head)
        if kind == "pose_or_gaze_diffusion":
            if "sampler_pose0" in io_keys:
                return "pose_diffusion"
            if "sampler_gaze0" in io_keys:
                return "gaze_diffusion"
            channels = [t["shape"][1] for t in manifest["tensors"]
                        if t["name"] == "input_projection.conv1d.weight"]
            if channels == [6]:
                return "pose_diffusion"
            if channels == [2]:
                return "gaze_diffusion"
            raise _InputError(f"manifest module {module!r} is the diffusion model, but neither "
                              f"its io.npz nor its input projection says pose (6) or gaze (2)")
        if kind is None:
            raise _InputError(f"manifest module {module or '(none)'!r} is not a known oracle; "
                              f"known: {', '.join(sorted(_MODULES))}")
        return kind
    for kind, needed in _WEIGHTLESS_SIGNATURES.items():
        if needed <= io_keys:
            return kind
    for kind, spec in REGISTRY.items():
        if spec.needs_weights and spec.inputs and spec.inputs <= io_keys:
            raise _InputError(f"io.npz looks like the {kind!r} oracle but the folder has no "
                              f"manifest.json to rebuild its weights from")
    raise _InputError("no manifest.json, and io.npz matches no weight-less oracle (an "
                      "audio_features oracle needs 'wav_16k'); is this an oracle folder?")


# --------------------------------------------------------------------------------------------
# Checking one folder
# --------------------------------------------------------------------------------------------

def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _InputError(f"{path.name} is not a readable .npz file ({' '.join(str(exc).split())})"
                          ) from None


def check_folder(ref_dir: str | Path, *, out=None, err=None, show_traceback: bool = False) -> int:
    """Checks one oracle folder; prints the JSON lines and a summary; returns its exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    ref = Path(ref_dir)

    def fail_usage(msg: str) -> int:
        print(f"{PROG}: {ref}: {msg}", file=err)
        return EXIT_USAGE

    if not ref.exists():
        return fail_usage("no such folder; pass an oracle folder such as <shared>/reference/"
                          "audio_features")
    if not ref.is_dir():
        return fail_usage("is a file, not an oracle folder (pass the folder that holds io.npz)")
    io_path = ref / "io.npz"
    if not io_path.is_file():
        return fail_usage("has no io.npz, so it is not an oracle folder (see reference/README.md)")
    try:
        io = _load_npz(io_path)
        manifest = None
        if (ref / "manifest.json").exists():
            try:
                manifest = oracle_weights.load_manifest(ref / "manifest.json")
            except oracle_weights.ManifestError as exc:
                raise _InputError(f"malformed manifest: {exc}") from None
        kind = _detect_kind(manifest, set(io))
        spec = REGISTRY[kind]
        if spec.checker is None:
            print(f"{PROG}: {ref}: recognised as the {kind!r} oracle ({spec.description}), but its "
                  f"port is not implemented yet; nothing was checked", file=err)
            return EXIT_USAGE
        missing = sorted(spec.inputs - set(io))
        if missing:
            raise _InputError(f"io.npz lacks the input(s) {', '.join(missing)} of the {kind!r} "
                              f"oracle")
        if spec.needs_weights and manifest is None:
            raise _InputError(f"the {kind!r} oracle needs manifest.json to rebuild its weights")
        state = None
        if manifest is not None:
            state = oracle_weights.make_state_dict(manifest, oracle_weights.manifest_seed(manifest))
        fp64 = _load_npz(ref / "io_fp64.npz") if (ref / "io_fp64.npz").is_file() else None
    except _InputError as exc:
        return fail_usage(str(exc))

    try:
        result = spec.checker(io, state, fp64)
    except _InputError as exc:
        return fail_usage(str(exc))
    except Exception as exc:  # a bug in the port: report it as a failure, in one line
        if show_traceback:
            traceback.print_exc(file=err)
        print(f"{PROG}: {ref}: the {kind!r} port raised {type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:300]} (rerun with --traceback for details)", file=err)
        return EXIT_FAIL
    outputs = result if isinstance(result, PortOutputs) else PortOutputs(float32=dict(result))

    # reference/README.md: where io_fp64.npz holds an array (torch's own float32 rounding exceeds
    # 1e-4 there), the float64 comparison decides it; the float32 figure is only reported.
    by_fp64 = set(outputs.float64) & set(fp64 or {})
    lines = []
    for name in io:
        if name in spec.inputs:
            continue
        ref_arr = io[name]
        rule = rule_for(kind, name, ref_arr)
        if name in outputs.float32:
            line = compare(outputs.float32[name], ref_arr, rule)
        else:
            line = {"shape": list(ref_arr.shape), "max_rel": None, "mean_rel": None,
                    "tol": rule.max_rel, "rule": rule.name, "pass": False,
                    "error": "the port does not produce this array"}
        if name in by_fp64:
            line["decides"] = False
            line["note"] = "reported only: the float64 comparison (io_fp64.npz) decides this array"
        lines.append(("io.npz", name, line))
    for name, arr in outputs.float64.items():
        if fp64 is None or name not in fp64:
            print(f"{PROG}: {ref}: note: float64 output {name!r} has no reference in io_fp64.npz; "
                  f"not compared", file=err)
            continue
        lines.append(("io_fp64.npz", name, compare(arr, fp64[name], rule_for(kind, name,
                                                                               fp64[name], True))))

    failed = []
    for source, name, line in lines:
        record = {"oracle": kind, "array": name, **line, "ref": source, "dir": str(ref)}
        ordered = {k: record[k] for k in ("oracle", "array", "shape", "max_rel", "mean_rel",
                                          "tol", "pass")}
        ordered.update({k: v for k, v in record.items() if k not in ordered})
        print(json.dumps(ordered), file=out)
        if not line["pass"] and line.get("decides", True):
            failed.append(name if source == "io.npz" else f"{name} (float64)")
    out.flush()
    seed = oracle_weights.manifest_seed(manifest) if manifest is not None else None
    what = f"{kind}" + (f", weight seed {seed}" if seed is not None else "")
    if failed:
        print(f"{PROG}: {ref} ({what}): FAIL: {len(failed)} of {len(lines)} arrays fail: "
              f"{', '.join(failed)}", file=err)
        return EXIT_FAIL
    if not lines:
        print(f"{PROG}: {ref} ({what}): io.npz holds no output arrays to compare", file=err)
        return EXIT_USAGE
    print(f"{PROG}: {ref} ({what}): pass: all {len(lines)} arrays within tolerance", file=err)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_EPILOG = """\
what it does:
  For each REF_DIR (a folder made from the official PyTorch code: io.npz, and manifest.json
  when the module has weights), it works out which official module the folder holds, rebuilds
  the weights from manifest.json with the manifest's own seed, runs our port on the inputs
  stored in io.npz, and compares every other array of io.npz with what the port returns.

output:
  stdout: one JSON line per compared array, e.g.
    {"oracle": "audio_features", "array": "mel_wav2lip", "shape": [849, 80],
     "max_rel": 0.0, "mean_rel": 0.0, "tol": 0.0001, "pass": true, ...}
  max_rel = max|port - ref| / max|ref| over the whole array. Pass: max_rel <= 1e-4 (float32);
  integer arrays must be equal; the warped 128/256 images of animator and lia_generator use the
  looser image rule of reference/README.md, or float64 against io_fp64.npz at 1e-8.
  stderr: one summary line per folder.

exit status:
  0 every array passes; 1 some array fails (or the port crashed);
  2 bad usage, a folder that is not an oracle, or an oracle whose port is not written yet.

example:
  gohd-parity "$GOHD_SHARED/reference/audio_features"
"""


def _list_kinds() -> str:
    rows = [f"  {name:<20} {'ported' if s.checker else 'not yet ported':<15} {s.description}"
            for name, s in REGISTRY.items()]
    return "oracle kinds:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Check the JAX port of GoHD against reference oracle folders "
                    "(official PyTorch outputs with reproducible random weights).")
    p.add_argument("ref_dirs", nargs="*", metavar="REF_DIR",
                   help="oracle folder(s), e.g. <shared>/reference/audio_features")
    p.add_argument("--list-kinds", action="store_true",
                   help="list the oracle kinds this tool recognises and which are ported, "
                        "then exit")
    p.add_argument("--traceback", action="store_true",
                   help="print the full traceback when a port raises (for debugging the port)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and hasattr(signal, "SIGPIPE"):  # `gohd-parity DIR | head` exits quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.list_kinds:
        print(_list_kinds())
        return EXIT_OK
    if not args.ref_dirs:
        print(f"{PROG}: give at least one oracle folder, e.g. "
              f"{PROG} <shared>/reference/audio_features (see --help)", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for ref in args.ref_dirs:
        status = max(status, check_folder(ref, show_traceback=args.traceback))
    if len(args.ref_dirs) > 1:
        verdict = {EXIT_OK: "all pass", EXIT_FAIL: "some arrays fail",
                   EXIT_USAGE: "some folders could not be checked"}[status]
        print(f"{PROG}: {len(args.ref_dirs)} folders: {verdict}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
