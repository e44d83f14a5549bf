"""The four models ``gohd animate`` runs, and where they come from.

A ``Bundle`` holds the animator (``SemanticAnimator``), the pose and gaze denoisers
(``MotionDenoiser``) with how to sample them, and the expression model (stage 1, or the
two-stage model whose stage 2 generates blink and brow controls). ``load_bundle(DIR)`` reads:

* a converted bundle (``DIR/bundle.json`` + one ``.npz`` of parameters per model), written by
  ``gohd convert-official`` from the official checkpoints or by ``save_bundle``; or
* a folder of training runs from our trainer (Orbax checkpoints), as ``make demo`` leaves them:
  ``animator/``, ``pose/``, ``gaze/`` and ``stage2/`` (or ``stage1/``, or ``expression/``).

Every model is checked for its kind: a pose run given as the animator is a clear error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

__all__ = ["Bundle", "MotionSpec", "load_bundle", "save_bundle", "random_bundle", "BundleError", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "gohd-bundle-v1"


class BundleError(ValueError):
    """A checkpoint folder that is not (or not entirely) a GoHD model bundle."""


@dataclasses.dataclass(frozen=True)
class MotionSpec:
    """How a motion denoiser is sampled: ``window`` frames per window, motion x ``data_scale``
    inside the model, ``alignment`` "release" (official weights) or "training" (our trainer),
    ``condition`` "release" (the 80 Hz mel sliced as the release does) or "mel100"."""
    window: int = 150
    data_scale: float = 1.0
    alignment: str = "release"
    condition: str = "release"


@dataclasses.dataclass
class Bundle:
    animator: Any
    pose: Any
    gaze: Any
    expression: Any
    pose_spec: MotionSpec = MotionSpec()
    gaze_spec: MotionSpec = MotionSpec()
    expression_window: int = 30
    origin: str = "unknown"

    @property
    def image_size(self) -> int:
        return int(self.animator.config.size)


# ------------------------------------------------------------------------------- serialisation

def _config_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _config_from(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _tuplify(v) for k, v in d.items() if k in names})


def _classes():
    from gohd_jax.models.animator import AnimatorConfig, SemanticAnimator
    from gohd_jax.models.expression import ExpressionConfig, FrameExpression, TwoStageExpression
    from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig

    return {"SemanticAnimator": (SemanticAnimator, AnimatorConfig),
            "MotionDenoiser": (MotionDenoiser, MotionDenoiserConfig),
            "FrameExpression": (FrameExpression, ExpressionConfig),
            "TwoStageExpression": (TwoStageExpression, ExpressionConfig)}


def _flat(model) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
            for path, v in nnx.to_flat_state(nnx.state(model))}


def save_bundle(bundle: Bundle, out: str | Path) -> Path:
    """Writes ``out/bundle.json`` and ``out/<role>.npz`` for the four models."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": BUNDLE_FORMAT, "origin": bundle.origin, "models": {},
                            "pose_spec": dataclasses.asdict(bundle.pose_spec),
                            "gaze_spec": dataclasses.asdict(bundle.gaze_spec),
                            "expression_window": bundle.expression_window}
    for role in ("animator", "pose", "gaze", "expression"):
        model = getattr(bundle, role)
        cfg = model.config if role == "animator" else model.cfg
        meta["models"][role] = {"class": type(model).__name__, "config": _config_dict(cfg)}
        np.savez(out / f"{role}.npz", **_flat(model))
    (out / "bundle.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out


def _load_converted(root: Path) -> Bundle:
    try:
        meta = json.loads((root / "bundle.json").read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{root}/bundle.json is not valid JSON ({e})") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{root}/bundle.json is not a {BUNDLE_FORMAT} bundle")
    classes, models = _classes(), {}
    allowed = {"animator": ("SemanticAnimator",), "pose": ("MotionDenoiser",), "gaze": ("MotionDenoiser",),
               "expression": ("FrameExpression", "TwoStageExpression")}
    for role in ("animator", "pose", "gaze", "expression"):
        entry = meta.get("models", {}).get(role)
        if entry is None or entry.get("class") not in allowed[role]:
            got = None if entry is None else entry.get("class")
            raise BundleError(f"{root}: the {role} must be a {' or '.join(allowed[role])}, the bundle has {got}")
        cls, cfg_cls = classes[entry["class"]]
        cfg = _config_from(cfg_cls, entry["config"])
        model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
        path = root / f"{role}.npz"
        if not path.is_file():
            raise BundleError(f"{root}: {path.name} is missing")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        flat = nnx.to_flat_state(nnx.state(model))
        missing = [k for k in ("/".join(map(str, p)) for p, _ in flat) if k not in arrays]
        if missing:
            raise BundleError(f"{path}: lacks {missing[:4]} (not this bundle's {entry['class']})")
        for p, var in flat:
            arr = arrays["/".join(map(str, p))]
            if tuple(arr.shape) != tuple(var.shape):
                raise BundleError(f"{path}: {'/'.join(map(str, p))} has shape {arr.shape}, expected {var.shape}")
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, _nest(arrays))
        nnx.update(model, state)
        models[role] = model
    _check_motion(models, root)
    return Bundle(**models, pose_spec=MotionSpec(**meta["pose_spec"]), gaze_spec=MotionSpec(**meta["gaze_spec"]),
                  expression_window=int(meta["expression_window"]), origin=meta.get("origin", "converted"))


