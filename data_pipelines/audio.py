"""Audio loading and the two official GoHD mel front ends (numpy / scipy / librosa only).

Conventions
-----------
* Audio is 16 kHz mono float32 in [-1, 1] (``SAMPLE_RATE``); video runs at 25 fps (``FPS``), so
  one video frame spans ``SAMPLES_PER_FRAME = 640`` samples (40 ms).
* Every mel spectrogram here is **time-major**: ``[rows, 80]``.

The two streams (see ``reference/README.md`` section 5 and the dossier, section 3.1)
-----------------------------------------------------------------------------------
1. **Wav2Lip mel** (``wav2lip_mel``), used by the expression model through 80x16 SyncNet windows
   (``frame_mel_windows``): pre-emphasis 0.97, STFT n_fft 800 / hop 200 / win 800 (80 rows/s),
   80 Slaney mel bands 55..7600 Hz, dB - 20, symmetric normalisation clipped to [-4, 4].
   The official ``read_audio`` computes it on the waveform *cropped* to a whole number of video
   frames (``crop_to_frames``). Computed in float64 as the official code does, returned as float32.
2. **AudioConfig mel** (``mel_100hz``): waveform RMS-normalised to 0.1, STFT n_fft 1280 / hop 160
   (100 rows/s, i.e. exactly 4 rows per video frame), 80 mel bands 125..7600 Hz, dB - 20,
   normalised to [0, 1]. Computed on the *uncropped* waveform, as the official code does.
   ``frame_cond_100hz`` slices it 4 rows per frame: the correctly aligned diffusion condition.

The release feeds the pose/gaze diffusion models something else: the 80 Hz Wav2Lip mel read as if it
were 100 Hz, through a self-concatenated copy (``frame_cond_release``). That condition runs 1.25x
faster than the video and wraps round to the start of the audio from frame ~0.8*T on. Use it only
to reproduce the released checkpoints; ``audio_features(wav)`` returns both.

Frame count (the official ``parse_audio_length``): ``T = int(num_samples / 640.0)``, truncating,
so a trailing partial frame is dropped; the Wav2Lip stream crops the waveform to ``T * 640`` samples.

Very short audio: ``load_audio`` raises ``AudioError`` for a file shorter than one video frame
(fewer than 640 samples after resampling: no video could be made from it) unless
``allow_short=True``. The pure feature functions accept any length, including 0 samples: they then
return zero frames (``[0, 80, 16]`` windows, ``[0, 320]`` conditions) and finite mel rows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 samples = 40 ms = one video frame
NUM_MELS = 80

# Wav2Lip stream (official audio.py + syncnet_params.hparams).
W2L_N_FFT = 800
W2L_HOP = 200  # 80 mel rows per second
W2L_WIN = 800
W2L_FMIN = 55.0
W2L_FMAX = 7600.0
W2L_PREEMPHASIS = 0.97
W2L_MAX_ABS = 4.0
W2L_WINDOW = 16  # mel rows per SyncNet window (0.2 s)
W2L_ROWS_PER_SECOND = SAMPLE_RATE // W2L_HOP  # 80

# AudioConfig stream (official config/AudioConfig.py as read_audio builds it).
AC_N_FFT = 1280
AC_HOP = 160  # 100 mel rows per second
AC_FMIN = 125.0
AC_FMAX = 7600.0
AC_DESIRED_RMS = 0.1
AC_RMS_EPS = 1e-4
ROWS_PER_FRAME = SAMPLE_RATE // AC_HOP // FPS  # 4 rows of the 100 Hz mel per video frame
COND_DIM = ROWS_PER_FRAME * NUM_MELS  # 320

# Shared by both streams.
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0

# Extensions we hand straight to PyAV (libsndfile cannot read these containers).
_CONTAINER_SUFFIXES = {".mp4", ".m4a", ".m4v", ".mov", ".mkv", ".webm", ".aac", ".avi", ".3gp",
                       ".wma", ".opus"}

__all__ = [
    "SAMPLE_RATE", "FPS", "SAMPLES_PER_FRAME", "NUM_MELS", "ROWS_PER_FRAME", "COND_DIM",
    "AudioError", "load_audio", "num_video_frames", "crop_to_frames", "preemphasis",
    "wav2lip_mel_basis", "audioconfig_mel_basis", "wav2lip_mel", "rms_normalize", "mel_100hz",
    "frame_mel_windows", "frame_cond_100hz", "frame_cond_release", "audio_features",
]


class AudioError(ValueError):
    """An audio file that cannot be used. The message is one line: file, problem, fix."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _one_line(exc: BaseException, path: Path | None = None) -> str:
    text = str(exc)
    if path is not None:  # libraries repeat the path; the message starts with it already
        text = text.replace(f"'{path}'", "the file").replace(str(path), "the file")
    text = " ".join(text.split()) or type(exc).__name__
    return text[:200]


