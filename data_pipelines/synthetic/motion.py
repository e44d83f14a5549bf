"""Per-frame motion of a synthetic talker: the 72-d descriptor sequence for a SpeechTrack.

What depends on the audio (so that a model can learn it from the mel spectrogram):

* mouth (jaw opening, width, rounding) follows the phone segments through a dominance-function
  coarticulation model (Cohen & Massaro): each segment pulls towards its articulation target with a
  weight alpha * exp(-distance_to_segment / tau) (tau 18 ms for the jaw, 40 ms for width and
  rounding); lip closures (p, m, ...) dominate, so the lips shut for plosives, nasals and silence;
* head nods: pitch gets a damped oscillation (1.8 Hz, 0.22 s decay, nose down first) whose apex (the
  first turning point, where the head is momentarily still) falls 30 ms before each stressed vowel,
  scaled by its stress strength; roll gets a smaller one with a random sign starting 30 ms before;
* brows rise briefly on about 60 % of stressed syllables.

What does not (separate random streams that never see the audio):

* blinks: every 2-6 s (first one after 0.2-3 s), 4-8 frames, fast close and slower reopen;
* gaze: fixations of 0.4-2.5 s (65 % near the camera, else an aversion of 0.15-0.4 rad), one-frame
  saccades between them, 0.006 rad jitter;
* slow drifts: yaw (std 0.12 rad over ~1.5 s), pitch, roll, translation, smile, brow raise and furrow.

Streams: ``np.random.SeedSequence([seed, STREAM_MOTION, clip_index, k])`` with k = one of the
``_SUB_*`` constants, so e.g. blinks are identical for the same (seed, clip_index) whatever the audio.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from data_pipelines.synthetic import render as R
from data_pipelines.synthetic.speech import FPS, SAMPLE_RATE, SpeechTrack

STREAM_MOTION = 3
_SUB_HEAD, _SUB_BLINK, _SUB_GAZE, _SUB_EXPR, _SUB_BROW_STRESS, _SUB_ARTIC = range(6)

# Articulation targets (jaw, width, round) and dominance per phoneme (index as speech.PHONEMES).
ARTICULATION = np.array([
    [0.03, 0.00, 0.00],   # sil: relaxed, lips together
    [1.00, 0.15, 0.00],   # a
    [0.55, 0.60, 0.00],   # e
    [0.28, 1.00, 0.00],   # i
    [0.60, -0.45, 0.85],  # o
    [0.22, -0.75, 1.30],  # u
    [0.00, 0.00, 0.00],   # m: lips pressed
    [0.04, 0.10, 0.00],   # n: lips (nearly) closed
    [0.00, 0.00, 0.00],   # p closure
    [0.00, 0.10, 0.00],   # t closure
    [0.00, 0.00, 0.00],   # k closure
    [0.12, 0.50, 0.00],   # s: teeth together, lips spread
    [0.05, 0.15, 0.00],   # f: lower lip against the upper teeth
], np.float64)
DOMINANCE = np.array([0.5, 1, 1, 1, 1, 1, 2.0, 1.5, 2.5, 2.5, 2.5, 1.2, 1.8], np.float64)
RELEASE_TARGET = np.array([0.25, 0.10, 0.00])  # plosive burst: lips just parting
RELEASE_DOMINANCE = 0.3
COARTICULATION_TAU = (0.018, 0.04, 0.04)  # s, per driver (jaw, width, round): rounding anticipates more
NOD_LEAD_S = 0.105 + 0.03  # nod start before the stressed vowel onset: apex (at 0.105 s) 30 ms early


@dataclasses.dataclass(frozen=True)
class MotionTrack:
    descriptors: np.ndarray  # float32 [T,72]
    blink: np.ndarray        # float32 [T] eyelid closure 0..1 (= descriptors[:, EXP_EYELID])
    saccade: np.ndarray      # float32 [T] 1 on frames where a new gaze fixation starts
    nod: np.ndarray          # float32 [T] the stress-driven part of pitch (rad)


def _rng(seed: int, clip_index: int, sub: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_MOTION, int(clip_index), sub]))


def smooth_noise(rng: np.random.Generator, T: int, sigma_frames: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed noise [T] (correlation time ~ sigma_frames)."""
    pad = int(4 * sigma_frames) + 1
    x = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, T + 2 * pad), sigma_frames)
    return x[pad:pad + T] * np.sqrt(2.0 * np.sqrt(np.pi) * sigma_frames)


