"""Head-motion metrics: rhythm (beat alignment), Frechet distance of pose windows, diversity.

All inputs are host numpy at 25 fps. Pose is [T,6] or [N,T,6] (3 Euler angles in radians, then
3 translations); only its first 3 (rotation) channels enter the rhythm score.

Definitions (pinned; every number in README/BENCHMARKS uses exactly these):

* **Audio beats** (``audio_beats``): from the motion condition [T,320] (4 rows of the 100 Hz
  log-mel per frame, 80 bins each): energy e_r = mean over bins of row r (100 Hz); onset
  strength o_r = max(0, e_r - e_{r-1}); per video frame the max over its 4 rows; beats are the
  peaks of that [T] curve (``scipy.signal.find_peaks``) higher than mean + 0.5 std and at least
  3 frames (0.12 s) apart.
* **Motion beats** (``motion_beats``): head angular speed v_t = |r_{t+1} - r_{t-1}| / 2
  (rotation channels, rad/frame), Gaussian-smoothed with sigma 1 frame; beats are its local
  minima (peaks of -v) with prominence >= 0.1 x the clip's mean speed. A still head has none.
* **Beat alignment** (``beat_alignment``, BAS as Bailando/AIST++ define it, at our frame rate):
  (1/|M|) sum over motion beats m of exp(-min_a (m - a)^2 / (2 sigma^2)), nearest audio beat a,
  sigma = 3 frames (0.12 s); 0 when there are no motion beats (or no audio beats). Clip scores are
  averaged with weights |M| (every motion beat in the set counts once).
* **Frechet distance** (``frechet_distance`` of ``pose_window_features``): windows of 25 frames
  (1 s) with stride 5; feature = pose at offsets 5, 10, 15, 20, 24 minus pose at offset 0, all 6
  channels (30-d); FD = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).
* **Diversity** (``diversity``): the temporal std of each pose channel, averaged over channels
  and clips (rad / translation units).
* **Gaze as a distribution** (``gaze_report``): the synthetic gaze does not depend on the audio
  (fixations, most near the camera), so per-frame error cannot rank a faithful sampler above a
  constant; what it must match is the distribution. Temporal std as ``diversity`` (rad); the
  Frechet distance of ``gaze_window_features`` (the same 25-frame windows, stride 5, the gaze at
  offsets 0, 5, 10, 15, 20, 24, absolute: 12-d, so both where the eyes rest and how they move
  count) to the ground truth's; and the mean absolute error (rad), for reference.

Baselines: ``still_baseline`` (pose0 held for the whole clip) and ``random_walk_baseline``
(pose0 + cumulative Gaussian steps whose per-channel std matches the ground truth's frame-to-frame
differences); for gaze, ``still_baseline`` (hold gaze0) and looking into the camera (all zeros).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, ndimage, signal

__all__ = ["SIGMA_FRAMES", "audio_beats", "motion_beats", "beat_alignment", "beat_alignment_set",
           "pose_window_features", "frechet_distance", "diversity", "still_baseline",
           "random_walk_baseline", "motion_report", "gaze_window_features", "gaze_report",
           "format_gaze_report"]

SIGMA_FRAMES = 3.0
WINDOW, STRIDE, OFFSETS = 25, 5, (5, 10, 15, 20, 24)


def audio_beats(cond: np.ndarray) -> np.ndarray:
    """Frame indices of mel-energy onsets, from the motion condition [T,320]."""
    cond = np.asarray(cond, np.float64)
    t = cond.shape[0]
    energy = cond.reshape(t * 4, 80).mean(axis=1)
    onset = np.maximum(0.0, np.diff(energy, prepend=energy[0])).reshape(t, 4).max(axis=1)
    peaks, _ = signal.find_peaks(onset, height=onset.mean() + 0.5 * onset.std(), distance=3)
    return peaks


def motion_beats(pose: np.ndarray) -> np.ndarray:
    """Frame indices of local minima of head angular speed, from pose [T,>=3]."""
    rot = np.asarray(pose, np.float64)[:, :3]
    if len(rot) < 3:
        return np.zeros((0,), np.int64)
    v = np.zeros(len(rot))
    v[1:-1] = np.linalg.norm(rot[2:] - rot[:-2], axis=1) / 2
    v[0], v[-1] = v[1], v[-2]
    v = ndimage.gaussian_filter1d(v, 1.0)
    if v.mean() <= 1e-9:
        return np.zeros((0,), np.int64)
    peaks, _ = signal.find_peaks(-v, prominence=0.1 * v.mean())
    return peaks


def beat_alignment(motion: np.ndarray, audio: np.ndarray, sigma: float = SIGMA_FRAMES) -> tuple[float, int]:
    """(score, number of motion beats) for one clip."""
    motion, audio = np.asarray(motion, np.float64), np.asarray(audio, np.float64)
    if len(motion) == 0 or len(audio) == 0:
        return 0.0, len(motion)
    d = np.min(np.abs(motion[:, None] - audio[None, :]), axis=1)
    return float(np.mean(np.exp(-d ** 2 / (2 * sigma ** 2)))), len(motion)


def beat_alignment_set(poses: np.ndarray, conds: np.ndarray, sigma: float = SIGMA_FRAMES) -> float:
    """BAS over clips: poses [N,T,C], conds [N,T,320]; clips weighted by their motion beats."""
    total = count = 0.0
    for pose, cond in zip(poses, conds):
        s, n = beat_alignment(motion_beats(pose), audio_beats(cond), sigma)
        total += s * n
        count += n
    return total / count if count else 0.0


def pose_window_features(poses: np.ndarray) -> np.ndarray:
    """[num_windows, 30] features (see the module docstring) from poses [N,T,6]."""
    poses = np.asarray(poses, np.float64)
    feats = []
    for pose in poses:
        for s in range(0, pose.shape[0] - WINDOW + 1, STRIDE):
            w = pose[s:s + WINDOW]
            feats.append((w[list(OFFSETS)] - w[0]).reshape(-1))
    if not feats:
        raise ValueError(f"clips of {poses.shape[1]} frames are shorter than the {WINDOW}-frame window")
    return np.stack(feats)


def gaze_window_features(gaze: np.ndarray) -> np.ndarray:
    """[num_windows, 12] features from gaze [N,T,2]: the gaze at offsets 0, 5, 10, 15, 20, 24 of
    each 25-frame window (stride 5), absolute (see the module docstring)."""
    gaze = np.asarray(gaze, np.float64)
    at = [0, *OFFSETS]
    feats = [g[s:s + WINDOW][at].reshape(-1) for g in gaze for s in range(0, g.shape[0] - WINDOW + 1, STRIDE)]
    if not feats:
        raise ValueError(f"clips of {gaze.shape[1]} frames are shorter than the {WINDOW}-frame window")
    return np.stack(feats)


def gaze_report(generated: np.ndarray, gt: np.ndarray) -> dict:
    """{method: {std, fd, mae}} for the generated gaze, the ground truth, holding gaze0 and looking
    into the camera; arrays [N,T,2] in radians (see the module docstring)."""
    gt = np.asarray(gt, np.float64)
    gt_feats = gaze_window_features(gt)
    out = {}
    for name, gaze in (("generated", generated), ("ground_truth", gt), ("hold_gaze0", still_baseline(gt)),
                       ("camera", np.zeros_like(gt))):
        gaze = np.asarray(gaze, np.float64)
        out[name] = {"std": diversity(gaze), "fd": frechet_distance(gaze_window_features(gaze), gt_feats),
                     "mae": float(np.abs(gaze - gt).mean())}
    return out


def _table(report: dict, rows: tuple[str, ...], columns: tuple[tuple[str, str, int, int], ...]) -> str:
    """Aligned text: one line per method in ``rows``; ``columns`` = (key, header, width, decimals)."""
    lines = ["  " + f"{'method':14s} " + " ".join(f"{h:>{w}s}" for _, h, w, _ in columns)]
    for name in rows:
        lines.append(f"  {name:14s} " + " ".join(f"{report[name][k]:{w}.{d}f}" for k, _, w, d in columns))
    return "\n".join(lines)


def format_gaze_report(report: dict) -> str:
    """The ``gaze_report`` dict as an aligned text table."""
    return _table(report, ("generated", "hold_gaze0", "camera", "ground_truth"),
                  (("std", "temporal std (rad)", 19, 3), ("fd", "Frechet distance (lower better)", 33, 5),
                   ("mae", "mean |error| (rad)", 19, 3)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [Na,D] and b [Nb,D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (C_a C_b)^(1/2) = tr (C_a^(1/2) C_b C_a^(1/2))^(1/2), both PSD: stable for singular C
    w, v = linalg.eigh(ca)
    root_a = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
    tr_covmean = np.sum(np.sqrt(np.maximum(linalg.eigvalsh(root_a @ cb @ root_a), 0.0)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb) - 2 * tr_covmean)


def diversity(poses: np.ndarray) -> float:
    return float(np.asarray(poses, np.float64).std(axis=-2).mean())


def still_baseline(gt: np.ndarray) -> np.ndarray:
    """pose0 for every frame: [N,T,C]."""
    gt = np.asarray(gt, np.float32)
    return np.repeat(gt[:, :1], gt.shape[1], axis=1)


def random_walk_baseline(gt: np.ndarray, seed: int = 0) -> np.ndarray:
    """pose0 + cumulative Gaussian steps with the ground truth's per-channel step std: [N,T,C]."""
    gt = np.asarray(gt, np.float64)
    step_std = np.diff(gt, axis=1).reshape(-1, gt.shape[-1]).std(axis=0)
    steps = np.random.default_rng(seed).normal(0.0, 1.0, gt.shape) * step_std
    steps[:, 0] = 0.0
    return (gt[:, :1] + np.cumsum(steps, axis=1)).astype(np.float32)


