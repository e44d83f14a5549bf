"""End-to-end inference: source image + speech -> 25 fps frames, batched across clips.

``Animate(bundle)`` holds the jitted pieces: the source encoder (run once per clip), the
renderer (a fixed batch of frames, each with its own clip's encoding and 27-frame descriptor
window), the pose and gaze window samplers and the windowed expression model (both at constant
device memory for any audio length). ``Animate.run(jobs, writers)`` renders a batch of clips:

1. features: per clip T = ceil(25 x audio seconds) frames (the audio zero-padded to T x 640
   samples), the Wav2Lip mel (its [T,80,16] windows cut per expression window) and the motion
   condition [T,320];
2. motion: expression (stage 1, or stages 1+2 with generated blinks/brows), pose (residual to
   pose0) and gaze (absolute), every clip of the batch in the same windows (shorter clips padded);
3. rendering: frames of all clips, ``render_batch`` at a time, sent to each clip's writer as they
   come, in order.

Controls (``Controls``) act on one thing each. Randomness: clip i's pose, gaze and expression
noise come from ``fold_in(key(seed_i), 0 / 1 / 2)``, one key per clip and per part, so changing
one part (gaze, say) leaves the others bit for bit, and a clip's frames do not depend on what
else is in its batch. Same seed, same machine -> the same frames.

Precision (``precision``: "auto" | "float32" | "bfloat16", or a ``Policy``; ``gohd_jax/nn/policy.py``):
the animator, the pose and gaze denoisers and the expression model run under one policy, resolved
for the platform of the engine's devices ("auto": bfloat16 on GPU/TPU, float32 on CPU). The
engine gives the policy to views of the bundle's models (the same parameters, not copied): the
bundle passed in is left as it was. The motion directions Q = QR(W) [D,M] are computed once, in
float32, when the engine is built, and every render call reads them (no QR per call); rendered
images are float32 before they are clipped, rounded and quantised.

Post-processing as the release's ``get_target_seqs``: a 5-frame moving average on the generated
pose (centred, not in place), then ``pose x pose_scale`` and ``exp x exp_scale`` on the absolute
values (the release's defaults are 1.2 and 1.5; ours are 1.0).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.infer.bundle import Bundle
from gohd_jax.nn import policy as policy_lib

log = logging.getLogger(__name__)

__all__ = ["Controls", "Sampling", "ClipJob", "Animate", "GAZE_PRESETS", "semantic_windows", "num_frames",
           "StageTimes", "quantise", "clip_features", "EmotionRef"]

# The release's freeze_gaze values [first, second] in radians.
GAZE_PRESETS = {"forward": (0.0, 0.0), "left": (0.2, 0.0), "right": (-0.7, 0.0)}
RADIUS = 13  # the animator reads a 27-frame window centred on the frame


def clip_features(wav: np.ndarray, condition: str) -> dict:
    """16 kHz speech -> {"frames": T = ceil(25 x seconds), "mel80": the Wav2Lip mel [4T+1, 80] of the
    audio zero-padded to T x 640 samples, "cond": the motion condition [T, 320]} (float32; numpy
    only, so it runs in any host worker). ``condition``: "mel100" or the release's features."""
    from data_pipelines import audio

    t = num_frames(len(wav))
    padded = np.zeros(t * 640, np.float32)
    padded[:min(len(wav), t * 640)] = wav[:t * 640]
    mel80 = audio.wav2lip_mel(padded)
    cond = (audio.frame_cond_100hz(audio.mel_100hz(padded), t) if condition == "mel100"
            else audio.frame_cond_release(mel80, t))
    return {"frames": t, "mel80": np.asarray(mel80, np.float32), "cond": np.asarray(cond, np.float32)}


