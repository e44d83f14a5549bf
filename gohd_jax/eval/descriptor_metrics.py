"""Motion and expression metrics of ``gohd-eval`` from measured descriptors (``--deep3d --l2cs``).

Each clip's frames are described as ``gohd describe`` describes a video (``data_pipelines.video
.describe.FrameDescriber``: GoHD's official crop of the clip's median face box, Deep3DFaceRecon's
expression [64] and pose [6], L2CS gaze [2], the blink ratio from the 68 landmarks), here on the
face track ``gohd-eval`` already has. From those:

* per clip: ``pose_diversity`` (temporal std of the 6 pose channels, mean over channels),
  ``bas`` (beat alignment of head motion with the audio's onsets, ``gohd_jax.eval.motion``),
  ``blink_rate`` (blinks per minute: runs of frames with the blink ratio under
  ``expression.CLOSED_RATIO``) and ``gaze_std`` (rad);
* over the whole set, against the real videos' descriptors: **E-FID** and **P-FID** (the Frechet
  distance of the per-frame Deep3DFaceRecon expression coefficients [64] and pose [6]; the papers
  that report them, EMO/Hallo/FLOAT, use the same reconstructor) and ``pose_fd`` (the Frechet
  distance of 1 s pose windows, ``motion.pose_window_features``), all float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["describe_frames", "clip_motion", "set_distances"]


def describe_frames(frames: np.ndarray, track, estimators) -> tuple[np.ndarray, np.ndarray]:
    """frames uint8 [T,H,W,3] and their ``clips.FaceTrack`` -> (descriptors [T,72] = exp 64 |
    pose 6 | gaze 2, controls [T,21]), float32."""
    from data_pipelines.video.describe import FrameDescriber, StageTimer
    from data_pipelines.video.faces import crop_and_resize, official_crop_box, to_crop

    h, w = frames.shape[1:3]
    crop = official_crop_box(np.median(track.boxes, axis=0), h, w)
    describer = FrameDescriber(estimators, StageTimer())
    for frame, lm in zip(frames, track.landmarks):
        describer.add(crop_and_resize(frame, crop), to_crop(lm, crop))
    return describer.descriptors(), np.stack(describer.controls).astype(np.float32)


def clip_motion(descriptors: np.ndarray, controls: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """Per-clip motion numbers (module docstring) from descriptors [T,72], controls [T,21] and the
    clip's 16 kHz audio (empty: no ``bas``)."""
    from data_pipelines import audio as audio_features
    from gohd_jax.eval import expression, motion

    pose, gaze = descriptors[:, 64:70], descriptors[:, 70:72]
    t = len(descriptors)
    out = {"pose_diversity": motion.diversity(pose[None]),
           "gaze_std": float(np.asarray(gaze, np.float64).std(0).mean()),
           "blink_rate": len(expression.blink_events(controls[:, 0])) / (t / 25 / 60)}
    if len(audio) and np.any(audio):
        cond = audio_features.frame_cond_100hz(audio_features.mel_100hz(np.asarray(audio, np.float32)), t)
        out["bas"], out["motion_beats"] = motion.beat_alignment(motion.motion_beats(pose), motion.audio_beats(cond))
    return out


def set_distances(generated: list[np.ndarray], real: list[np.ndarray]) -> dict[str, float | None]:
    """E-FID, P-FID and the pose-window FD between the generated clips' descriptors and the real
    ones' (lists of [T,72]); None where a side has fewer than 2 frames (or windows)."""
    from gohd_jax.eval import motion

    out: dict[str, float | None] = {"e_fid": None, "p_fid": None, "pose_fd": None}
    if not generated or not real:
        return out
    g, r = np.concatenate(generated).astype(np.float64), np.concatenate(real).astype(np.float64)
    if len(g) >= 2 and len(r) >= 2:
        out["e_fid"] = motion.frechet_distance(g[:, :64], r[:, :64])
        out["p_fid"] = motion.frechet_distance(g[:, 64:70], r[:, 64:70])

    def windows(clips):
        feats = [motion.pose_window_features(c[None, :, 64:70]) for c in clips if len(c) >= motion.WINDOW]
        return np.concatenate(feats) if feats else np.zeros((0, 30))

    gw, rw = windows(generated), windows(real)
    if len(gw) >= 2 and len(rw) >= 2:
        out["pose_fd"] = motion.frechet_distance(gw, rw)
    return out