def motion_report(generated: np.ndarray, gt: np.ndarray, conds: np.ndarray, seed: int = 0) -> dict:
    """{method: {bas, fd, diversity}} for the generated poses, the ground truth and both
    baselines; every array [N,T,6], conds [N,T,320]."""
    gt_feats = pose_window_features(gt)
    out = {}
    for name, poses in (("generated", generated), ("ground_truth", gt), ("still", still_baseline(gt)),
                        ("random_walk", random_walk_baseline(gt, seed))):
        out[name] = {"bas": beat_alignment_set(poses, conds),
                     "fd": frechet_distance(pose_window_features(poses), gt_feats),
                     "diversity": diversity(poses)}
    return out


def heldout_motion(data_dir, *, heldout_fraction: float = 0.25, condition: str = "mel100",
                   max_clips: int | None = None) -> dict[str, np.ndarray]:
    """Whole held-out clips of a dataset (the identities ``pipelines`` holds out), cut to the
    shortest one: ``cond`` [N,T,320], ``pose`` [N,T,6], ``gaze`` [N,T,2]."""
    from data_pipelines import audio, pipelines, records, schema

    clips = records.ClipDataset(data_dir)
    idx = pipelines.select_clips(clips.index, split="heldout", heldout_fraction=heldout_fraction, min_frames=WINDOW)
    if not idx:
        raise ValueError(f"{data_dir}: no held-out clips of >= {WINDOW} frames")
    idx = idx[:max_clips] if max_clips else idx
    t = min(clips.index[i]["num_frames"] for i in idx)
    out = {"cond": [], "pose": [], "gaze": []}
    field, rows = (("mel_100hz", audio.frame_cond_100hz_rows) if condition == "mel100"
                   else ("mel_80hz", audio.frame_cond_release_rows))
    for i in idx:
        clip = clips.view(i)  # reads the first t frames' mel and descriptor chunks, no JPEG
        cond = clip.rows(field, rows(clip.num_rows(field), clip.num_frames, frames=slice(0, t)))
        desc = clip.rows("descriptors", np.arange(t))
        out["cond"].append(np.asarray(cond.reshape(t, audio.COND_DIM), np.float32))
        out["pose"].append(np.asarray(desc[:, schema.POSE], np.float32))
        out["gaze"].append(np.asarray(desc[:, schema.GAZE], np.float32))
    return {k: np.stack(v) for k, v in out.items()}