def articulation(speech: SpeechTrack, T: int, jaw_scale: float = 1.0) -> np.ndarray:
    """Mouth drivers float64 [T,3] = (jaw, width, round) at frame centres, from the phone segments."""
    seg = speech.segments
    st, en = seg.start / SAMPLE_RATE, seg.end / SAMPLE_RATE
    tgt = ARTICULATION[seg.phoneme].copy()
    alpha = DOMINANCE[seg.phoneme].copy()
    tgt[seg.release] = RELEASE_TARGET
    alpha[seg.release] = RELEASE_DOMINANCE
    stressed_vowel = (seg.stress > 0) & (seg.phoneme >= 1) & (seg.phoneme <= 5) & ~seg.release
    tgt[stressed_vowel, 0] *= 1.15
    alpha[stressed_vowel] *= 1.2
    t = (np.arange(T) + 0.5) / FPS
    out = np.zeros((T, 3))
    reach = 12 * max(COARTICULATION_TAU)
    for c0 in range(0, T, 256):  # chunks keep memory bounded on long clips
        tc = t[c0:c0 + 256]
        lo = np.searchsorted(en, tc[0] - reach)
        hi = np.searchsorted(st, tc[-1] + reach, side="right")
        dist = np.maximum(0.0, np.maximum(st[None, lo:hi] - tc[:, None], tc[:, None] - en[None, lo:hi]))
        for j, tau in enumerate(COARTICULATION_TAU):
            w = alpha[None, lo:hi] * np.exp(-dist / tau)
            out[c0:c0 + 256, j] = (w @ tgt[lo:hi, j]) / np.maximum(w.sum(1), 1e-300)
    out[:, 0] *= jaw_scale
    return out


def _impulse_train(times: np.ndarray, amps: np.ndarray, T: int, kernel) -> np.ndarray:
    """sum_k amps[k] * kernel(t - times[k]) at frame centres (kernel is 0 for negative lags)."""
    t = (np.arange(T) + 0.5) / FPS
    out = np.zeros(T)
    for tk, ak in zip(times, amps):
        tau = t - tk
        m = (tau >= 0) & (tau < 2.0)
        out[m] += ak * kernel(tau[m])
    return out


def _nod_kernel(tau):
    return np.exp(-tau / 0.22) * np.sin(2 * np.pi * 1.8 * tau)


def _roll_kernel(tau):
    return np.exp(-tau / 0.35) * np.sin(2 * np.pi * 1.2 * tau)


def _brow_kernel(tau):
    return (tau / 0.12) * np.exp(1.0 - tau / 0.12)


def blink_track(T: int, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure float64 [T] in [0, 1]: blinks every 2-6 s, 4-8 frames each, plus a faint lid tone."""
    closure = np.zeros(T)
    t = rng.uniform(0.2, 3.0)
    while t * FPS < T:
        dur = int(rng.integers(4, 9))
        peak = rng.uniform(0.85, 1.0)
        start = int(round(t * FPS))
        tau = (np.arange(dur) + 0.5) / dur
        tp = 0.35
        closing = np.sin(0.5 * np.pi * tau / tp)
        opening = 0.5 * (1 + np.cos(np.pi * (tau - tp) / (1 - tp)))
        prof = np.where(tau < tp, closing, opening)
        idx = np.arange(start, min(start + dur, T))
        closure[idx] = np.maximum(closure[idx], peak * prof[: len(idx)])
        t += dur / FPS + rng.uniform(2.0, 6.0)
    tone = np.clip(0.03 + 0.02 * smooth_noise(rng, T, 50.0), 0.0, 0.1)
    return np.maximum(closure, tone)


def gaze_track(T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaze float64 [T,2] (rad, camera frame) and saccade onsets float64 [T]."""
    gaze = np.zeros((T, 2))
    sacc = np.zeros(T)
    k = 0
    prev = None
    while k < T:
        if rng.random() < 0.65:
            target = rng.normal(0.0, 0.06, 2)
        else:
            target = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.4), rng.normal(-0.05, 0.12)])
        n = max(1, int(rng.uniform(0.4, 2.5) * FPS))
        gaze[k:k + n] = target
        if prev is not None:
            sacc[k] = 1.0
            gaze[k] = 0.5 * (prev + target)  # one-frame transition
        prev = target
        k += n
    gaze += rng.normal(0.0, 0.006, (T, 2))
    gaze[:, 0] = np.clip(gaze[:, 0], -0.5, 0.5)
    gaze[:, 1] = np.clip(gaze[:, 1], -0.35, 0.35)
    return gaze, sacc


