"""Audio loading and the official mel front ends (data_pipelines/audio.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from data_pipelines import audio as A
from tests.conftest import require_shared


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_hz(y: np.ndarray, sr: int = A.SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def _write_av(path, fmt: str, rate: int, seconds: float, freq: float, video: bool) -> None:
    """An AAC stereo track (and optionally a tiny MPEG-4 video stream) written with PyAV."""
    import av

    x = _sine(freq, rate, seconds)
    with av.open(str(path), "w", format=fmt) as c:
        v = None
        if video:
            v = c.add_stream("mpeg4", rate=25)
            v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "stereo"
        for i in range(0, len(x), 1024):
            blk = np.stack([x[i:i + 1024], x[i:i + 1024]])
            fr = av.AudioFrame.from_ndarray(blk, format="fltp", layout="stereo")
            fr.sample_rate, fr.pts = rate, i
            for pkt in a.encode(fr):
                c.mux(pkt)
        if v is not None:
            for _ in range(int(seconds * 25)):
                img = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                for pkt in v.encode(img):
                    c.mux(pkt)
            for pkt in v.encode():
                c.mux(pkt)
        for pkt in a.encode():
            c.mux(pkt)


# ----------------------------------------------------------------------------- shared assets

def test_monalisa_mp3_equals_official_load():
    path = require_shared("assets", "gohd_examples", "audios", "monalisa.mp3")
    ref = np.load(require_shared("reference", "audio_features", "io.npz"))["wav_16k"]
    y = A.load_audio(path)
    assert y.dtype == np.float32 and y.shape == ref.shape == (169920,)
    assert np.abs(y - ref).max() <= 1e-6
    assert A.num_video_frames(len(y)) == 265


def test_sing_wav_44k1_24bit_resamples_to_16k():
    path = require_shared("assets", "gohd_examples", "audios", "sing.wav")
    info = sf.info(str(path))
    assert (info.samplerate, info.frames) == (44100, 352800)
    y = A.load_audio(path)
    assert y.shape == (128000,)  # 8.000 s at 16 kHz
    assert A.num_video_frames(len(y)) == 200
    assert np.isfinite(y).all() and 0.01 < np.abs(y).max() <= 1.0


def test_features_from_oracle_mel_are_exact_slices():
    """The per-frame slicers reproduce the official windows and conditions from oracle mels."""
    io = np.load(require_shared("reference", "audio_features", "io.npz"))
    t = A.num_video_frames(len(io["wav_16k"]))
    np.testing.assert_array_equal(A.frame_mel_windows(io["mel_wav2lip"], t), io["indiv_mels"])
    np.testing.assert_array_equal(A.frame_cond_release(io["mel_wav2lip"], t), io["diffusion_cond"])
    np.testing.assert_array_equal(A.frame_cond_100hz(io["mel_audioconfig"], t),
                                  io["diffusion_cond_audioconfig_100hz"])


# ----------------------------------------------------------------------------- generated files

def test_wav_48k_stereo_is_averaged_and_resampled(tmp_path):
    left, right = _sine(440, 48000, 1.0, 0.4), _sine(440, 48000, 1.0, 0.2)
    sf.write(tmp_path / "st.wav", np.stack([left, -right], axis=1), 48000, subtype="FLOAT")
    y = A.load_audio(tmp_path / "st.wav")
    assert y.shape == (16000,) and y.dtype == np.float32
    expected = _sine(440, 16000, 1.0, 0.1)  # (0.4 - 0.2) / 2 at 440 Hz
    core = slice(400, -400)  # away from the resampler's edges
    assert np.abs(y[core] - expected[core]).max() < 2e-3


def test_8bit_pcm_wav(tmp_path):
    x = _sine(300, 16000, 0.5)
    sf.write(tmp_path / "u8.wav", x, 16000, subtype="PCM_U8")
    assert sf.info(str(tmp_path / "u8.wav")).subtype == "PCM_U8"
    y = A.load_audio(tmp_path / "u8.wav")
    assert y.shape == x.shape
    assert np.abs(y - x).max() <= 1 / 128 + 1e-6  # 8-bit quantisation step


def test_flac_22k05(tmp_path):
    x = _sine(500, 22050, 0.7)
    sf.write(tmp_path / "a.flac", x, 22050)
    y = A.load_audio(tmp_path / "a.flac")
    assert y.shape == (math.ceil(len(x) * 16000 / 22050),)
    assert abs(_dominant_hz(y) - 500) < 3


def test_m4a_aac(tmp_path):
    _write_av(tmp_path / "a.m4a", "mp4", 44100, 1.0, 440, video=False)
    y = A.load_audio(tmp_path / "a.m4a")
    assert abs(len(y) - 16000) < 0.05 * 16000
    assert abs(_dominant_hz(y) - 440) < 3
    assert 0.2 < np.abs(y).max() < 0.4


@pytest.mark.parametrize("name,fmt,rate", [("clip.mkv", "matroska", 44100),
                                           ("clip.mp4", "mp4", 48000)])
def test_audio_track_of_video(tmp_path, name, fmt, rate):
    _write_av(tmp_path / name, fmt, rate, 1.0, 660, video=True)
    y = A.load_audio(tmp_path / name)
    assert abs(len(y) - 16000) < 0.05 * 16000  # AAC priming may add a few ms
    assert abs(_dominant_hz(y) - 660) < 3


def test_silence_gives_finite_features(tmp_path):
    sf.write(tmp_path / "sil.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    y = A.load_audio(tmp_path / "sil.wav")
    feats = A.audio_features(y)
    for name, arr in feats.items():
        assert np.isfinite(arr).all(), name
    assert (feats["mel_wav2lip"] == -4).all() and (feats["mel_audioconfig"] == 0).all()
    assert (feats["wav_rms_normalized"] == 0).all()


def test_very_short_audio(tmp_path):
    sf.write(tmp_path / "short.wav", _sine(440, 16000, 0.02), 16000)  # 320 samples < 640
    with pytest.raises(A.AudioError, match="shorter than one 25 fps video frame") as err:
        A.load_audio(tmp_path / "short.wav")
    assert str(tmp_path / "short.wav") in str(err.value)
    y = A.load_audio(tmp_path / "short.wav", allow_short=True)
    feats = A.audio_features(y)  # zero video frames, still well-formed
    assert feats["indiv_mels"].shape == (0, 80, 16)
    assert feats["diffusion_cond"].shape == (0, 320)
    assert feats["diffusion_cond_audioconfig_100hz"].shape == (0, 320)
    assert all(np.isfinite(v).all() for v in feats.values())


def _make_bad_files(tmp_path):
    import av

    good = tmp_path / "good.wav"
    sf.write(good, _sine(440, 16000, 0.5), 16000, subtype="PCM_16")
    files = {
        "text.wav": b"this is not audio\n" * 50,
        "notes.txt": b"hello\n" * 50,
        "random.mp3": np.random.default_rng(0).bytes(20000),
        "truncated.wav": good.read_bytes()[:30],
        "empty.wav": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with av.open(str(tmp_path / "silent_video.mp4"), "w") as c:  # video stream, no audio
        v = c.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            for pkt in v.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8),
                                                           format="rgb24")):
                c.mux(pkt)
        for pkt in v.encode():
            c.mux(pkt)
    return [*files, "silent_video.mp4", "missing.wav", "."]


def test_bad_files_give_one_line_audio_error(tmp_path):
    for name in _make_bad_files(tmp_path):
        path = tmp_path / name
        with pytest.raises(A.AudioError) as err:
            A.load_audio(path)
        msg = str(err.value)
        assert msg.startswith(str(path)), (name, msg)
        assert "\n" not in msg, (name, msg)
    with pytest.raises(A.AudioError, match="no audio track"):
        A.load_audio(tmp_path / "silent_video.mp4")
    with pytest.raises(A.AudioError, match="text file"):
        A.load_audio(tmp_path / "notes.txt")
    assert issubclass(A.AudioError, ValueError)


# ----------------------------------------------------------------------------- shapes and slicing

@pytest.mark.parametrize("frames", [1, 5, 7, 25, 26])
def test_feature_shapes(frames):
    wav = np.random.default_rng(frames).uniform(-0.5, 0.5, frames * 640).astype(np.float32)
    f = A.audio_features(wav)
    assert f["wav_cropped"].shape == f["wav_preemphasized"].shape == (frames * 640,)
    assert f["mel_wav2lip"].shape == (1 + (frames * 16) // 5, 80)  # 1 + floor(3.2 T)
    if frames % 5 == 0:
        assert f["mel_wav2lip"].shape[0] == 1 + 16 * frames // 5
    assert f["mel_audioconfig"].shape == (1 + 4 * frames, 80)
    assert f["indiv_mels"].shape == (frames, 80, 16)
    assert f["diffusion_cond"].shape == f["diffusion_cond_audioconfig_100hz"].shape == (frames, 320)
    assert f["mel_basis_wav2lip"].shape == (80, 401)
    assert f["mel_basis_audioconfig"].shape == (80, 641)
    assert -4 <= f["mel_wav2lip"].min() and f["mel_wav2lip"].max() <= 4
    assert 0 <= f["mel_audioconfig"].min() and f["mel_audioconfig"].max() <= 1
    assert all(v.dtype == np.float32 for v in f.values())


def test_num_frames_and_crop():
    assert A.SAMPLES_PER_FRAME == 640
    counts = [A.num_video_frames(n) for n in (0, 639, 640, 1279, 1280, 169920)]
    assert counts == [0, 0, 1, 1, 2, 265]
    wav = np.arange(1300, dtype=np.float32)
    np.testing.assert_array_equal(A.crop_to_frames(wav), wav[:1280])
    assert A.crop_to_frames(wav[:639]).shape == (0,)


def test_frame_mel_windows_indexing():
    mel = np.repeat(np.arange(40, dtype=np.float32)[:, None], 80, axis=1)  # row r holds r
    w = A.frame_mel_windows(mel, 12)
    assert w.shape == (12, 80, 16)
    # frame 0 starts at int(80 * -2/25) = -6 (clamped to 0); frame 1 at -3; frame 7 at 16.
    np.testing.assert_array_equal(w[0, 0], np.clip(np.arange(-6, 10), 0, 39))
    np.testing.assert_array_equal(w[1, 0], np.clip(np.arange(-3, 13), 0, 39))
    np.testing.assert_array_equal(w[7, 0], np.arange(16, 32))
    np.testing.assert_array_equal(w[11, 0], np.clip(np.arange(28, 44), 0, 39))  # clamped at end
    # Only some windows (what the samplers ask for): the same rows as slicing the full table.
    np.testing.assert_array_equal(A.frame_mel_windows(mel, 12, frames=slice(3, 9)), w[3:9])
    np.testing.assert_array_equal(A.frame_mel_windows(mel, 12, frames=[11, 0]), w[[11, 0]])


def test_frame_conds_alignment():
    mel = np.repeat(np.arange(10, dtype=np.float32)[:, None], 80, axis=1)
    rel = A.frame_cond_release(mel, 4).reshape(4, 4, 80)[:, :, 0]
    np.testing.assert_array_equal(rel, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]])
    with pytest.raises(ValueError):
        A.frame_cond_release(mel, 6)  # would need 24 rows of a doubled 20-row mel
    al = A.frame_cond_100hz(mel, 3).reshape(3, 4, 80)[:, :, 0]
    np.testing.assert_array_equal(al, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]])  # edge-clamped


def test_mel_100hz_is_level_invariant():
    wav = np.random.default_rng(3).normal(0, 0.1, 8000).astype(np.float32)
    np.testing.assert_allclose(A.mel_100hz(wav), A.mel_100hz(0.25 * wav), atol=1e-5)
    assert not np.allclose(A.wav2lip_mel(wav), A.wav2lip_mel(0.25 * wav), atol=1e-2)


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large for input signal")  # the reference, on 1-199 samples
@pytest.mark.parametrize("n", [1, 199, 200, 3 * 16000 + 17, 40 * 16000 + 5])
def test_chunked_stft_equals_one_whole_clip_stft(n):
    """Both mel front ends run their STFT a chunk of frames at a time (flat memory for long
    audio); each frame's FFT sees the samples of librosa's one centred STFT of the whole clip,
    so the mel power equals it to the last bits (BLAS sums the mel filters in another order for
    another number of frames: 1e-15 relative)."""
    import librosa

    wav = (np.random.default_rng(n).normal(size=n) * 0.1).astype(np.float32)
    for y, n_fft, hop, win, basis, k in (
            (wav, A.W2L_N_FFT, A.W2L_HOP, A.W2L_WIN, A.wav2lip_mel_basis(), A.W2L_PREEMPHASIS),
            (A.rms_normalize(wav), A.AC_N_FFT, A.AC_HOP, A.AC_N_FFT, A.audioconfig_mel_basis(), None)):
        x = A.preemphasis(y) if k is not None else y
        whole = np.dot(basis, np.abs(librosa.stft(y=x, n_fft=n_fft, hop_length=hop, win_length=win, center=True,
                                                  pad_mode="constant")))
        for chunk in (7, 1024):
            got = A._mel_power(y, n_fft, hop, win, basis, preemphasis_k=k, chunk=chunk)
            assert got.dtype == whole.dtype and got.shape == whole.shape == (80, 1 + n // hop)
            np.testing.assert_allclose(got, whole, rtol=1e-12 if got.dtype == np.float64 else 1e-6, atol=0)
