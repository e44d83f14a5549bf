"""Tests of the synthetic talking-head generator (data_pipelines/synthetic): determinism, the data
contract, and that pictures, controls and audio respond to the descriptors the way README.md says."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.synthetic import motion, render, speech
from data_pipelines.synthetic.generator import (SAMPLES_PER_FRAME, SynthConfig, generate_clip,
                                                generate_speech)
from data_pipelines.synthetic.identity import make_identity


def _desc(**kw) -> np.ndarray:
    names = {"jaw": render.EXP_JAW, "width": render.EXP_WIDTH, "round": render.EXP_ROUND,
             "smile": render.EXP_SMILE, "brow": render.EXP_BROW_RAISE, "furrow": render.EXP_BROW_FURROW,
             "lid": render.EXP_EYELID, "pitch": render.PITCH, "yaw": render.YAW, "roll": render.ROLL,
             "tx": render.TX, "ty": render.TY, "tz": render.TZ, "gh": render.GAZE_H, "gv": render.GAZE_V}
    d = render.neutral_descriptor()
    for k, v in kw.items():
        d[names[k]] = v
    return d


def _lum(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _eye_boxes(ident, d, size, pad=1.5):
    """Pixel boxes (r0, r1, c0, c1) around each eye, from the eye-corner landmarks of the open eye."""
    lm = render.landmarks_to_pixels(render.face_landmarks(ident, d), size)
    boxes = []
    for a, b in ((36, 39), (42, 45)):
        c0, c1 = sorted((lm[a, 0], lm[b, 0]))
        r = 0.5 * (lm[a, 1] + lm[b, 1])
        half_h = 0.5 * (c1 - c0)
        boxes.append((int(r - half_h), int(np.ceil(r + half_h)) + 1,
                      int(c0 - pad), int(np.ceil(c1 + pad)) + 1))
    return boxes


# ----------------------------------------------------------------------------- contract
def test_generate_clip_is_deterministic_and_clips_differ():
    cfg = SynthConfig(size=32, seconds=1.0, num_identities=3, seed=5)
    a, b = generate_clip(cfg, 4), generate_clip(cfg, 4)
    for key in ("frames", "audio", "descriptors", "controls"):
        assert a[key].tobytes() == b[key].tobytes(), key
    assert a["aux"].keys() == b["aux"].keys()
    for key in a["aux"]:
        assert a["aux"][key].tobytes() == b["aux"][key].tobytes(), key
    c = generate_clip(cfg, 5)
    assert not np.array_equal(a["audio"], c["audio"])
    assert not np.array_equal(a["descriptors"], c["descriptors"])
    other_seed = generate_clip(SynthConfig(size=32, seconds=1.0, num_identities=3, seed=6), 4)
    assert not np.array_equal(a["frames"], other_seed["frames"])


@pytest.mark.parametrize("seconds,size", [(1.02, 32), (0.2, 48)])
def test_clip_shapes_dtypes_and_ids(seconds, size):
    cfg = SynthConfig(size=size, seconds=seconds, num_identities=3, seed=7)
    clip = generate_clip(cfg, 4)
    T = round(seconds * 25)
    assert clip["clip_id"] == "synth-s7-c000004"
    assert clip["identity_id"] == "synth-s7-id0001"  # 4 % 3
    assert clip["source_id"] == "synthetic"
    assert clip["frames"].shape == (T, size, size, 3) and clip["frames"].dtype == np.uint8
    assert clip["audio"].shape == (T * SAMPLES_PER_FRAME,) and clip["audio"].dtype == np.float32
    assert np.abs(clip["audio"]).max() <= 1.0
    assert clip["descriptors"].shape == (T, 72) and clip["descriptors"].dtype == np.float32
    assert clip["controls"].shape == (T, 21) and clip["controls"].dtype == np.float32
    for key, arr in clip["aux"].items():
        assert arr.shape[0] == T, key
        assert arr.dtype in (np.float32, np.int32), key
    assert clip["aux"]["phoneme"].dtype == np.int32
    assert clip["aux"]["landmarks"].shape == (T, 68, 2)
    for key in ("audio", "descriptors", "controls"):
        assert np.all(np.isfinite(clip[key]))
    # Only the documented expression drivers are used.
    assert np.all(clip["descriptors"][:, render.NUM_EXPRESSION_DRIVERS:64] == 0)


def test_identities_are_deterministic_and_distinct():
    assert make_identity(3, 2) == make_identity(3, 2)
    ids = [make_identity(0, k) for k in range(6)]
    assert len({i.skin for i in ids}) == 6
    assert len({i.hair_style for i in ids}) >= 2
    imgs = [render.render_frame(i, render.neutral_descriptor(), 48) for i in ids[:3]]
    assert np.abs(imgs[0].astype(int) - imgs[1].astype(int)).mean() > 5


def test_render_any_size():
    ident = make_identity(0, 1)
    for size in (32, 57, 100, 256):
        img = render.render_frame(ident, render.neutral_descriptor(), size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert img.std() > 10  # not blank
    frames = render.render_frames(ident, np.stack([_desc(), _desc(jaw=1.0)]), 40)
    assert frames.shape == (2, 40, 40, 3)
    assert np.array_equal(frames[0], render.render_frame(ident, _desc(), 40))


# ----------------------------------------------------------------------------- pixels follow descriptors
def test_jaw_opening_darkens_the_mouth():
    ident = make_identity(0, 0)
    size = 128
    closed = render.render_frame(ident, _desc(), size)
    opened = render.render_frame(ident, _desc(jaw=1.2), size)
    lm = render.landmarks_to_pixels(render.face_landmarks(ident, _desc(jaw=1.2)), size)
    mouth = lm[48:68]
    r0, r1 = int(mouth[:, 1].min()) - 1, int(mouth[:, 1].max()) + 2
    c0, c1 = int(mouth[:, 0].min()) - 1, int(mouth[:, 0].max()) + 2
    lc, lo = _lum(closed)[r0:r1, c0:c1], _lum(opened)[r0:r1, c0:c1]
    assert (lc - lo > 25).sum() > 40   # a dark mouth interior appears (about 100 px here)
    assert np.abs(lo - lc).mean() > 10
    # The open mouth shows up in the inner-lip landmarks too.
    lm0 = render.landmarks_to_pixels(render.face_landmarks(ident, _desc()), size)
    assert lm[66, 1] - lm[62, 1] > lm0[66, 1] - lm0[62, 1] + 5


@pytest.mark.parametrize("identity", [0, 5])
@pytest.mark.parametrize("axis,key", [(0, "gh"), (1, "gv")])
def test_gaze_moves_the_iris(axis, key, identity):
    ident = make_identity(0, identity)
    size = 160
    lum_p = _lum(render.render_frame(ident, _desc(**{key: 0.4}), size))
    lum_m = _lum(render.render_frame(ident, _desc(**{key: -0.4}), size))
    w_p = np.clip(lum_m - lum_p, 0, None)  # where the + render is darker: its iris
    w_m = np.clip(lum_p - lum_m, 0, None)
    assert w_p.sum() > 500 and w_m.sum() > 500
    rows, cols = np.mgrid[:size, :size]
    coord = cols if axis == 0 else rows
    c_p, c_m = (w_p * coord).sum() / w_p.sum(), (w_m * coord).sum() / w_m.sum()
    # + horizontal gaze = looking to the image's left (smaller columns); + vertical = up (smaller rows).
    assert c_p < c_m - 1.0
    # Only the eyes change.
    lm = render.landmarks_to_pixels(render.face_landmarks(ident, _desc()), size)
    eye_rows = (rows > lm[36:48, 1].min() - 8) & (rows < lm[36:48, 1].max() + 8)
    assert w_p[~eye_rows].sum() < 0.02 * w_p.sum()


def _white_mask(img):
    """Eye whites: unsaturated, not dark pixels (skin, lips, iris and lashes fail one of the two)."""
    x = img.astype(np.float64)
    mx, mn = x.max(-1), x.min(-1)
    return ((mx - mn) < 0.12 * mx) & (_lum(img) > 90)


def _eye_x(ident, d, size):
    """Mean column of the pixels that change when the eyes close: where the eyes are."""
    shut = d.copy()
    shut[render.EXP_EYELID] = 1.0
    diff = np.abs(_lum(render.render_frame(ident, d, size)) - _lum(render.render_frame(ident, shut, size)))
    cols = np.arange(size)[None, :]
    return (diff * cols).sum() / diff.sum()


def test_yaw_and_translation_shift_the_face():
    ident = make_identity(0, 3)
    size = 128
    x0 = _eye_x(ident, _desc(), size)
    assert _eye_x(ident, _desc(yaw=0.4), size) > x0 + 3   # + yaw turns the face to the image's right
    assert _eye_x(ident, _desc(yaw=-0.4), size) < x0 - 3
    assert _eye_x(ident, _desc(tx=0.05), size) > x0 + 2   # + x translation: right (0.05 = 3.2 px)
    assert abs(_eye_x(ident, _desc(pitch=0.2), size) - x0) < 1  # pitch does not move it sideways
    lm0 = render.landmarks_to_pixels(render.face_landmarks(ident, _desc()), size)
    lm_yaw = render.landmarks_to_pixels(render.face_landmarks(ident, _desc(yaw=0.4)), size)
    lm_pitch = render.landmarks_to_pixels(render.face_landmarks(ident, _desc(pitch=0.3)), size)
    assert lm_yaw[30, 0] > lm0[30, 0] + 5     # nose tip moves right
    assert lm_pitch[30, 1] > lm0[30, 1] + 3   # + pitch: the nose goes down


def test_eyelid_closure_hides_the_eyes_and_drops_the_blink_ratio():
    ident = make_identity(0, 4)
    size = 128
    boxes = _eye_boxes(ident, _desc(), size)

    def whites(img):
        m = _white_mask(img)
        return sum(m[r0:r1, c0:c1].sum() for r0, r1, c0, c1 in boxes)

    open_img = render.render_frame(ident, _desc(), size)
    shut_img = render.render_frame(ident, _desc(lid=1.0), size)
    assert whites(open_img) > 12 and whites(shut_img) < 0.1 * whites(open_img)
    # The iris is gone: no pixel of the eye boxes keeps the open eye's darkest (pupil) value.
    lum_o, lum_s = _lum(open_img), _lum(shut_img)
    for r0, r1, c0, c1 in boxes:
        assert lum_s[r0:r1, c0:c1].min() > lum_o[r0:r1, c0:c1].min() + 5
    ear_open = render.controls_from_descriptor(ident, _desc())[0]
    ear_half = render.controls_from_descriptor(ident, _desc(lid=0.5))[0]
    ear_shut = render.controls_from_descriptor(ident, _desc(lid=1.0))[0]
    assert 0.25 < ear_open < 0.38 and 0.015 < ear_shut < 0.06 and ear_shut < ear_half < ear_open


def test_brow_controls_follow_brow_raise_and_furrow():
    ident = make_identity(0, 5)
    c0 = render.controls_from_descriptor(ident, _desc())
    up = render.controls_from_descriptor(ident, _desc(brow=1.0))
    fur = render.controls_from_descriptor(ident, _desc(furrow=1.0))
    ys = slice(2, 21, 2)   # y of the 10 brow points
    xs = slice(1, 21, 2)
    assert np.all(up[ys] > c0[ys] + 0.03)
    assert np.allclose(up[0], c0[0])  # brows do not change the blink ratio
    # Furrow: the inner points (19, 20 of the left brow; 22, 23 of the right) go down and inwards.
    x0, y0, xf, yf = c0[xs], c0[ys], fur[xs], fur[ys]
    inner = [3, 4, 5, 6]  # indices among the 10 points (iBUG 20, 21, 22, 23)
    assert np.all(yf[inner] < y0[inner] - 0.02)
    assert np.all(np.abs(xf[inner]) < np.abs(x0[inner]))
    # The left brow sits left of the face centre, above the eye line, roughly 0.2-1.3 IOD out.
    assert np.all(x0[:5] < 0) and np.all(x0[5:] > 0) and np.all(y0 > 0.1)
    # Brow raise lifts the rendered brows: darkness moves up above the eyes.
    size = 128
    lm = render.landmarks_to_pixels(render.face_landmarks(ident, _desc()), size)
    lm_up = render.landmarks_to_pixels(render.face_landmarks(ident, _desc(brow=1.0)), size)
    r0, r1 = int(lm_up[17:27, 1].min()) - 4, int(lm[36:48, 1].min()) - 2
    c0_, c1_ = int(lm[17:27, 0].min()), int(lm[17:27, 0].max()) + 1
    row_neutral = np.argmin(_lum(render.render_frame(ident, _desc(), size))[r0:r1, c0_:c1_].mean(1))
    row_raised = np.argmin(_lum(render.render_frame(ident, _desc(brow=1.0), size))[r0:r1, c0_:c1_].mean(1))
    assert row_raised <= row_neutral - 2  # the darkest row (the brows) moves up


def test_controls_from_landmarks_is_similarity_invariant():
    ident = make_identity(0, 6)
    d = _desc(brow=0.5, lid=0.3, yaw=0.2, roll=0.15)
    lm = render.landmarks_to_pixels(render.face_landmarks(ident, d), 256)
    c = render.controls_from_landmarks(lm)
    th = 0.4
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = 1.7 * lm @ rot.T + np.array([30.0, -12.0])
    assert np.allclose(render.controls_from_landmarks(moved), c, atol=1e-5)
    assert np.allclose(render.controls_from_descriptor(ident, d), c, atol=1e-5)
    # Head roll is removed by the eye-line frame: rolled and upright brows agree.
    upright = render.controls_from_descriptor(ident, _desc(brow=0.5, lid=0.3))
    rolled = render.controls_from_descriptor(ident, _desc(brow=0.5, lid=0.3, roll=0.3))
    assert np.allclose(upright, rolled, atol=1e-4)


def test_renders_are_antialiased():
    """A 64 px render matches a 4x4 box-filtered 256 px render far better than point sampling does."""
    ident = make_identity(0, 0)
    d = _desc(jaw=0.6, yaw=0.2, roll=0.1)
    small = render.render_frame(ident, d, 64).astype(np.float64)
    big = render.render_frame(ident, d, 256).astype(np.float64)
    ref = big.reshape(64, 4, 64, 4, 3).mean((1, 3))
    point = big[1::4, 1::4]  # one sub-pixel per pixel: a hard-edged (aliased) rendering
    edges = big.reshape(64, 4, 64, 4, 3).std((1, 3)).max(-1) > 25
    assert edges.sum() > 50
    err_aa = np.abs(small - ref)[edges].mean()
    err_point = np.abs(point - ref)[edges].mean()
    assert err_aa < 0.6 * err_point
    # Edge pixels take intermediate values, not just the two sides' colours.
    lum = _lum(small)
    row = lum[32]
    steps = np.abs(np.diff(row))
    assert np.sum((steps > 3) & (steps < 40)) >= 2


# ----------------------------------------------------------------------------- audio and motion
def _speech_and_motion(seed, clip, seconds=6.0):
    cfg = SynthConfig(size=32, seconds=seconds, seed=seed)
    sp = generate_speech(cfg, clip)
    return sp, motion.generate_motion(sp, seed, clip)


def test_mouth_follows_the_audio():
    corrs = []
    jaw_closed, jaw_open = [], []
    for clip in range(4):
        sp, mo = _speech_and_motion(0, clip)
        jaw = mo.descriptors[:, render.EXP_JAW]
        corrs.append(np.corrcoef(np.log(sp.energy + 1e-4), jaw)[0, 1])
        jaw_closed.append(jaw[np.isin(sp.phoneme, (0, 6))])
        jaw_open.append(jaw[sp.phoneme == speech.PHONEME_ID["a"]])
        # Lips close during plosive closures and silence.
    assert min(corrs) > 0.3, corrs
    assert np.mean(np.concatenate(jaw_closed)) < 0.15
    assert np.mean(np.concatenate(jaw_open)) > 0.6


def _band_share(sp, ph, lo=1800.0, hi=3000.0):
    """Per-segment share of the spectrum between lo and hi Hz, for segments of phoneme ``ph``."""
    seg = sp.segments
    out = []
    for i in np.flatnonzero((seg.phoneme == speech.PHONEME_ID[ph]) & ~seg.release):
        x = sp.audio[seg.start[i]:seg.end[i]].astype(np.float64)
        if len(x) < 512:
            continue
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
        f = np.fft.rfftfreq(len(x), 1 / 16000)
        out.append(spec[(f > lo) & (f < hi)].sum() / spec.sum())
    return out


def test_audio_has_pauses_stress_and_distinct_sounds():
    sps = [_speech_and_motion(1, c)[0] for c in range(3)]
    sp = sps[0]
    assert sp.speaking.mean() > 0.4 and (sp.speaking == 0).sum() > 10
    assert sp.energy[sp.speaking == 0].mean() < 0.2 * sp.energy[sp.speaking == 1].mean()
    # /i/ has a high second formant, /u/ a low one; /s/ is high-frequency noise.
    share_i = np.mean(sum((_band_share(s, "i") for s in sps), []))
    share_u = np.mean(sum((_band_share(s, "u") for s in sps), []))
    assert share_i > 3 * share_u
    share_s = np.mean(sum((_band_share(s, "s", 4000, 8000) for s in sps), []))
    share_a = np.mean(sum((_band_share(s, "a", 4000, 8000) for s in sps), []))
    assert share_s > 0.5 > share_a
    # Stressed vowels are louder than unstressed ones (frames 1-2 after a stressed onset).
    seg_rms = {True: [], False: []}
    for s in sps:
        seg = s.segments
        for i in np.flatnonzero((seg.phoneme >= 1) & (seg.phoneme <= 5)):
            x = s.audio[seg.start[i]:seg.end[i]].astype(np.float64)
            seg_rms[bool(seg.stress[i] > 0)].append(np.sqrt(np.mean(x * x)))
    assert np.mean(seg_rms[True]) > 1.3 * np.mean(seg_rms[False])
    # Plosive closures are silent.
    for s in sps:
        seg = s.segments
        for i in np.flatnonzero(np.isin(seg.phoneme, speech.PLOSIVES) & ~seg.release):
            mid = s.audio[seg.start[i] + 160:seg.end[i] - 160]
            assert np.sqrt(np.mean(mid.astype(np.float64) ** 2)) < 0.01


def test_blinks_and_gaze_are_independent_of_the_audio():
    seed, clip = 3, 7
    sp_a, mo_a = _speech_and_motion(seed, clip)
    sp_b = generate_speech(SynthConfig(size=32, seconds=6.0, seed=seed + 100), clip)  # other audio
    mo_b = motion.generate_motion(sp_b, seed, clip)
    assert not np.array_equal(sp_a.audio, sp_b.audio)
    assert np.array_equal(mo_a.blink, mo_b.blink)
    assert np.array_equal(mo_a.descriptors[:, 70:72], mo_b.descriptors[:, 70:72])
    assert not np.array_equal(mo_a.descriptors[:, render.EXP_JAW], mo_b.descriptors[:, render.EXP_JAW])
    assert not np.array_equal(mo_a.descriptors[:, render.PITCH], mo_b.descriptors[:, render.PITCH])
    # Blinks happen every 2-6 s and last 4-8 frames.
    onsets = np.flatnonzero((mo_a.blink[1:] > 0.5) & (mo_a.blink[:-1] <= 0.5))
    assert 1 <= len(onsets) <= 4
    assert mo_a.saccade.sum() >= 1


def test_head_nods_follow_stressed_syllables():
    rises, others = [], []
    for clip in range(6):
        sp, mo = _speech_and_motion(2, clip)
        pitch = mo.descriptors[:, render.PITCH].astype(np.float64)
        delta = pitch[4:] - pitch[:-4]  # change from 4 frames before t to t
        stress = sp.stress[4:] > 0
        rises.append(delta[stress])
        others.append(delta[~stress])
    # + pitch = nose down: the head has nodded down by the time a stressed syllable starts.
    assert np.mean(np.concatenate(rises)) > np.mean(np.concatenate(others)) + 0.02
