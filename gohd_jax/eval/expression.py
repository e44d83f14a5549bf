"""Expression metrics on held-out clips: mouth accuracy, blinks, and the lip-sync expert's verdict.

Pinned definitions:

* **Mouth error** = mean |generated - ground truth| over the mouth coefficients (``mouth_dims``;
  jaw, width, rounding = 0, 1, 2 on the synthetic data) and all frames. **Mouth correlation** =
  Pearson's r between generated and ground-truth trajectories, per clip and mouth coefficient,
  averaged; a constant trajectory has r = 0.
* **Blinks** are read from the blink ratio (controls[..., 0], the eye aspect ratio): a blink is a
  maximal run of frames with ratio < 0.15 (open eyes 0.28-0.35, closed 0.03). **Rate** = blinks
  per minute at 25 fps; **duration** = mean run length in frames (0 when there are none).
* **Lip sync**: the clip is rendered with the generated expression (and the ground-truth pose and
  gaze) by the synthetic renderer, and scored by a trained lip-sync expert as
  ``gohd_jax.eval.lipsync`` defines: LSE-C (higher better), LSE-D (lower better), offset.

Methods compared: the two-stage model (generated controls), stage 1 with the ground-truth
controls, "copy exp0" (the first frame's expression held; its blink ratio held too), and the
ground truth.
"""

from __future__ import annotations

import numpy as np

from gohd_jax.train.tasks.expression import CLOSED_RATIO

__all__ = ["heldout_expression", "blink_events", "blink_stats", "mouth_metrics", "render_clip",
           "expression_report", "format_report", "FPS"]

FPS = 25


def heldout_expression(data_dir, *, heldout_fraction: float = 0.25, min_frames: int = 30,
                       max_clips: int | None = None) -> dict:
    """Whole held-out clips cut to the shortest: ``mel_windows`` [N,T,80,16], ``expression``
    [N,T,64], ``controls`` [N,T,21], ``descriptors`` [N,T,72], ``frames`` uint8 [N,T,P,P,3],
    ``identity_id`` (list of N)."""
    from data_pipelines import audio, pipelines, records, schema

    clips = records.ClipDataset(data_dir)
    idx = pipelines.select_clips(clips.index, split="heldout", heldout_fraction=heldout_fraction,
                                 min_frames=min_frames)
    if not idx:
        raise ValueError(f"{data_dir}: no held-out clips of >= {min_frames} frames")
    idx = idx[:max_clips] if max_clips else idx
    t = min(clips.index[i]["num_frames"] for i in idx)
    out = {k: [] for k in ("mel_windows", "expression", "controls", "descriptors", "frames", "identity_id")}
    for i in idx:
        clip = clips[i]
        n = len(clip["frames"])
        out["mel_windows"].append(audio.frame_mel_windows(clip["mel_80hz"], n)[:t].astype(np.float32))
        out["descriptors"].append(np.asarray(clip["descriptors"][:t], np.float32))
        out["expression"].append(out["descriptors"][-1][:, schema.EXPRESSION])
        out["controls"].append(np.asarray(clip["controls"][:t], np.float32))
        out["frames"].append(np.stack([schema.decode_jpeg(f) for f in clip["frames"][:t]]))
        out["identity_id"].append(clip["identity_id"])
    ids = out.pop("identity_id")
    res = {k: np.stack(v) for k, v in out.items()}
    res["identity_id"] = ids
    return res


def blink_events(ratio: np.ndarray, threshold: float = CLOSED_RATIO) -> list[tuple[int, int]]:
    """(start, length) of every run of frames with ratio < threshold, for ratio [T]."""
    closed = np.concatenate([[False], np.asarray(ratio) < threshold, [False]])
    edges = np.flatnonzero(np.diff(closed.astype(np.int8)))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def blink_stats(ratios: np.ndarray) -> dict[str, float]:
    """{"rate_per_min", "duration_frames"} over clips ratios [N,T]."""
    events = [e for r in ratios for e in blink_events(r)]
    minutes = ratios.size / FPS / 60.0
    return {"rate_per_min": len(events) / minutes,
            "duration_frames": float(np.mean([n for _, n in events])) if events else 0.0}


def mouth_metrics(gen: np.ndarray, gt: np.ndarray, mouth_dims=(0, 1, 2)) -> dict[str, float]:
    """{"mae", "corr"} of expressions [N,T,64] over the mouth coefficients."""
    g, t = gen[..., list(mouth_dims)], gt[..., list(mouth_dims)]
    gc, tc = g - g.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    den = np.sqrt((gc ** 2).sum(1) * (tc ** 2).sum(1))
    r = np.where(den > 1e-12, (gc * tc).sum(1) / np.maximum(den, 1e-12), 0.0)
    return {"mae": float(np.abs(g - t).mean()), "corr": float(r.mean())}


