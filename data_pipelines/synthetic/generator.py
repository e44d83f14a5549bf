"""The synthetic talking-head clip generator: identity + speech + motion -> frames, audio, labels.

``generate_clip(cfg, i)`` is a pure function of (cfg, i). Streams (``np.random.SeedSequence``):

* identity k:   [seed, 1, k]            (identity.py; clip i shows identity i % num_identities)
* audio of i:   [seed, 2, i]            (speech.py)
* motion of i:  [seed, 3, i, sub]       (motion.py; separate sub-streams for head, blinks, gaze, ...)

See README.md in this folder for every factor, unit and convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.synthetic import motion as motion_lib
from data_pipelines.synthetic import render, speech
from data_pipelines.synthetic.identity import Identity, make_identity

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640
STREAM_AUDIO = 2


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    size: int = 64            # square frame side in px (64 for tiny CPU runs, up to 256)
    seconds: float = 6.0      # clip length; T = round(seconds * 25)
    num_identities: int = 8   # clip i uses identity i % num_identities
    seed: int = 0

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.seconds * FPS)))


def clip_identity(cfg: SynthConfig, clip_index: int) -> Identity:
    """The Identity shown in clip ``clip_index``."""
    return make_identity(cfg.seed, int(clip_index) % max(1, int(cfg.num_identities)))


def generate_speech(cfg: SynthConfig, clip_index: int,
                    identity: Identity | None = None) -> speech.SpeechTrack:
    """The audio track of clip ``clip_index`` (no rendering)."""
    identity = identity or clip_identity(cfg, clip_index)
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), STREAM_AUDIO, int(clip_index)]))
    return speech.synthesize_speech(cfg.num_frames, rng, f0_base=identity.voice_f0)


def generate_clip(cfg: SynthConfig, clip_index: int) -> dict:
    """Deterministic function of (cfg, clip_index). T = round(cfg.seconds * 25), P = cfg.size.

    Returns {"clip_id": f"synth-s{seed}-c{clip_index:06d}", "identity_id": f"synth-s{seed}-id{k:04d}",
    "source_id": "synthetic", "frames": uint8 [T,P,P,3] RGB, "audio": float32 [T*640] in [-1, 1],
    "descriptors": float32 [T,72], "controls": float32 [T,21], "aux": {...}} where aux holds float32 /
    int32 per-frame ground truth (first axis T):
      phoneme int32 [T] (index into speech.PHONEMES at the frame centre), stress [T] (1 on the frame of
      a stressed vowel onset), stress_strength [T], speaking [T] (1 inside a phrase), energy [T] (frame
      RMS), f0 [T] (Hz, 0 when unvoiced), blink [T] (eyelid closure 0..1), saccade [T] (1 when a gaze
      fixation starts), nod [T] (stress-driven pitch, rad), landmarks [T,68,2] (iBUG-68 points in pixel
      coordinates (col, row) of the P x P frame).
    """
    if cfg.size < 8:
        raise ValueError(f"SynthConfig.size must be >= 8, got {cfg.size}")
    if cfg.num_identities < 1:
        raise ValueError(f"SynthConfig.num_identities must be >= 1, got {cfg.num_identities}")
    clip_index = int(clip_index)
    k = clip_index % cfg.num_identities
    ident = make_identity(cfg.seed, k)
    sp = generate_speech(cfg, clip_index, ident)
    mo = motion_lib.generate_motion(sp, cfg.seed, clip_index)
    desc = mo.descriptors
    frames = render.render_frames(ident, desc, cfg.size)
    lms = np.stack([render.face_landmarks(ident, d) for d in desc])
    controls = render.controls_from_landmarks(render.landmarks_to_pixels(lms, 2))
    aux = {
        "phoneme": sp.phoneme.astype(np.int32),
        "stress": sp.stress, "stress_strength": sp.stress_strength,
        "speaking": sp.speaking, "energy": sp.energy, "f0": sp.f0,
        "blink": mo.blink, "saccade": mo.saccade, "nod": mo.nod,
        "landmarks": render.landmarks_to_pixels(lms, cfg.size).astype(np.float32),
    }
    return {
        "clip_id": f"synth-s{cfg.seed}-c{clip_index:06d}",
        "identity_id": f"synth-s{cfg.seed}-id{k:04d}",
        "source_id": "synthetic",
        "frames": frames,
        "audio": sp.audio,
        "descriptors": desc,
        "controls": controls,
        "aux": aux,
    }