def generate_motion(model, cond: np.ndarray, first: np.ndarray, *, residual: bool, key,
                    window: int = 150, spec=None, batch_size: int = 32,
                    data_scale: float = 1.0, alignment: str = "training") -> np.ndarray:
    """Samples [N,T,C] motion for conds [N,T,320] from first frames [N,C], batch_size clips at a
    time, with the long-audio windowing (``diffusion.windowing``; ``alignment`` "training" for
    models from our trainer, "release" for the official weights)."""
    import jax

    from gohd_jax.diffusion import samplers, windowing

    spec = spec or samplers.SamplerSpec()
    sampler = windowing.WindowSampler(model, spec=spec, residual=residual, data_scale=data_scale,
                                       alignment=alignment)
    return np.concatenate([
        windowing.generate_long(sampler, cond[b0:b0 + batch_size], first[b0:b0 + batch_size],
                                key=jax.random.fold_in(key, b0), window=window)
        for b0 in range(0, len(cond), batch_size)])


def format_report(report: dict) -> str:
    """The ``motion_report`` dict as an aligned text table."""
    return _table(report, ("generated", "still", "random_walk", "ground_truth"),
                  (("bas", "beat alignment (higher better)", 31, 3), ("fd", "Frechet distance (lower better)", 33, 5),
                   ("diversity", "diversity", 10, 4)))
