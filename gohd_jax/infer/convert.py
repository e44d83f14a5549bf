"""``gohd convert-official``: the released GoHD checkpoints -> our bundle (``infer.bundle``).

Containers (dossier section 1): ``FaceAnimator_GoHD.pt['gen_pose']`` (Generator_Semantic, the
release's SFT wiring), ``audio2pose.pt['model']`` and ``audio2gaze.pt['model']`` (LDA denoisers,
6-d and 2-d), ``audio2exp.pth['state_dict_G']`` (SimpleWrapperV2 under DataParallel; a
TwoStageGenerator state dict is recognised too). Files are read by the restricted unpickler of
``interop.torch_checkpoint``: no torch needed, and a pickle that names anything but the
tensor-rebuilding globals is refused before it runs. Sampling as the release does: 150-frame
windows, ``alignment="release"``, the release's 80 Hz mel condition; expression windows of 30.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["convert_official", "ConversionError", "official_bundle"]


class ConversionError(ValueError):
    """An official checkpoint that is missing, unreadable or of the wrong kind."""


def _state_dict(path, key: str, what: str):
    from gohd_jax.interop.torch_checkpoint import TorchCheckpointError, load_torch_checkpoint, state_dict_from

    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: no such file ({what})")
    try:
        return state_dict_from(load_torch_checkpoint(p), key)
    except TorchCheckpointError as e:
        raise ConversionError(f"{p} ({what}): {' '.join(str(e).split())[:300]}") from None


def _small_models(pose_sd, gaze_sd, exp_sd, names):
    from gohd_jax.interop import expression_weights, motion_weights

    pose = _convert(motion_weights.denoiser_from_state_dict, pose_sd, names[1])
    gaze = _convert(motion_weights.denoiser_from_state_dict, gaze_sd, names[2])
    for model, want, what in ((pose, 6, names[1]), (gaze, 2, names[2])):
        if model.cfg.in_channels != want:
            raise ConversionError(f"{what}: a {model.cfg.in_channels}-d motion model; this one must be the "
                                  f"{want}-d {'pose' if want == 6 else 'gaze'} model")
    sd = expression_weights.strip_prefix(exp_sd)
    fn = (expression_weights.two_stage_from_state_dict if any(k.startswith("simplewarpper.") for k in sd)
          else expression_weights.frame_expression_from_state_dict)
    return pose, gaze, _convert(fn, sd, names[3])


def _convert(fn, sd, what):
    try:
        return fn(sd)
    except (KeyError, ValueError) as e:
        raise ConversionError(f"{what}: not the expected checkpoint ({' '.join(str(e).split())[:200]})") from None


def _bundle(anim, pose, gaze, exp):
    from gohd_jax.infer.bundle import Bundle, MotionSpec

    spec = MotionSpec(window=150, data_scale=1.0, alignment="release", condition="release")
    return Bundle(anim, pose, gaze, exp, pose_spec=spec, gaze_spec=spec, expression_window=30, origin="official")


def official_bundle(animator_sd, pose_sd, gaze_sd, exp_sd, *, names=("animator", "pose", "gaze", "exp")):
    """Four official state dicts -> ``Bundle`` (raises ConversionError on a wrong kind)."""
    from gohd_jax.interop import animator_weights

    pose, gaze, exp = _small_models(pose_sd, gaze_sd, exp_sd, names)
    anim = _convert(animator_weights.animator_from_state_dict, animator_sd, names[0])
    return _bundle(anim, pose, gaze, exp)


def convert_official(*, animator, pose, gaze, exp, out) -> Path:
    """Reads and checks the three small checkpoints first, then the 200 MB animator."""
    from gohd_jax.infer.bundle import save_bundle
    from gohd_jax.interop import animator_weights

    names = (f"--animator {animator}", f"--pose {pose}", f"--gaze {gaze}", f"--exp {exp}")
    small = _small_models(_state_dict(pose, "model", names[1]), _state_dict(gaze, "model", names[2]),
                          _state_dict(exp, "state_dict_G", names[3]), names)
    anim = _convert(animator_weights.animator_from_state_dict, _state_dict(animator, "gen_pose", names[0]),
                    names[0])
    return save_bundle(_bundle(anim, *small), out)