@dataclasses.dataclass(frozen=True)
class Controls:
    """What drives a clip besides its audio; each acts on one thing.

    ``pose``: "generated" | "still" | array [T,6] (absolute pose per frame); ``gaze``: "generated" |
    array [2] (fixed) or [T,2]; ``blink``: True (generated blinks, two-stage models), False (eyes
    held at the source's) or array [T] (the eye control per frame, e.g. a reference's blinks);
    ``exp``: None (from the audio) or array [T,64] (absolute expression per frame, e.g. a
    reference's: the lips follow it); ``emotion``: ``EmotionRef``s (weights summing to 1): the
    audio-driven stage-1 lips plus the references' emotion residual x ``emotion_scale``
    (``Animate.emotion_residual``); ``idle`` (silent audio): the lips held at the source's exp0,
    blinks (generated or given) added as the expression model's response to the eye control alone;
    scales act on the absolute pose / expression. Arrays shorter than the clip hold their last
    frame (``gohd_jax/infer/reference.py`` fits references first)."""
    pose: object = "generated"
    gaze: object = "generated"
    blink: object = True
    pose_scale: float = 1.0
    exp_scale: float = 1.0
    exp: object = None
    idle: bool = False
    emotion: tuple = ()
    emotion_scale: float = 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class EmotionRef:
    """An emotion reference: its expression [T,64] and 16 kHz audio (T x 640 samples, or None: no
    audio track) at 25 fps, its weight in the mix, and ``key`` (its path: residuals are cached)."""
    exp: np.ndarray
    wav: np.ndarray | None
    weight: float = 1.0
    key: str = ""


@dataclasses.dataclass(frozen=True)
class Sampling:
    method: str = "ddpm"
    steps: int = 150


@dataclasses.dataclass
class ClipJob:
    """One clip: ``source`` RGB uint8 [S,S,3] at the bundle's size, ``descriptor0`` [72],
    ``control0`` [21], ``wav`` 16 kHz float32, ``controls``, ``seed``."""
    name: str
    source: np.ndarray
    descriptor0: np.ndarray
    control0: np.ndarray
    wav: np.ndarray
    controls: Controls = Controls()
    seed: int = 0


@dataclasses.dataclass
class StageTimes:
    seconds: dict = dataclasses.field(default_factory=dict)
    first_frame_s: float | None = None

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt


def num_frames(num_samples: int) -> int:
    """ceil(25 x seconds): every started 40 ms of audio gets a frame."""
    return max(1, math.ceil(num_samples / 640))


def semantic_windows(desc: np.ndarray, frames: Sequence[int]) -> np.ndarray:
    """desc [T,72] -> [len(frames),27,72], the window around each frame, indices clamped."""
    t = len(desc)
    idx = np.clip(np.asarray(frames)[:, None] + np.arange(-RADIUS, RADIUS + 1)[None], 0, t - 1)
    return desc[idx]


def _moving_average(x: np.ndarray, k: int = 5) -> np.ndarray:
    """Centred k-frame moving average along axis 0 (edges: the mean over the frames there are)."""
    if len(x) < 2:
        return x
    r = k // 2
    c = np.cumsum(np.concatenate([np.zeros((1,) + x.shape[1:]), x]), 0)
    lo = np.clip(np.arange(len(x)) - r, 0, len(x))
    hi = np.clip(np.arange(len(x)) + r + 1, 0, len(x))
    return ((c[hi] - c[lo]) / (hi - lo)[:, None]).astype(np.float32)


def _fit(arr: np.ndarray, t: int, what: str) -> np.ndarray:
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 1:
        return np.tile(arr[None], (t, 1))
    if len(arr) >= t:
        return arr[:t]
    log.warning("%s has %d frames for %d: holding its last frame", what, len(arr), t)
    return np.concatenate([arr, np.repeat(arr[-1:], t - len(arr), 0)])


