"""Speech-like audio: a source-filter synthesiser of a random syllable sequence with prosody.

The utterance is a sequence of phrases (2-5 words of 1-3 CV(C) syllables) separated by pauses.
Sounds (``PHONEMES``):

* vowels /a e i o u/: a Rosenberg glottal pulse train at F0 through a cascade of four formant resonators
  (``scipy.signal.sosfilt``), with distinct F1/F2 per vowel;
* nasals /m n/: the same source through low resonances and a low-pass: a quiet low hum;
* plosives /p t k/: a closure of silence, then a noise burst (low / high / mid band) and aspiration;
* fricatives /s f/: band-passed noise;
* silence between phrases (a -70 dB noise floor).

Prosody: F0 declines over each phrase; stressed syllables are longer, louder (x1.8 amplitude) and
higher (up to +25% F0); phrase-final syllables are longer and softer.

Everything is returned per sample and per video frame (25 fps, 640 samples per frame), along with the
segment list the motion model turns into mouth movements. Deterministic given the Generator passed in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage, signal

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS

PHONEMES = ("sil", "a", "e", "i", "o", "u", "m", "n", "p", "t", "k", "s", "f")
PHONEME_ID = {p: i for i, p in enumerate(PHONEMES)}
VOWELS = (1, 2, 3, 4, 5)
NASALS = (6, 7)
PLOSIVES = (8, 9, 10)
FRICATIVES = (11, 12)

# Formants (F1, F2, F3, F4) in Hz and bandwidths, for a low voice; scaled up for higher voices.
_VOWEL_FORMANTS = {
    1: (730, 1090, 2440, 3400),  # a
    2: (530, 1840, 2480, 3500),  # e
    3: (270, 2290, 3010, 3700),  # i
    4: (570, 840, 2410, 3400),   # o
    5: (300, 870, 2240, 3300),   # u
}
_BANDWIDTHS = (80, 100, 140, 220)
_NASAL_FORMANTS = {6: ((250, 60), (1000, 250), (2200, 300)), 7: ((250, 60), (1450, 250), (2400, 300))}
_NOISE_BANDS = {11: (4000, 7600), 12: (1500, 7000), 8: (300, 1500), 9: (2500, 6500), 10: (1200, 3200)}
_ASPIRATION = 13  # class index of the aspiration noise (not a phoneme)


@dataclasses.dataclass(frozen=True)
class Segments:
    """The phone sequence, one row per segment (N segments, sample indices, end exclusive).

    Pauses are explicit ``sil`` segments, so the segments tile [0, num_samples). A plosive is two
    segments: its closure (``release`` False) and its burst + aspiration (``release`` True).
    """

    phoneme: np.ndarray   # int32 [N] index into PHONEMES
    start: np.ndarray     # int64 [N] first sample
    end: np.ndarray       # int64 [N] one past the last sample
    stress: np.ndarray    # float32 [N] stress strength 0..1 of the syllable (0 = unstressed)
    release: np.ndarray   # bool [N] plosive release (burst + aspiration)
    syllable: np.ndarray  # int32 [N] syllable index (-1 for silence)
    phrase: np.ndarray    # int32 [N] phrase index (-1 for silence)


@dataclasses.dataclass(frozen=True)
class SpeechTrack:
    """A synthetic utterance of T video frames."""

    audio: np.ndarray          # float32 [T*640], 16 kHz mono in [-1, 1]
    segments: Segments
    phoneme: np.ndarray        # int32 [T] phoneme at each frame centre
    stress: np.ndarray         # float32 [T] 1 on the frame holding a stressed vowel's onset
    stress_strength: np.ndarray  # float32 [T] that syllable's stress strength 0.6..1 on those frames
    speaking: np.ndarray       # float32 [T] 1 inside a phrase (pauses and edges 0)
    f0: np.ndarray             # float32 [T] F0 in Hz at frame centres where voiced, else 0
    energy: np.ndarray         # float32 [T] RMS of the frame's 640 samples
    stress_onsets: np.ndarray  # float64 [K] times in seconds of stressed-vowel onsets
    stress_levels: np.ndarray  # float64 [K] their strengths


def _plan(num_samples: int, rng: np.random.Generator) -> Segments:
    """Draws the phone sequence: phrases of words of syllables, pauses in between."""
    sr = SAMPLE_RATE
    rows: list[tuple] = []  # (phoneme, start, end, stress, release, syllable, phrase)
    t = int(rng.uniform(0.12, 0.45) * sr)
    limit = num_samples - int(0.1 * sr)
    syl = 0
    phrase = 0
    onsets = np.array([6, 7, 8, 9, 10, 11, 12])
    onset_p = np.array([0.16, 0.14, 0.16, 0.16, 0.12, 0.14, 0.12])
    vowel_p = np.array([0.28, 0.2, 0.2, 0.16, 0.16])
    codas = np.array([7, 6, 11, 9])
    done = False
    while not done and t + int(0.45 * sr) <= limit:
        n_words = int(rng.integers(2, 6))
        for w in range(n_words):
            n_syl = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
            stress_at = int(rng.integers(n_syl)) if rng.random() < 0.6 else -1
            for k in range(n_syl):
                if t + int(0.45 * sr) > limit:
                    done = True
                    break
                final = (w == n_words - 1) and (k == n_syl - 1)
                strength = float(rng.uniform(0.6, 1.0)) if k == stress_at else 0.0
                if rng.random() < 0.8:
                    c = int(rng.choice(onsets, p=onset_p))
                    t = _consonant(rows, c, t, rng, strength, syl, phrase)
                v = int(rng.choice(VOWELS, p=vowel_p))
                dur = rng.uniform(0.09, 0.15) * (1.35 if strength > 0 else 1.0) * (1.3 if final else 1.0)
                n = int(dur * sr)
                rows.append((v, t, t + n, strength, False, syl, phrase))
                t += n
                if rng.random() < 0.25:
                    c = int(rng.choice(codas))
                    t = _consonant(rows, c, t, rng, strength, syl, phrase, coda=True)
                syl += 1
            if done:
                break
        phrase += 1
        t += int(rng.uniform(0.25, 0.7) * sr)

    # Fill the gaps with silence so the segments tile the clip.
    out: list[tuple] = []
    cursor = 0
    for r in rows:
        if r[1] > cursor:
            out.append((0, cursor, r[1], 0.0, False, -1, -1))
        out.append(r)
        cursor = r[2]
    if cursor < num_samples:
        out.append((0, cursor, num_samples, 0.0, False, -1, -1))
    a = list(zip(*out))
    return Segments(phoneme=np.array(a[0], np.int32), start=np.array(a[1], np.int64),
                    end=np.minimum(np.array(a[2], np.int64), num_samples),
                    stress=np.array(a[3], np.float32), release=np.array(a[4], bool),
                    syllable=np.array(a[5], np.int32), phrase=np.array(a[6], np.int32))


def _consonant(rows, c, t, rng, strength, syl, phrase, coda=False):
    sr = SAMPLE_RATE
    scale = 0.8 if coda else 1.0
    if c in PLOSIVES:
        n = int(rng.uniform(0.05, 0.08) * scale * sr)
        rows.append((c, t, t + n, strength, False, syl, phrase))
        t += n
        n = int(rng.uniform(0.03, 0.05) * sr)
        rows.append((c, t, t + n, strength, True, syl, phrase))
        return t + n
    if c in NASALS:
        n = int(rng.uniform(0.06, 0.09) * scale * sr)
    else:
        n = int(rng.uniform(0.08, 0.12) * scale * sr)
    rows.append((c, t, t + n, strength, False, syl, phrase))
    return t + n


def _resonator_sos(freqs_bw, sr: int) -> np.ndarray:
    """Cascade of 2-pole resonators with unit gain at DC, as an SOS array [K,6]."""
    sos = []
    for f, bw in freqs_bw:
        r = np.exp(-np.pi * bw / sr)
        a1, a2 = -2 * r * np.cos(2 * np.pi * f / sr), r * r
        sos.append([1 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.array(sos)


def _rms_normalise(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def synthesize_speech(num_frames: int, rng: np.random.Generator, f0_base: float = 120.0) -> SpeechTrack:
    """Synthesises ``num_frames`` frames of speech-like audio (T*640 samples at 16 kHz).

    ``rng`` drives everything (text, timing, prosody, noise); ``f0_base`` is the voice's mean F0 in Hz.
    """
    sr = SAMPLE_RATE
    T = int(num_frames)
    N = T * SAMPLES_PER_FRAME
    seg = _plan(N, rng)
    n_idx = np.arange(N)

    # Per-sample labels.
    lengths = seg.end - seg.start
    label = np.repeat(seg.phoneme, lengths)
    release = np.repeat(seg.release, lengths)
    phrase_of = np.repeat(seg.phrase, lengths)

    # F0: phrase declination, stress bumps, slow wobble.
    f0b = f0_base * float(np.exp(rng.normal(0.0, 0.05)))
    f0 = np.full(N, f0b, np.float64)
    for p in range(int(seg.phrase.max()) + 1 if seg.phrase.max() >= 0 else 0):
        sel = np.flatnonzero(seg.phrase == p)
        s0, s1 = seg.start[sel[0]], seg.end[sel[-1]]
        pos = (n_idx[s0:s1] - s0) / max(s1 - s0, 1)
        f0[s0:s1] *= 1.12 - 0.22 * pos
    vowel_rows = np.flatnonzero(np.isin(seg.phoneme, VOWELS))
    stressed_vowels = vowel_rows[seg.stress[vowel_rows] > 0]
    for i in stressed_vowels:
        c = 0.5 * (seg.start[i] + seg.end[i])
        lo, hi = max(0, int(c - 0.25 * sr)), min(N, int(c + 0.25 * sr))
        f0[lo:hi] *= 1.0 + 0.25 * seg.stress[i] * np.exp(-0.5 * ((n_idx[lo:hi] - c) / (0.07 * sr)) ** 2)
    wob = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, N // 160 + 2), 8.0)
    f0 *= 1.0 + 0.1 * np.interp(n_idx / 160.0, np.arange(len(wob)), wob)  # ~2% wobble

    # Sources: Rosenberg glottal pulses (opening 40 %, closing 16 % of the period, abrupt closure),
    # differentiated (lip radiation), with a little breath noise; and white noise.
    phase = np.cumsum(f0 / sr) % 1.0
    tp, tn = 0.40, 0.16
    flow = np.where(phase < tp, 0.5 * (1.0 - np.cos(np.pi * phase / tp)),
                    np.where(phase < tp + tn, np.cos(0.5 * np.pi * (phase - tp) / tn), 0.0))
    noise = rng.normal(0.0, 1.0, N)
    voiced_src = np.diff(flow, prepend=0.0) + 0.01 * noise

    fscale = 1.0 + 0.15 * float(np.clip((f0b - 120.0) / 100.0, 0.0, 1.0))
    classes: dict[int, np.ndarray] = {}
    for v, fs in _VOWEL_FORMANTS.items():
        # Four formants, a fixed 4.5 kHz pole (higher-pole correction), then +6 dB/octave tilt.
        sos = _resonator_sos([(f * fscale, b) for f, b in zip(fs, _BANDWIDTHS)] + [(4500.0, 400.0)], sr)
        classes[v] = _rms_normalise(np.diff(signal.sosfilt(sos, voiced_src), prepend=0.0))
    lp = signal.butter(2, 900, btype="low", fs=sr, output="sos")
    for m, fb in _NASAL_FORMANTS.items():
        y = signal.sosfilt(_resonator_sos(fb, sr), voiced_src)
        classes[m] = _rms_normalise(signal.sosfilt(lp, y))
    for c, band in _NOISE_BANDS.items():
        bp = signal.butter(2, band, btype="band", fs=sr, output="sos")
        classes[c] = _rms_normalise(signal.sosfilt(bp, noise))
    classes[_ASPIRATION] = _rms_normalise(signal.sosfilt(signal.butter(2, [700, 5000], btype="band", fs=sr,
                                                                        output="sos"), noise))

    # Gains per class and sample, then smoothed (about 8 ms) to avoid clicks.
    seg_stress = np.repeat(seg.stress, lengths)
    syl_of = np.repeat(seg.syllable, lengths)
    last_syl = {int(p): int(seg.syllable[seg.phrase == p].max()) for p in np.unique(seg.phrase) if p >= 0}
    final = np.zeros(N, bool)
    for p, s_ in last_syl.items():
        final |= (phrase_of == p) & (syl_of == s_)
    level = (1.0 + 0.8 * seg_stress) * np.where(final, 0.75, 1.0)
    gains = {v: 1.0 for v in VOWELS} | {6: 0.32, 7: 0.28, 11: 0.22, 12: 0.10}
    out = np.zeros(N)
    for c, y in classes.items():
        if c == _ASPIRATION:
            w = release.astype(np.float64)
            # Aspiration follows a 15 ms burst inside each release segment.
            burst = np.zeros(N, bool)
            for i in np.flatnonzero(seg.release):
                burst[seg.start[i]:seg.start[i] + int(0.015 * sr)] = True
            w = (w - burst) * 0.12
        elif c in PLOSIVES:
            burst = np.zeros(N)
            for i in np.flatnonzero(seg.release & (seg.phoneme == c)):
                burst[seg.start[i]:seg.start[i] + int(0.015 * sr)] = 0.4 if c == 8 else 0.55
            w = burst
        else:
            w = (label == c) * gains[c]
        if not np.any(w):
            continue
        w = ndimage.uniform_filter1d(ndimage.uniform_filter1d(w * level, 96), 96)
        out += w * y
    peak = float(np.max(np.abs(out)))
    if peak > 0:
        out *= 0.8 / peak
    out += 3e-4 * rng.normal(0.0, 1.0, N)
    audio = np.clip(out, -1.0, 1.0).astype(np.float32)

    # Per-frame views.
    centres = np.arange(T) * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2
    phon_f = label[centres].astype(np.int32)
    voiced = np.isin(phon_f, VOWELS + NASALS)
    f0_f = np.where(voiced, f0[centres], 0.0).astype(np.float32)
    speaking = (phrase_of[centres] >= 0)
    for p in range(int(seg.phrase.max()) + 1 if seg.phrase.max() >= 0 else 0):
        sel = np.flatnonzero(seg.phrase == p)
        speaking |= (centres >= seg.start[sel[0]]) & (centres < seg.end[sel[-1]])
    stress_f = np.zeros(T, np.float32)
    strength_f = np.zeros(T, np.float32)
    onsets = seg.start[stressed_vowels]
    fidx = np.minimum(onsets // SAMPLES_PER_FRAME, T - 1)
    stress_f[fidx] = 1.0
    strength_f[fidx] = seg.stress[stressed_vowels]
    energy = np.sqrt(np.mean(audio.reshape(T, SAMPLES_PER_FRAME).astype(np.float64) ** 2, axis=1))
    return SpeechTrack(audio=audio, segments=seg, phoneme=phon_f, stress=stress_f, stress_strength=strength_f,
                       speaking=speaking.astype(np.float32), f0=f0_f, energy=energy.astype(np.float32),
                       stress_onsets=onsets / sr,
                       stress_levels=seg.stress[stressed_vowels].astype(np.float64))