def _nest(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return out


# ------------------------------------------------------------------------------- trainer runs

_RUNS = {"animator": (("animator",), "animator", "generator"),
         "pose": (("pose",), "motion_diffusion", "denoiser"),
         "gaze": (("gaze",), "motion_diffusion", "denoiser"),
         "expression": (("stage2", "stage1", "expression"), None, "expression")}


def _load_runs(root: Path) -> Bundle:
    from gohd_jax.train.restore import RunNotFound, load_models

    found, models, configs = {}, {}, {}
    for role, (names, task, model_name) in _RUNS.items():
        run = next((root / n for n in names if (root / n / "checkpoints").is_dir()), None)
        if run is None:
            raise BundleError(f"{root}: no {role} model: expected a training run in "
                              f"{' or '.join(f'{root}/{n}' for n in names)} (or a converted bundle's "
                              f"bundle.json, from gohd convert-official)")
        try:
            loaded, cfg = load_models(run)
        except RunNotFound as e:
            raise BundleError(str(e)) from None
        if task is not None and cfg.task_name != task:
            raise BundleError(f"{run} is a {cfg.task_name!r} run, but the {role} must be a {task!r} run")
        if role == "expression" and not cfg.task_name.startswith("expression_stage"):
            raise BundleError(f"{run} is a {cfg.task_name!r} run, not an expression stage")
        if model_name not in loaded:
            raise BundleError(f"{run} ({cfg.task_name}) has no {model_name!r} model")
        models[role], configs[role], found[role] = loaded[model_name], cfg, run
    _check_motion(models, root)

    def spec(role):
        c = configs[role]
        return MotionSpec(window=int(c.data.window), data_scale=float(c.task.data_scale),
                          alignment="training", condition=str(c.data.condition))

    ew = int(configs["expression"].data.get("window", 30)) if "data" in configs["expression"] else 30
    return Bundle(**models, pose_spec=spec("pose"), gaze_spec=spec("gaze"), expression_window=ew,
                  origin="trainer")


def _check_motion(models: dict, root: Path) -> None:
    for role, want in (("pose", 6), ("gaze", 2)):
        got = models[role].cfg.in_channels
        if got != want:
            raise BundleError(f"{root}: the {role} denoiser models {got}-d motion; it must be {want}-d "
                              f"(pose and gaze swapped?)")


def random_bundle(size: str = "tiny", *, window: int = 50, seed: int = 0) -> Bundle:
    """Random-init models for tests and benchmarks: ``"tiny"`` (64 px animator, 3-layer denoisers
    in ``window``-frame windows, our trainer's alignment, the two-stage expression model) or
    ``"official"`` (the released architectures and sampling settings)."""
    from gohd_jax.models.animator import AnimatorConfig, SemanticAnimator
    from gohd_jax.models.expression import ExpressionConfig, FrameExpression, TwoStageExpression
    from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig

    r = nnx.Rngs(seed)
    if size == "tiny":
        motion = [MotionDenoiser(dataclasses.replace(MotionDenoiserConfig.tiny(c, c), local_dim=320), rngs=r)
                  for c in (6, 2)]
        spec = MotionSpec(window=window, data_scale=1.0, alignment="training", condition="mel100")
        return Bundle(SemanticAnimator(AnimatorConfig.tiny(), rngs=r), *motion,
                      TwoStageExpression(ExpressionConfig.tiny(21), rngs=r), pose_spec=spec, gaze_spec=spec,
                      origin="random")
    if size != "official":
        raise ValueError(f"size must be 'tiny' or 'official', got {size!r}")
    spec = MotionSpec(window=150, data_scale=1.0, alignment="release", condition="release")
    return Bundle(SemanticAnimator(AnimatorConfig.official(), rngs=r),
                  MotionDenoiser(MotionDenoiserConfig.pose(), rngs=r),
                  MotionDenoiser(MotionDenoiserConfig.gaze(), rngs=r),
                  FrameExpression(ExpressionConfig.released(), rngs=r),
                  pose_spec=spec, gaze_spec=spec, origin="random")


def load_bundle(path: str | Path) -> Bundle:
    """A converted bundle (``bundle.json``) or a folder of training runs -> ``Bundle``."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder (give a converted bundle or a folder of training runs)")
    if (root / "bundle.json").is_file():
        return _load_converted(root)
    return _load_runs(root)