def quantise(rgb: jax.Array) -> jax.Array:
    """Images in [-1, 1] (any float dtype) -> uint8, computed in float32."""
    rgb = rgb.astype(jnp.float32)
    return jnp.round((jnp.clip(rgb, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


class _LazyMelWindows:
    """[B, T, 80, 16] Wav2Lip windows of a batch of clips, computed per requested frame range
    (``x[:, a:b]``) instead of held whole (5 KB a frame); clip i repeats its last frame past T_i."""

    def __init__(self, mels: list[np.ndarray], lengths: list[int], t: int):
        self.mels, self.lengths = mels, lengths
        self.shape = (len(mels), t, 80, 16)

    def __getitem__(self, key):
        from data_pipelines import audio

        rows, cols = key
        if rows != slice(None) or not isinstance(cols, slice):
            raise IndexError("_LazyMelWindows supports x[:, a:b] only")
        a, b, _ = cols.indices(self.shape[1])
        return np.stack([audio.frame_mel_windows(m, n, frames=np.minimum(np.arange(a, b), n - 1))
                         for m, n in zip(self.mels, self.lengths)]).astype(np.float32)


class Animate:
    """The jitted end-to-end pipeline for one bundle (see the module docstring)."""

    def __init__(self, bundle: Bundle, *, sampling: Sampling = Sampling(), render_batch: int = 16,
                 devices=None, precision: str | policy_lib.Policy = "auto"):
        from gohd_jax.diffusion import samplers, windowing
        from gohd_jax.infer.expression import ExpressionWindows

        devices = list(devices or jax.local_devices())
        self.policy = (precision if isinstance(precision, policy_lib.Policy)
                       else policy_lib.resolve(precision, platform=policy_lib.platform_of(devices)))
        # the four models under the policy (views sharing the bundle's parameters)
        bundle = dataclasses.replace(bundle, **{role: policy_lib.with_policy(getattr(bundle, role), self.policy)
                                                for role in ("animator", "pose", "gaze", "expression")})
        self.bundle = bundle
        self.size = bundle.image_size
        self.render_batch = int(math.ceil(render_batch / len(devices)) * len(devices))
        self.mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        self._rows = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
        self._rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        spec = samplers.SamplerSpec(method=sampling.method, steps=int(sampling.steps))
        self.pose_sampler = windowing.WindowSampler(bundle.pose, spec=spec, residual=True,
                                                    alignment=bundle.pose_spec.alignment,
                                                    data_scale=bundle.pose_spec.data_scale)
        self.gaze_sampler = windowing.WindowSampler(bundle.gaze, spec=spec, residual=False,
                                                    alignment=bundle.gaze_spec.alignment,
                                                    data_scale=bundle.gaze_spec.data_scale)
        self.expression = ExpressionWindows(bundle.expression, window=bundle.expression_window)
        self._stage1: ExpressionWindows | None = None  # stage 1 alone (emotion), built when first asked
        self._residuals: dict[str, np.ndarray] = {}  # emotion reference -> its residual [T,64]
        graph, state = nnx.split(bundle.animator)
        self._anim_state = jax.device_put(state, self._rep)

        # Q [D,M] = QR(W), float32, once: the renderer reads it instead of a QR in every call
        @jax.jit
        def directions(state):
            return nnx.merge(graph, state).directions().astype(jnp.float32)

        self._directions = jax.device_put(directions(self._anim_state), self._rep)

        @jax.jit
        def encode(state, src):
            return nnx.merge(graph, state).encode_source(src.astype(jnp.float32) / 127.5 - 1.0)

        @jax.jit
        def render(state, directions, w_s, feats, semantics):
            out = nnx.merge(graph, state).render(w_s, feats, semantics, directions=directions)
            return quantise(out["rgb"][0])

        self._encode, self._render = encode, render

    @property
    def directions(self) -> jax.Array:
        """The motion directions Q [D,M] (float32) every render call reads."""
        return self._directions

    def render_args(self, w_s, feats, semantics) -> tuple:
        """The arguments of the jitted renderer ``self._render`` for a batch (engine state first)."""
        return self._anim_state, self._directions, w_s, feats, semantics

    # ----------------------------------------------------------------------------- features

    def features(self, job: ClipJob) -> dict:
        """The clip's audio features (``clip_features`` for this bundle's motion condition)."""
        return clip_features(job.wav, self.bundle.pose_spec.condition)

    # ----------------------------------------------------------------------------- motion

    @staticmethod
    def _stack(rows: list[np.ndarray], t: int) -> np.ndarray:
        return np.stack([np.concatenate([r, np.repeat(r[-1:], t - len(r), 0)]) if len(r) < t else r[:t]
                         for r in rows])

    def drive(self, jobs: Sequence[ClipJob], feats: Sequence[dict], times: StageTimes | None = None
              ) -> list[dict]:
        """Per clip {"exp" [T,64], "pose" [T,6], "gaze" [T,2], "controls" [T,21] | None,
        "descriptors" [T,72]} (what the renderer reads)."""
        times = times or StageTimes()
        lengths = [f["frames"] for f in feats]
        t = max(lengths)
        d0 = np.stack([j.descriptor0 for j in jobs]).astype(np.float32)
        exp0, pose0, gaze0 = d0[:, :64], d0[:, 64:70], d0[:, 70:72]
        keys = [jax.random.key(int(j.seed)) for j in jobs]
        part = lambda i: jnp.stack([jax.random.fold_in(k, i) for k in keys])  # noqa: E731

        t0 = time.perf_counter()
        mel = _LazyMelWindows([f["mel80"] for f in feats], lengths, t)
        exp_model = self.expression
        if exp_model.two_stage:
            ctrl_in = np.stack([j.control0 for j in jobs]).astype(np.float32)
        elif exp_model.cfg.controls:
            ctrl_in = np.stack([np.tile(j.control0[None, :exp_model.cfg.controls], (t, 1)) for j in jobs])
        else:
            ctrl_in = None
        if not exp_model.two_stage and exp_model.cfg.controls and any(
                isinstance(j.controls.blink, bool) and j.controls.blink for j in jobs):
            log.warning("the expression model is stage 1 only: blinks and brows are held at the source's")
        if not exp_model.two_stage and not exp_model.cfg.controls and any(
                not isinstance(j.controls.blink, bool) for j in jobs):
            log.warning("this expression model reads no eye control (the released stage 1): a blink track has "
                        "no effect; --exp REF takes the reference's whole expression, blinks included")
        # the eye control: NaN where generated, the source's where held, a reference's where given
        eye = np.full((len(jobs), t), np.nan, np.float32)
        for i, (j, n) in enumerate(zip(jobs, lengths)):
            if isinstance(j.controls.blink, bool):
                if not j.controls.blink:
                    eye[i] = j.control0[0]
            else:
                track = _fit(np.asarray(j.controls.blink, np.float32).reshape(-1, 1), n, "the blink track")[:, 0]
                eye[i, :n], eye[i, n:] = track, track[-1]
        given_exp = [j.controls.exp is not None for j in jobs]
        exp = np.zeros((len(jobs), t, 64), np.float32)
        ctrl = np.empty((len(jobs), t, exp_model.cfg.control_dim), np.float32) if exp_model.two_stage else None
        if not all(given_exp):  # at least one clip's expression comes from its audio
            for start, e, c in exp_model.iter_windows(mel, exp0, controls=ctrl_in, key=part(2), eye=eye):
                exp[:, start:start + e.shape[1]] = e
                if c is not None:
                    ctrl[:, start:start + c.shape[1]] = c
        elif ctrl is not None:
            ctrl = None  # no clip generated controls
        emo = np.array([bool(j.controls.emotion) and not g for j, g in zip(jobs, given_exp)])
        if emo.any():
            exp[emo] = self._with_emotion(jobs, feats, t)[emo]
        # silent clips are idle, unless an emotion reference drives them (its stage 1 of silence is
        # already the closed mouth)
        idle = np.array([j.controls.idle and not g and not j.controls.emotion for j, g in zip(jobs, given_exp)])
        if idle.any():
            exp = self._idle(exp, idle, exp0, eye, mel, ctrl_in, part(2), jobs)
        times.add("expression", time.perf_counter() - t0)

        t0 = time.perf_counter()
        from gohd_jax.diffusion import windowing
        cond = self._stack([f["cond"] for f in feats], t)
        need_pose = any(isinstance(j.controls.pose, str) and j.controls.pose == "generated" for j in jobs)
        need_gaze = any(isinstance(j.controls.gaze, str) and j.controls.gaze == "generated" for j in jobs)
        put = None
        if len(jobs) % self.mesh.size == 0 and self.mesh.size > 1:  # clips sharded over the devices
            put = lambda a: jax.device_put(a, self._rows)  # noqa: E731
        pose_gen = (windowing.generate_long(self.pose_sampler, cond, pose0, key=part(0), put=put,
                                            window=self.bundle.pose_spec.window) if need_pose else None)
        gaze_gen = (windowing.generate_long(self.gaze_sampler, cond, gaze0, key=part(1), put=put,
                                            window=self.bundle.gaze_spec.window) if need_gaze else None)
        times.add("motion", time.perf_counter() - t0)

        out = []
        for i, (job, n) in enumerate(zip(jobs, lengths)):
            c = job.controls
            if isinstance(c.pose, str):
                if c.pose == "generated":
                    pose = _moving_average(pose_gen[i, :n])
                elif c.pose == "still":
                    pose = np.tile(pose0[i][None], (n, 1))
                else:
                    raise ValueError(f"pose must be 'generated', 'still' or an array, got {c.pose!r}")
            else:
                pose = _fit(c.pose, n, "the pose file")
            if isinstance(c.gaze, str):
                if c.gaze != "generated":
                    raise ValueError(f"gaze must be 'generated' or an array, got {c.gaze!r}")
                gaze = gaze_gen[i, :n]
            else:
                gaze = _fit(c.gaze, n, "the gaze file")
            e = (_fit(c.exp, n, "the expression track") if c.exp is not None else exp[i, :n]) * np.float32(c.exp_scale)
            pose = pose * np.float32(c.pose_scale)
            desc = np.concatenate([e, pose, gaze], 1).astype(np.float32)
            out.append({"exp": e, "pose": pose.astype(np.float32), "gaze": gaze.astype(np.float32),
                        "controls": None if ctrl is None or given_exp[i] else ctrl[i, :n], "descriptors": desc})
        return out

    def stage1_expression(self, mel80s: Sequence[np.ndarray], lengths: Sequence[int], exp0: np.ndarray
                          ) -> np.ndarray:
        """Stage 1 alone (no generated controls; neutral ones where it reads them): the expression
        [B,T,64] its audio predicts from exp0 [B,64] (clip i padded past its length)."""
        from gohd_jax.infer.expression import ExpressionWindows
        from gohd_jax.infer.source import neutral_controls

        if self._stage1 is None:
            model = self.bundle.expression
            self._stage1 = ExpressionWindows(model.stage1 if self.expression.two_stage else model,
                                             window=self.bundle.expression_window)
        t, b, k = max(lengths), len(lengths), self._stage1.cfg.controls
        ctrl = np.tile(neutral_controls()[:k][None, None], (b, t, 1)).astype(np.float32) if k else None
        out = np.empty((b, t, 64), np.float32)
        mel = _LazyMelWindows(list(mel80s), list(lengths), t)
        for start, e, _ in self._stage1.iter_windows(mel, np.asarray(exp0, np.float32), controls=ctrl):
            out[:, start:start + e.shape[1]] = e
        return out

    def emotion_residual(self, ref: EmotionRef) -> np.ndarray:
        """GoHD's split of a reference's expression [T,64]: what stage 1 does not explain from the
        reference's own audio (or from silence: a closed mouth) starting at its first frame,
        residual = exp - stage1(audio, exp[0], neutral controls); brows, blinks, emotion."""
        if ref.key and ref.key in self._residuals:
            return self._residuals[ref.key]
        t = len(ref.exp)
        wav = np.zeros(t * 640, np.float32)
        if ref.wav is not None:
            wav[:min(len(ref.wav), t * 640)] = ref.wav[:t * 640]
        mel80 = clip_features(wav, self.bundle.pose_spec.condition)["mel80"]
        pred = self.stage1_expression([mel80], [t], np.asarray(ref.exp[:1], np.float32))[0]
        residual = (np.asarray(ref.exp, np.float32) - pred).astype(np.float32)
        if ref.key:
            if len(self._residuals) >= 16:
                self._residuals.pop(next(iter(self._residuals)))
            self._residuals[ref.key] = residual
        return residual

    def _with_emotion(self, jobs: Sequence[ClipJob], feats: Sequence[dict], t: int) -> np.ndarray:
        """[B,t,64]: each clip's stage-1 expression of its own audio + its references' weighted
        residuals (fitted to its length: trimmed, or played forward and backward) x emotion_scale.
        Stage 1 runs on the whole batch (one compiled shape whichever clips ask for emotion)."""
        from gohd_jax.infer.reference import fit_length

        lengths = [f["frames"] for f in feats]
        exp0 = np.stack([j.descriptor0[:64] for j in jobs]).astype(np.float32)
        out = np.zeros((len(jobs), t, 64), np.float32)
        out[:, :max(lengths)] = self.stage1_expression([f["mel80"] for f in feats], lengths, exp0)
        for i, (job, n) in enumerate(zip(jobs, lengths)):
            res = sum(np.float32(r.weight) * fit_length(self.emotion_residual(r), n, f"the emotion reference {r.key}")
                      for r in job.controls.emotion)
            out[i, :n] += np.float32(job.controls.emotion_scale) * res
        return out

    def _idle(self, exp, idle, exp0, eye, mel, ctrl_in, key, jobs) -> np.ndarray:
        """Silent clips: exp0 + (expression with the clip's eye control - the same with the eyes
        held at the source's), the same noise in both: what the eye control alone moves (blinks),
        on lips held at exp0. Eyes held (``blink`` off): exp0 itself."""
        held = np.array([isinstance(j.controls.blink, bool) and not j.controls.blink for j in jobs])
        out = exp.copy()
        out[idle] = exp0[idle][:, None]
        moving = idle & ~held
        if moving.any():  # one more pass, eyes held: ``exp`` is the pass with the clips' eye control
            eye_held = eye.copy()
            eye_held[moving] = np.stack([j.control0[0] for j in jobs])[moving][:, None]
            still = np.empty_like(exp)
            for start, e, _ in self.expression.iter_windows(mel, exp0, controls=ctrl_in, key=key, eye=eye_held):
                still[:, start:start + e.shape[1]] = e
            out[moving] = exp0[moving][:, None] + (exp[moving] - still[moving])
        return out

    # ----------------------------------------------------------------------------- rendering

    def encode(self, sources: np.ndarray):
        src = jax.device_put(np.asarray(sources, np.uint8), self._rep)
        return self._encode(self._anim_state, src)

    def render_frames(self, jobs: Sequence[ClipJob], drives: Sequence[dict], writers, times: StageTimes,
                      t_start: float) -> None:
        """Renders every frame of every clip, ``render_batch`` at a time, and hands each clip's
        frames to ``writers[i].write`` in order. Double-buffered: call k+1 is dispatched (its
        descriptor windows already on the device) before the frames of call k are fetched and
        encoded, so the host's fetch and encoding overlap the device's next call."""
        t0 = time.perf_counter()
        w_s, feats = self.encode(np.stack([j.source for j in jobs]))
        jax.block_until_ready(w_s)
        times.add("rendering", time.perf_counter() - t0)
        lengths = [len(d["descriptors"]) for d in drives]
        order = [(i, f) for f in range(max(lengths)) for i in range(len(jobs)) if f < lengths[i]]
        r = self.render_batch

        def dispatch(b0: int):
            chunk = order[b0:b0 + r]
            rows = chunk + [chunk[-1]] * (r - len(chunk))
            clip_idx = np.array([i for i, _ in rows])
            sem = np.stack([semantic_windows(drives[i]["descriptors"], [f])[0] for i, f in rows])
            return chunk, self._render(*self.render_args(w_s[clip_idx], tuple(x[clip_idx] for x in feats),
                                                         jax.device_put(sem, self._rows)))

        pending = dispatch(0) if order else None
        for b0 in range(r, len(order) + r, r):
            t0 = time.perf_counter()
            chunk, frames = pending
            pending = dispatch(b0) if b0 < len(order) else None
            frames = np.asarray(frames)[:len(chunk)]
            times.add("rendering", time.perf_counter() - t0)
            t0 = time.perf_counter()
            for (i, _), frame in zip(chunk, frames):
                writers[i].write(frame[None])
            times.add("encoding", time.perf_counter() - t0)
            if times.first_frame_s is None:
                times.first_frame_s = time.perf_counter() - t_start

    def run(self, jobs: Sequence[ClipJob], writers, feats: Sequence[dict] | None = None
            ) -> tuple[list[dict], StageTimes]:
        """features -> motion -> rendering for a batch of clips; returns (drives, stage times).
        ``feats``: each job's ``features(job)`` when the host computed them ahead (batch mode)."""
        times = StageTimes()
        start = time.perf_counter()
        if feats is None:
            t0 = time.perf_counter()
            feats = [self.features(j) for j in jobs]
            times.add("features", time.perf_counter() - t0)
        drives = self.drive(jobs, feats, times)
        self.render_frames(jobs, drives, writers, times, start)
        return drives, times