def render_clip(identity_id: str, descriptors: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T,size,size,3] frames of a synthetic identity ("synth-s{seed}-id{k}") for [T,72]."""
    from data_pipelines.synthetic import identity as identity_lib
    from data_pipelines.synthetic import render

    try:
        seed_part, id_part = identity_id.split("-")[1:3]
        seed, k = int(seed_part[1:]), int(id_part[2:])
    except (ValueError, IndexError):
        raise ValueError(f"{identity_id!r} is not a synthetic identity: lip sync needs rendered "
                         f"frames (synthetic data) or an animator") from None
    return render.render_frames(identity_lib.make_identity(seed, k), descriptors, size)


def expression_report(methods: dict[str, tuple[np.ndarray, np.ndarray]], held: dict, *,
                      expert=None, mouth_dims=(0, 1, 2)) -> dict[str, dict[str, float]]:
    """{method: metrics} for ``methods`` = {name: (expression [N,T,64], blink ratio [N,T])};
    "copy_exp0" and "ground_truth" are added. With ``expert`` (a ``SyncNet``), each method's
    clips are rendered and scored (``lse_c``, ``lse_d``, ``offset_abs``)."""
    from gohd_jax.eval import lipsync

    gt_exp, gt_ratio = held["expression"], held["controls"][..., 0]
    methods = dict(methods)
    methods["copy_exp0"] = (np.repeat(gt_exp[:, :1], gt_exp.shape[1], 1),
                            np.repeat(gt_ratio[:, :1], gt_ratio.shape[1], 1))
    methods["ground_truth"] = (gt_exp, gt_ratio)
    report = {}
    for name, (exp, ratio) in methods.items():
        r = {**mouth_metrics(exp, gt_exp, mouth_dims), **blink_stats(ratio)}
        if expert is not None:
            scores = []
            for i, ident in enumerate(held["identity_id"]):
                if name == "ground_truth":  # the clip's own frames
                    frames = held["frames"][i]
                else:
                    desc = held["descriptors"][i].copy()
                    desc[:, : exp.shape[-1]] = exp[i]
                    frames = render_clip(ident, desc, held["frames"].shape[2])
                scores.append(lipsync.sync_scores(*lipsync.clip_embeddings(expert, held["mel_windows"][i], frames)))
            r.update(lse_c=float(np.mean([s["lse_c"] for s in scores])),
                     lse_d=float(np.mean([s["lse_d"] for s in scores])),
                     offset_abs=float(np.mean([abs(s["offset"]) for s in scores])))
        report[name] = r
    return report


def format_report(report: dict) -> str:
    cols = [("mae", "mouth error"), ("corr", "mouth corr"), ("rate_per_min", "blinks/min"),
            ("duration_frames", "blink frames"), ("lse_c", "LSE-C"), ("lse_d", "LSE-D"), ("offset_abs", "|offset|")]
    cols = [(k, h) for k, h in cols if any(k in r for r in report.values())]
    lines = [f"  {'method':22s}" + "".join(f"{h:>13s}" for _, h in cols)]
    for name, r in report.items():
        lines.append(f"  {name:22s}" + "".join(f"{r[k]:13.4f}" for k, _ in cols))
    return "\n".join(lines)


def evaluate_runs(data_dir, *, stage1_dir=None, stage2_dir=None, expert_dir=None, seed: int = 0,
                  window: int = 30, mouth_dims=(0, 1, 2), heldout_fraction: float = 0.25,
                  max_clips: int | None = None) -> dict:
    """The report of ``expression_report`` for trained runs (any may be None): stage 1 with the
    ground-truth controls, the two-stage model (stage 2's run) with generated controls, windowed
    as at inference; lip sync scored by the expert run when given."""
    import jax

    from gohd_jax.infer.expression import generate_expression
    from gohd_jax.train.restore import load_model

    held = heldout_expression(data_dir, heldout_fraction=heldout_fraction, min_frames=window,
                              max_clips=max_clips)
    exp0, methods = held["expression"][:, 0], {}
    if stage1_dir:
        s1 = load_model(stage1_dir, "expression", expect_task="expression_stage1")
        ctrl = held["controls"][..., : s1.cfg.controls] if s1.cfg.controls else None
        exp, _ = generate_expression(s1, held["mel_windows"], exp0, controls=ctrl, window=window)
        methods["stage1_true_controls"] = (exp, held["controls"][..., 0])
    if stage2_dir:
        two = load_model(stage2_dir, "expression", expect_task="expression_stage2")
        exp, ctrl = generate_expression(two, held["mel_windows"], exp0, controls=held["controls"][:, 0],
                                        key=jax.random.key(seed), window=window)
        methods["two_stage"] = (exp, ctrl[..., 0])
    expert = load_model(expert_dir, "syncnet", expect_task="syncnet") if expert_dir else None
    return expression_report(methods, held, expert=expert, mouth_dims=mouth_dims)