def _looks_like_text(path: Path) -> bool:
    """True for a non-empty file whose first 4 KiB is NUL-free UTF-8 (no audio format is)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _NoAudioTrack(Exception):
    """The container opened but holds no (decodable) audio stream."""


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """libsndfile decode, as ``librosa.load`` does it: float32, shape [channels, n]."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        sr = int(f.samplerate)
        y = f.read(dtype="float32", always_2d=True).T
    return np.ascontiguousarray(y), sr


def _read_pyav(path: Path) -> tuple[np.ndarray, int]:
    """FFmpeg decode of the first audio stream of any container: float32 [channels, n]."""
    import av

    with av.open(str(path), mode="r") as container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise _NoAudioTrack(f"it has no audio track (FFmpeg reads it as "
                                f"{container.format.name!r} with streams: {', '.join(kinds)})")
        stream = streams[0]
        resampler = None
        chunks: list[np.ndarray] = []
        sr = None
        for frame in container.decode(stream):
            if resampler is None:
                sr = int(frame.sample_rate)
                # Planar float at the native rate and layout: no resampling inside FFmpeg, so the
                # one resampler used everywhere is librosa's (soxr_hq).
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=sr)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
    if sr is None:
        raise _NoAudioTrack("its audio track holds no decodable samples")
    y = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
    return np.ascontiguousarray(y, dtype=np.float32), sr


def load_audio(path, sample_rate: int = SAMPLE_RATE, *, allow_short: bool = False) -> np.ndarray:
    """Decodes an audio file (or the audio track of a video) to float32 mono at ``sample_rate``.

    Args:
      path: wav / flac / ogg / mp3 (read by libsndfile, exactly as the official
        ``librosa.load(path, sr=16000)`` reads them) or m4a / aac / mp4 / mkv / mov / webm (the
        first audio stream, decoded by FFmpeg through PyAV).
      sample_rate: output rate in Hz (16000 for everything in GoHD).
      allow_short: if False (default), audio shorter than one 25 fps video frame
        (``sample_rate / 25`` samples) raises AudioError.

    Returns:
      ``[N]`` float32 samples in [-1, 1] at ``sample_rate``. Channels are averaged
      (``librosa.to_mono``); other rates are resampled with librosa's default resampler (soxr_hq),
      so the result equals ``librosa.load(path, sr=sample_rate)[0]`` for files libsndfile reads.

    Raises:
      AudioError: missing file, a file that is not audio or is corrupted, a video without an audio
        track, non-finite samples, or (unless ``allow_short``) audio shorter than one video frame.
    """
    import librosa

    p = Path(os.fspath(path))
    if not p.exists():
        raise AudioError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise AudioError(f"{p}: is a folder, not an audio file; pass the audio file inside it")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: file is empty (0 bytes); re-export or re-download it")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise AudioError(f"{p}: sample_rate must be a positive integer, got {sample_rate!r}")

    y = sr = None
    errors = []
    if p.suffix.lower() not in _CONTAINER_SUFFIXES:
        try:
            y, sr = _read_soundfile(p)
        except Exception as exc:  # libsndfile cannot read it: try FFmpeg next
            errors.append(f"libsndfile: {_one_line(exc, p)}")
    if y is None and _looks_like_text(p):
        raise AudioError(f"{p}: is a text file, not audio; pass a wav/mp3/flac/m4a file or a "
                         f"video with sound")
    if y is None:
        try:
            y, sr = _read_pyav(p)
        except _NoAudioTrack as exc:
            raise AudioError(f"{p}: {exc}; use a file with sound, or pass the audio separately") \
                from None
        except Exception as exc:
            errors.append(f"FFmpeg: {_one_line(exc, p)}")
    if y is None:
        raise AudioError(
            f"{p}: not a readable audio file, or corrupted ({'; '.join(errors)}); "
            f"convert it, e.g. `ffmpeg -i INPUT -ac 1 -ar {sample_rate} out.wav`")
    if y.shape[1] and not np.isfinite(y).all():
        raise AudioError(f"{p}: decoded samples contain NaN or Inf; the file is corrupted, "
                         f"re-export it as PCM WAV")

    mono = librosa.to_mono(y) if y.shape[0] > 1 else y[0]
    if sr != sample_rate and mono.size:
        mono = librosa.resample(mono, orig_sr=sr, target_sr=sample_rate)
    elif sr != sample_rate:
        mono = np.zeros((0,), np.float32)
    mono = np.ascontiguousarray(mono, dtype=np.float32)

    min_samples = math.ceil(sample_rate / FPS)
    if not allow_short and mono.size < min_samples:
        raise AudioError(
            f"{p}: audio is {mono.size / sample_rate:.3f} s long ({mono.size} samples at "
            f"{sample_rate} Hz), shorter than one {FPS} fps video frame ({1 / FPS:.2f} s); "
            f"provide at least {1 / FPS:.2f} s of audio")
    return mono


