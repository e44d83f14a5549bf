"""``make demo``'s videos: what the tiny models generate, shown so that the motion is visible.

Each video is side-by-side panels (``gohd_jax/infer/panels.py``), 3x enlarged, with the clip's
audio: the generated descriptors drawn by the synthetic set's own renderer (the generated motion
itself, sharp), the learned animator's frames, and a reference where there is one:

* ``heldout_synthetic.mp4``: a held-out identity speaking its own held-out audio; last panel: the
  ground truth. Its mouth-motion correlation (``gohd_jax/eval/mouth_motion.py``) is scored for
  the ground truth, the drawn descriptors and the animator.
* ``real_HDTF_0_monalisa.mp4``: the real example portrait driven by real speech (shared folder).
* ``driven_by_video.mp4``: the held-out identity driven by another held-out clip's description
  (pose relative, expression, gaze and blinks: ``gohd animate --drive DESC.npz``); first panel:
  that reference video.
* ``emotion_transfer.mp4``: the held-out identity speaking its audio with the emotion of a smiling
  reference (``--emotion DESC.npz``); panels: the reference, the drawn descriptors, the animator,
  and the same clip without the emotion.

Every clip goes through the same engine (``gohd_jax.infer.animate.Animate``) and control
resolution (``gohd_jax.infer.cli.clip_controls``) as ``gohd animate``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

FPS = 25
ZOOM = 3
SMILE, BROW_RAISE = 3, 4  # synthetic descriptor dims (data_pipelines/synthetic/README.md)


@dataclasses.dataclass
class SynthClip:
    """A synthetic clip regenerated with its ground truth, cut to T frames."""
    index: int
    identity: object
    frames: np.ndarray        # uint8 [T,P,P,3]
    descriptors: np.ndarray   # [T,72]
    controls: np.ndarray      # [T,21]
    audio: np.ndarray         # [T*640] 16 kHz
    landmarks: np.ndarray     # [T,68,2] pixel (col, row)


def synth_clip(synth, index: int, seconds: float) -> SynthClip:
    """Clip ``index`` of the synthetic config ``synth`` (``generate_clip``), its first ``seconds``."""
    from data_pipelines.synthetic.generator import clip_identity, generate_clip

    c = generate_clip(synth, index)
    t = min(len(c["frames"]), int(round(seconds * FPS)))
    return SynthClip(index, clip_identity(synth, index), c["frames"][:t], c["descriptors"][:t],
                     c["controls"][:t], c["audio"][:t * 640], c["aux"]["landmarks"][:t])


def clip_index(clip_id: str) -> int:
    """The generator's clip index of ``synth-s{seed}-c{index:06d}``."""
    return int(clip_id.rsplit("-c", 1)[1])


def description(clip: SynthClip, name: str):
    """The clip as a ``gohd describe`` file would hold it (exact, no estimator)."""
    from data_pipelines.video.describe import Description

    t = len(clip.descriptors)
    return Description(clip.descriptors.astype(np.float32), clip.controls.astype(np.float32), np.ones(t, bool),
                       np.zeros((t, 4), np.int32), clip.landmarks.astype(np.float32),
                       clip.audio.astype(np.float32), source=name)


def smiling(clip: SynthClip, smile: float = 1.2, brow_raise: float = 0.5) -> SynthClip:
    """The same clip with a smile and raised brows added to every frame (re-rendered)."""
    from data_pipelines.synthetic import render

    d = clip.descriptors.copy()
    d[:, SMILE] += smile
    d[:, BROW_RAISE] += brow_raise
    size = clip.frames.shape[1]
    controls = np.stack([render.controls_from_descriptor(clip.identity, x) for x in d]).astype(np.float32)
    landmarks = np.stack([render.landmarks_to_pixels(render.face_landmarks(clip.identity, x), size) for x in d])
    return dataclasses.replace(clip, frames=render.render_frames(clip.identity, d, size), descriptors=d,
                               controls=controls, landmarks=landmarks.astype(np.float32))


class FrameCollector:
    """A writer for ``Animate.run`` that keeps the frames."""

    def __init__(self):
        self._frames = []

    def write(self, frames: np.ndarray) -> None:
        self._frames.append(np.asarray(frames, np.uint8).reshape((-1,) + np.shape(frames)[-3:]))

    @property
    def frames(self) -> np.ndarray:
        return np.concatenate(self._frames)


@dataclasses.dataclass
class Rendered:
    frames: np.ndarray        # uint8 [T,S,S,3], the learned animator's
    descriptors: np.ndarray   # [T,72], the generated drive
    seconds: float            # wall time of the engine call


def render(engine, job) -> Rendered:
    t0 = time.perf_counter()
    sink = FrameCollector()
    drives, _ = engine.run([job], [sink])
    return Rendered(sink.frames, np.asarray(drives[0]["descriptors"]), time.perf_counter() - t0)


def drawn(identity, descriptors: np.ndarray, size: int) -> np.ndarray:
    """The descriptors drawn by the synthetic renderer: uint8 [T,size,size,3]."""
    from data_pipelines.synthetic.render import render_frames

    return render_frames(identity, descriptors, size)


def write_video(path: Path, panels: list[np.ndarray], captions: list[str], wav: np.ndarray) -> Path:
    """The panels side by side as ``path`` (mp4 with ``wav``), and its middle frame as ``path``.png."""
    from PIL import Image

    from gohd_jax.infer.mp4 import Mp4Writer
    from gohd_jax.infer.panels import side_by_side

    video = side_by_side(panels, captions, zoom=ZOOM)
    with Mp4Writer(path, video.shape[1:3], audio=wav) as w:
        w.write(video)
    Image.fromarray(video[len(video) // 2]).save(path.with_suffix(".png"))
    return path


def video_line(path: Path, what: str, n: int, seconds: float) -> str:
    return f"video       {path}: {what}; {n} frames = {n / FPS:.1f} s of video, rendered in {seconds:.1f} s"


def mouth_scores(held: SynthClip, animator: np.ndarray, drawn_frames: np.ndarray, size: int) -> dict[str, float]:
    """Mouth-motion correlation with the held-out clip's true jaw opening (descriptor dim 0)."""
    from gohd_jax.eval.mouth_motion import mouth_box, mouth_motion_correlation

    box = mouth_box(held.landmarks, size)
    jaw = held.descriptors[:, 0]
    return {"ground-truth frames": mouth_motion_correlation(held.frames, jaw, box),
            "generated descriptors, drawn": mouth_motion_correlation(drawn_frames, jaw, box),
            "learned animator (the video)": mouth_motion_correlation(animator, jaw, box)}


def format_mouth_scores(scores: dict[str, float], n: int) -> str:
    lines = [f"mouth-motion correlation with the true mouth opening (held-out video, {n} frames; "
             f"gohd_jax/eval/mouth_motion.py; target for the animator >= 0.5):"]
    lines += [f"  {name:32s} {v:6.3f}" for name, v in scores.items()]
    return "\n".join(lines)