def generate_motion(speech: SpeechTrack, seed: int, clip_index: int) -> MotionTrack:
    """Descriptor sequence float32 [T,72] for ``speech`` (T = its number of frames)."""
    T = len(speech.phoneme)
    d = np.zeros((T, R.DESCRIPTOR_DIM))
    onsets, levels = speech.stress_onsets, speech.stress_levels

    # Mouth from the phones.
    ra = _rng(seed, clip_index, _SUB_ARTIC)
    d[:, [R.EXP_JAW, R.EXP_WIDTH, R.EXP_ROUND]] = articulation(speech, T, jaw_scale=ra.uniform(0.9, 1.1))

    # Head: stress-locked nods and tilts on top of slow drifts.
    rh = _rng(seed, clip_index, _SUB_HEAD)
    nod_gain = rh.uniform(0.7, 1.3)
    yaw0, pitch0, roll0 = rh.normal(0.0, 0.08), rh.normal(0.0, 0.04), rh.normal(0.0, 0.03)
    yaw_d, pitch_d, roll_d = (smooth_noise(rh, T, s) for s in (37.0, 25.0, 30.0))
    tx_d, ty_d, tz_d = (smooth_noise(rh, T, s) for s in (40.0, 40.0, 60.0))
    tz0 = rh.normal(0.0, 0.03)
    signs = rh.choice([-1.0, 1.0], size=1024)
    # The nod's apex (its first turning point, 0.105 s into the kernel: the head is still there)
    # falls 30 ms before the stressed vowel, as beat gestures peak on the stressed syllable.
    nod = _impulse_train(onsets - NOD_LEAD_S, 0.14 * nod_gain * levels, T, _nod_kernel)
    tilt_sign = signs[np.arange(len(levels)) % len(signs)]
    tilt = _impulse_train(onsets - 0.03, 0.035 * levels * tilt_sign, T, _roll_kernel)
    yaw = yaw0 + 0.12 * yaw_d
    pitch = pitch0 + 0.03 * pitch_d + nod
    d[:, R.YAW] = yaw
    d[:, R.PITCH] = pitch
    d[:, R.ROLL] = roll0 + 0.025 * roll_d + tilt
    d[:, R.TX] = 0.15 * yaw + 0.015 * tx_d
    d[:, R.TY] = -0.08 * pitch + 0.01 * ty_d
    d[:, R.TZ] = tz0 + 0.02 * tz_d

    # Expression drifts: smile, brows (brow raise also follows some stresses).
    re = _rng(seed, clip_index, _SUB_EXPR)
    smile0, raise0, furrow0 = re.uniform(-0.1, 0.6), re.normal(0.1, 0.2), re.normal(-0.1, 0.15)
    smile_d, raise_d, furrow_d = (smooth_noise(re, T, s) for s in (50.0, 30.0, 40.0))
    coins = _rng(seed, clip_index, _SUB_BROW_STRESS).random(max(len(levels), 1))[: len(levels)] < 0.6
    brow_kick = _impulse_train(onsets, 0.45 * levels * coins, T, _brow_kernel)
    d[:, R.EXP_SMILE] = np.clip(smile0 + 0.15 * smile_d, -0.5, 1.3)
    d[:, R.EXP_BROW_RAISE] = np.clip(raise0 + 0.2 * raise_d + brow_kick, -1.0, 1.8)
    d[:, R.EXP_BROW_FURROW] = np.clip(furrow0 + 0.2 * furrow_d, 0.0, 1.0)

    # Blinks and gaze: audio-free streams.
    blink = blink_track(T, _rng(seed, clip_index, _SUB_BLINK))
    d[:, R.EXP_EYELID] = blink
    gaze, sacc = gaze_track(T, _rng(seed, clip_index, _SUB_GAZE))
    d[:, R.GAZE_H], d[:, R.GAZE_V] = gaze[:, 0], gaze[:, 1]
    return MotionTrack(descriptors=d.astype(np.float32), blink=blink.astype(np.float32),
                       saccade=sacc.astype(np.float32), nod=nod.astype(np.float32))