# --------------------------------------------------------------------------------------------
# Frames and cropping (official parse_audio_length / crop_pad_audio)
# --------------------------------------------------------------------------------------------

def num_video_frames(num_samples: int, fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames the official code makes from ``num_samples`` audio samples.

    ``int(num_samples / (sample_rate / fps))``: truncating, so a trailing partial frame is dropped
    (169,920 samples -> 265 frames; 639 samples -> 0).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return int(num_samples / (sample_rate / fps))


def crop_to_frames(wav: np.ndarray, fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Crops (or zero-pads) ``wav`` [N] to ``num_video_frames(N) * 640`` samples, dtype kept."""
    wav = np.asarray(wav)
    num_frames = num_video_frames(len(wav), fps, sample_rate)
    length = int(num_frames * (sample_rate / fps))
    if len(wav) > length:
        return wav[:length].copy()
    if len(wav) < length:  # cannot happen for lengths computed as above; kept as officially
        return np.pad(wav, [0, length - len(wav)], mode="constant", constant_values=0)
    return wav.copy()


# --------------------------------------------------------------------------------------------
# Mel front ends
# --------------------------------------------------------------------------------------------

_BASIS_CACHE: dict[tuple, np.ndarray] = {}


def _mel_basis(n_fft: int, fmin: float, fmax: float) -> np.ndarray:
    import librosa

    key = (n_fft, fmin, fmax)
    if key not in _BASIS_CACHE:
        basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=NUM_MELS, fmin=fmin,
                                    fmax=fmax)  # Slaney scale and norm, float32, as officially
        basis.setflags(write=False)
        _BASIS_CACHE[key] = basis
    return _BASIS_CACHE[key]


def wav2lip_mel_basis() -> np.ndarray:
    """[80, 401] float32 mel filterbank of the Wav2Lip stream (n_fft 800, 55..7600 Hz, Slaney)."""
    return _mel_basis(W2L_N_FFT, W2L_FMIN, W2L_FMAX).copy()


def audioconfig_mel_basis() -> np.ndarray:
    """[80, 641] float32 mel filterbank of the AudioConfig stream (n_fft 1280, 125..7600 Hz)."""
    return _mel_basis(AC_N_FFT, AC_FMIN, AC_FMAX).copy()


STFT_CHUNK_FRAMES = 1024  # STFT frames per chunk: working memory independent of the audio's length


def _mel_power(y: np.ndarray, n_fft: int, hop: int, win: int, basis: np.ndarray, *,
               preemphasis_k: float | None = None, chunk: int | None = None) -> np.ndarray:
    """``basis @ |STFT(y)|`` with librosa's centred, zero-padded framing: [n_mels, 1 + N // hop].

    The STFT runs ``chunk`` frames (default ``STFT_CHUNK_FRAMES``) at a time on the samples those
    frames cover (zeros outside the signal, as ``center=True, pad_mode="constant"``), so that a
    10-minute clip needs no more working memory than a 20-second one; each frame sees exactly the
    samples it would see in one whole-signal STFT. ``preemphasis_k``: apply ``y[n] - k y[n-1]``
    (float64, as ``preemphasis``) to the signal first, chunk by chunk.
    """
    import librosa

    chunk = int(chunk or STFT_CHUNK_FRAMES)
    y = np.asarray(y).reshape(-1)
    n, half = len(y), n_fft // 2
    frames = 1 + n // hop
    out = None
    for a in range(0, frames, chunk):
        b = min(a + chunk, frames)
        lo, hi = a * hop - half, (b - 1) * hop - half + n_fft  # the samples frames a..b-1 read
        seg = np.zeros(hi - lo, np.float64 if preemphasis_k is not None else y.dtype)
        s0, s1 = max(lo, 0), min(hi, n)
        if s1 > s0:  # pre-emphasis from one sample before the chunk, as over the whole signal
            x = (y[s0:s1] if preemphasis_k is None else
                 preemphasis(y[max(s0 - 1, 0):s1], preemphasis_k)[1 if s0 > 0 else 0:])
            seg[s0 - lo:s1 - lo] = x
        mag = np.abs(librosa.stft(y=seg, n_fft=n_fft, hop_length=hop, win_length=win, center=False))
        mel = np.dot(basis, mag)
        if out is None:
            out = np.empty((basis.shape[0], frames), mel.dtype)
        out[:, a:b] = mel
    return out


def _amp_to_db(x: np.ndarray) -> np.ndarray:
    min_level = np.exp(MIN_LEVEL_DB / 20 * np.log(10))  # a float64 scalar, as officially
    return 20 * np.log10(np.maximum(min_level, x))


def preemphasis(wav: np.ndarray, k: float = W2L_PREEMPHASIS) -> np.ndarray:
    """y[n] = x[n] - k x[n-1] (scipy ``lfilter([1, -k], [1])``); [N] -> [N] float64."""
    from scipy import signal

    wav = np.asarray(wav)
    if wav.size == 0:
        return np.zeros((0,), np.float64)
    return signal.lfilter([1, -k], [1], wav)


def wav2lip_mel(wav: np.ndarray) -> np.ndarray:
    """The official Wav2Lip ``melspectrogram`` of ``wav`` [N] (16 kHz), time-major.

    Does not crop: pass ``crop_to_frames(wav)`` to get the official ``read_audio`` mel.

    Returns:
      ``[1 + N // 200, 80]`` float32, 80 rows per second, values in [-4, 4]. Computed in float64
      (pre-emphasis -> |STFT| -> mel -> dB - 20 -> symmetric clip), exactly as the official code.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    mel = _mel_power(wav, W2L_N_FFT, W2L_HOP, W2L_WIN, _mel_basis(W2L_N_FFT, W2L_FMIN, W2L_FMAX),
                     preemphasis_k=W2L_PREEMPHASIS)  # float64 [80, M]
    s = _amp_to_db(mel) - REF_LEVEL_DB
    m = W2L_MAX_ABS
    s = np.clip((2 * m) * ((s - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - m, -m, m)
    return np.ascontiguousarray(s.T, dtype=np.float32)


def rms_normalize(wav: np.ndarray, desired_rms: float = AC_DESIRED_RMS,
                  eps: float = AC_RMS_EPS) -> np.ndarray:
    """Scales ``wav`` [N] to RMS ``desired_rms`` (float32 arithmetic, as AudioConfig does).

    The RMS is floored at ``eps``, so silence stays (finite) silence.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        return wav.copy()
    rms = np.maximum(eps, np.sqrt(np.mean(wav ** 2)))
    return wav * (desired_rms / rms)


def mel_100hz(wav: np.ndarray) -> np.ndarray:
    """The AudioConfig mel (PC-AVS front end) of the *raw* ``wav`` [N] (16 kHz), time-major.

    RMS-normalises to 0.1 first (``rms_normalize``), then |STFT| (n_fft 1280, hop 160) -> 80 mel
    bands 125..7600 Hz -> dB - 20 -> clip((S + 100) / 100, 0, 1).

    Returns:
      ``[1 + N // 160, 80]`` float32, 100 rows per second (4 rows per video frame), in [0, 1].
    """
    y = rms_normalize(wav)
    mel = _mel_power(y, AC_N_FFT, AC_HOP, AC_N_FFT, _mel_basis(AC_N_FFT, AC_FMIN, AC_FMAX))  # float32 [80, M]
    s = _amp_to_db(mel) - REF_LEVEL_DB
    s = np.clip((s - MIN_LEVEL_DB) / -MIN_LEVEL_DB, 0, 1)
    return np.ascontiguousarray(s.astype(np.float32).T)


# --------------------------------------------------------------------------------------------
# Per-frame slicing
# --------------------------------------------------------------------------------------------

def _check_mel(mel: np.ndarray, name: str) -> np.ndarray:
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != NUM_MELS:
        raise ValueError(f"{name} must be a time-major [rows, {NUM_MELS}] mel, got shape "
                         f"{tuple(mel.shape)}")
    if mel.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    return mel


def _check_frames(num_frames: int) -> int:
    if int(num_frames) != num_frames or num_frames < 0:
        raise ValueError(f"num_frames must be an integer >= 0, got {num_frames!r}")
    return int(num_frames)


def frame_mel_windows(mel80: np.ndarray, num_frames: int, fps: int = FPS, frames=None) -> np.ndarray:
    """The official per-frame SyncNet windows (``indiv_mels`` of ``read_audio``).

    Frame f takes the 16 rows starting at ``int(80.0 * ((f - 2) / fps))`` (truncated toward zero,
    i.e. 0.2 s around the frame), each row index clamped to ``[0, rows - 1]``.

    Args:
      mel80: ``[M, 80]`` Wav2Lip mel (``wav2lip_mel`` of the cropped wav).
      num_frames: T.
      frames: optional frame indices (a slice, a list or an int array): only those windows,
        ``frame_mel_windows(m, t)[frames]`` without computing the others (training samplers).

    Returns:
      ``[T, 80, 16]`` (mel band, time), dtype of ``mel80``; ``[len(frames), 80, 16]`` with ``frames``.
    """
    mel80 = _check_mel(mel80, "mel80")
    idx = frame_mel_window_rows(mel80.shape[0], num_frames, fps, frames)
    return np.ascontiguousarray(mel80[idx].transpose(0, 2, 1))  # [T, 16, 80] -> [T, 80, 16]


def _frames(num_frames: int, frames) -> np.ndarray:
    t = _check_frames(num_frames)
    return np.atleast_1d(np.arange(t)[frames] if frames is not None else np.arange(t))


def frame_mel_window_rows(num_rows: int, num_frames: int, fps: int = FPS, frames=None) -> np.ndarray:
    """The mel rows of ``frame_mel_windows``: int64 ``[n, 16]``, frame-major (what a reader that
    holds only some rows of the mel must fetch; ``mel80[rows]`` is the windows, time-major)."""
    which = _frames(num_frames, frames)
    starts = np.array([int(float(W2L_ROWS_PER_SECOND) * ((f - 2) / float(fps))) for f in which], dtype=np.int64)
    return np.clip(starts.reshape(-1, 1) + np.arange(W2L_WINDOW)[None, :], 0, int(num_rows) - 1)


def frame_cond_100hz_rows(num_rows: int, num_frames: int, frames=None) -> np.ndarray:
    """The 100 Hz mel rows of ``frame_cond_100hz`` for ``frames``: int64 ``[n, 4]``."""
    which = _frames(num_frames, frames)
    return np.minimum(which.reshape(-1, 1) * ROWS_PER_FRAME + np.arange(ROWS_PER_FRAME), int(num_rows) - 1)


def frame_cond_release_rows(num_rows: int, num_frames: int, frames=None) -> np.ndarray:
    """The 80 Hz mel rows of ``frame_cond_release`` for ``frames``: int64 ``[n, 4]`` (row r of the
    doubled mel is row ``r mod M`` of the mel). Raises ValueError as ``frame_cond_release`` does."""
    t = _check_frames(num_frames)
    if t * ROWS_PER_FRAME > 2 * int(num_rows):
        # The official load_spectrogram would hand torch.cat a short chunk and fail.
        raise ValueError(f"num_frames={t} needs {t * ROWS_PER_FRAME} rows but the doubled mel has "
                         f"{2 * int(num_rows)}; num_frames must come from the same audio")
    which = _frames(t, frames)
    return (which.reshape(-1, 1) * ROWS_PER_FRAME + np.arange(ROWS_PER_FRAME)) % int(num_rows)


def frame_cond_100hz(mel100: np.ndarray, num_frames: int) -> np.ndarray:
    """The correctly aligned diffusion condition: frame f = rows 4f .. 4f+3 of the 100 Hz mel.

    Rows past the end of ``mel100`` are clamped to its last row (edge padding). This cannot happen
    when ``mel100 = mel_100hz(wav)`` and ``num_frames = num_video_frames(len(wav))``, since the
    mel has ``1 + N // 160 >= 4 T + 1`` rows.

    Returns:
      ``[T, 320]``: the [4, 80] block flattened row-major, dtype of ``mel100``.
    """
    mel100 = _check_mel(mel100, "mel100")
    t = _check_frames(num_frames)
    return np.ascontiguousarray(mel100[frame_cond_100hz_rows(mel100.shape[0], t)].reshape(t, COND_DIM))


def frame_cond_release(mel80: np.ndarray, num_frames: int) -> np.ndarray:
    """The diffusion condition exactly as the release builds it (``get_target_seqs``).

    Quirk reproduced: the 80 Hz Wav2Lip mel is indexed as if it were 100 Hz (4 rows per frame),
    through the self-concatenation ``[mel; mel]``. Frame f = rows 4f .. 4f+3 of that doubled mel,
    so the condition runs 1.25x faster than the video and wraps round to the start of the audio
    from frame ``M / 4`` on. Windowed inference then takes each window's global frames and drops
    its first frame; that slicing is the caller's.

    Args:
      mel80: ``[M, 80]`` Wav2Lip mel of the cropped wav. num_frames: T, at most ``2 M / 4``.

    Returns:
      ``[T, 320]``, dtype of ``mel80``.
    """
    mel80 = _check_mel(mel80, "mel80")
    t = _check_frames(num_frames)
    return np.ascontiguousarray(mel80[frame_cond_release_rows(mel80.shape[0], t)].reshape(t, COND_DIM))


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------

def audio_features(wav: np.ndarray) -> dict[str, np.ndarray]:
    """All audio features of a 16 kHz mono waveform, as the official ``read_audio`` makes them.

    Keys (the names of ``reference/audio_features/io.npz``), with N samples and T video frames:
      wav_cropped [640 T], wav_preemphasized [640 T], mel_wav2lip [1 + 3.2 T (floored), 80],
      mel_basis_wav2lip [80, 401], indiv_mels [T, 80, 16], diffusion_cond [T, 320] (release quirk),
      wav_rms_normalized [N], mel_audioconfig [1 + N // 160, 80], mel_basis_audioconfig [80, 641],
      diffusion_cond_audioconfig_100hz [T, 320] (the aligned alternative). All float32.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    t = num_video_frames(len(wav))
    cropped = crop_to_frames(wav)
    mel80 = wav2lip_mel(cropped)
    mel100 = mel_100hz(wav)
    return {
        "wav_cropped": cropped.astype(np.float32),
        "wav_preemphasized": preemphasis(cropped).astype(np.float32),
        "mel_wav2lip": mel80,
        "mel_basis_wav2lip": wav2lip_mel_basis(),
        "indiv_mels": frame_mel_windows(mel80, t),
        "diffusion_cond": frame_cond_release(mel80, t),
        "wav_rms_normalized": rms_normalize(wav),
        "mel_audioconfig": mel100,
        "mel_basis_audioconfig": audioconfig_mel_basis(),
        "diffusion_cond_audioconfig_100hz": frame_cond_100hz(mel100, t),
    }
