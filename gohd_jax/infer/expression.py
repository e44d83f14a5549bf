"""Expression for audio of any length: windows of L frames sharing one frame, at constant memory.

As the official ``inference.py: get_target_seqs`` does for ``audio2exp``: windows start at frames
0, L-1, 2(L-1), ... and span L frames; each is predicted with exp0 = the previous window's last
expression (the source's exp0 for the first), and its first row, the frame it shares with the
previous window, is replaced by the average of exp0 and that row. For the two-stage model the
carried state also holds the controls: control0 = the previous window's last controls (the
LSTM restarts from zero in every window, as it does in every training window).

One jitted window function of fixed shape [B, L, 80, 16] (the last window is padded by repeating
its final mel window, and the padded rows dropped), a host loop that moves one window in and out:
device memory does not grow with the clip. Each window's noise key is ``fold_in(key, index)``.

Differences from the release, by design: the release drops one frame too many when it joins
windows (``exp_target_[:-1]`` for the first window, then ``_append_seq`` drops the buffer's last
row again), which shifts the expression one frame late after the first join; here frame i of
the output is always the audio's frame i.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.models.expression import FrameExpression, TwoStageExpression

__all__ = ["ExpressionWindows", "generate_expression"]


class ExpressionWindows:
    """Windowed expression generation with a stage-1 (``FrameExpression``, controls given per
    frame or none) or a two-stage model (``TwoStageExpression``, controls generated)."""

    def __init__(self, model: FrameExpression | TwoStageExpression, *, window: int = 30):
        if window < 2:
            raise ValueError(f"window must be >= 2 frames, got {window}")
        self.two_stage = isinstance(model, TwoStageExpression)
        self.cfg = model.cfg
        self.window = window
        self.graphdef, self.state = nnx.split(model)
        self._fn = jax.jit(self._window)

    def _window(self, state, audio, exp0, controls, key, eye):
        model = nnx.merge(self.graphdef, state)
        if self.two_stage:
            em = model.stage1.embed_audio(audio)
            control0 = controls
            if key.ndim == 1:  # one key per row: rows independent of the batch
                controls = jax.vmap(lambda e, x, c, k: model.stage2.sample(e[None], x[None], c[None], k)[0])(
                    em, exp0, control0, key)
            else:
                controls = model.stage2.sample(em, exp0, control0, key)
            # a given eye control (held eyes, or a reference's blinks) replaces the generated one;
            # the brows stay generated
            controls = controls.at[..., 0].set(jnp.where(jnp.isnan(eye), controls[..., 0], eye))
            exp = model.stage1.head(em, exp0, controls)
        else:
            exp = model(audio, exp0, controls)
        exp = exp.at[:, 0].set((exp0 + exp[:, 0]) / 2)
        return exp, controls

    def cache_size(self) -> int:
        return self._fn._cache_size()

    def iter_windows(self, mel_windows, exp0, *, controls=None, key=None, hold_blink=None, eye=None
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yields ``(start, exp [B,n,64], controls [B,n,21] | None)`` for frames start .. start+n-1,
        host numpy. ``mel_windows`` [B,T,80,16]; ``exp0`` [B,64]; ``controls``: per-frame
        controls [B,T,K] for a stage-1 model that reads them, or control0 [B,21] for the two-stage
        model (its generated controls are yielded). ``key`` seeds the two-stage noise: one key, or
        one per row ([B]; rows then do not depend on the batch). For the two-stage model, the eye
        control (channel 0, the blink ratio) can be given instead of generated: ``eye`` [B,T]
        (NaN where it is generated), and ``hold_blink`` [B] bool holds those rows' eye at
        control0's (no blinks). For a stage-1 model that reads controls, ``eye`` replaces channel
        0 of ``controls`` where it is not NaN."""
        b, t = mel_windows.shape[:2]
        if t < 1:
            raise ValueError("no frames: the audio is empty")
        exp0 = jnp.asarray(exp0, jnp.float32)
        if exp0.shape != (b, self.cfg.exp_dim):
            raise ValueError(f"exp0 must be [B={b}, {self.cfg.exp_dim}], got {exp0.shape}")
        if self.two_stage:
            if controls is None or np.shape(controls) != (b, self.cfg.control_dim):
                raise ValueError(f"the two-stage model needs control0 [B={b}, {self.cfg.control_dim}]")
            carry = jnp.asarray(controls, jnp.float32)
            key = jax.random.key(0) if key is None else key
        elif self.cfg.controls and (controls is None or np.shape(controls)[:2] != (b, t)):
            raise ValueError(f"this stage-1 model reads {self.cfg.controls} controls per frame: "
                             f"give controls [B={b}, T={t}, {self.cfg.controls}]")
        eye = np.full((b, t), np.nan, np.float32) if eye is None else np.array(eye, np.float32).reshape(b, t)
        if hold_blink is not None and self.two_stage:  # a stage-1 model's eyes follow its controls
            held = np.asarray(hold_blink, bool).reshape(b)
            eye[held] = np.asarray(controls, np.float32)[held, 0][:, None]
        if not self.two_stage and self.cfg.controls and np.isfinite(eye).any():
            controls = np.array(controls, np.float32)
            controls[..., 0] = np.where(np.isnan(eye), controls[..., 0], eye)
        L = self.window
        for w, start in enumerate(range(0, max(t - 1, 1), L - 1)):
            hi = min(start + L, t)
            audio = np.asarray(mel_windows[:, start:hi], np.float32)
            pad = L - audio.shape[1]
            if pad:
                audio = np.concatenate([audio, np.repeat(audio[:, -1:], pad, axis=1)], axis=1)
            if self.two_stage:
                ctrl_in = carry
                k = (jax.vmap(lambda kk: jax.random.fold_in(kk, w))(key) if key.ndim == 1
                     else jax.random.fold_in(key, w))
            else:
                ctrl_in, k = None, None
                if self.cfg.controls:
                    c = np.asarray(controls[:, start:hi], np.float32)
                    ctrl_in = np.concatenate([c, np.repeat(c[:, -1:], pad, axis=1)], axis=1) if pad else c
            eye_w = eye[:, start:hi]
            if pad:
                eye_w = np.concatenate([eye_w, np.repeat(eye_w[:, -1:], pad, axis=1)], axis=1)
            exp, ctrl = self._fn(self.state, jnp.asarray(audio), exp0, ctrl_in, k, jnp.asarray(eye_w))
            # sliced on the host: slicing the device arrays would compile a program per length
            n = hi - start
            exp = np.asarray(exp)[:, :n]
            exp0 = jnp.asarray(exp[:, n - 1])
            if self.two_stage:
                ctrl = np.asarray(ctrl)[:, :n]
                carry = jnp.asarray(ctrl[:, n - 1])
            yield start, exp, (ctrl if self.two_stage else None)


def generate_expression(model, mel_windows, exp0, *, controls=None, key=None, window: int = 30,
                        hold_blink=None, eye=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole (exp [B,T,64], generated controls [B,T,21] or None) of a clip batch."""
    gen = ExpressionWindows(model, window=window)
    b, t = mel_windows.shape[:2]
    exp = np.empty((b, t, gen.cfg.exp_dim), np.float32)
    ctrl = np.empty((b, t, gen.cfg.control_dim), np.float32) if gen.two_stage else None
    for start, e, c in gen.iter_windows(mel_windows, exp0, controls=controls, key=key, hold_blink=hold_blink,
                                        eye=eye):
        exp[:, start:start + e.shape[1]] = e
        if c is not None:
            ctrl[:, start:start + c.shape[1]] = c
    return exp, ctrl
