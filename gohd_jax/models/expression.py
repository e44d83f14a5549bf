"""GoHD's expression stages in Flax NNX: stage 1 (frame-wise lips from audio) and stage 2 (an LSTM
that generates blink and brow controls).

Official code: Jia1018/GoHD ``networks/audio2exp.py`` (dossier section 7.2).

* ``FrameExpression`` (stage 1; ``SimpleWrapperV2`` / ``SimpleWrapperV3``): per frame, the SyncNet
  audio embedding (512) of the frame's Wav2Lip mel window, exp0 (64) and ``controls`` control
  values -> one Linear -> the absolute 64-d expression (the release's ``+ ref`` residual is
  commented out). ``controls`` = 0 is the released checkpoint (Linear 576 -> 64); 1 adds the blink
  ratio (V2 with ``blink_control``); 21 adds blink + 20 brow values (V3, Linear 597 -> 64).
* ``ControlGenerator`` (stage 2; ``TwoStageGenerator`` without its stage 1): control0 = the first
  frame's [blink, brows] (21) -> MLP(21 -> 128 -> 512, LeakyReLU 0.01) = c0. For t = 1 .. T-1 a
  2-layer, 512-unit LSTM (PyTorch's gate order i, f, g, o and both biases, zero initial state)
  reads [audio_em_t, c0, exp0, z_t] (512 + 512 + 64 + 512), z_t ~ N(0, I) a noise input per step,
  and out_t = MLP(h_t + c0) (512 -> 128 -> 21). Row 0 of the output is control0 unchanged.
* ``TransformerControlGenerator`` (stage 2, ``TwoStageTransGenerator``, the paper's transformer
  ablation; ``ExpressionConfig.control_generator = "transformer"``): queries = noise z ~ N(0, I)
  [B,T,H] + sinusoidal positions + c0; a post-norm transformer decoder (3 layers, 8 heads,
  feed-forward 2048, dropout 0.1, ReLU; self-attention over the queries, cross-attention to the
  audio embeddings) with a final LayerNorm; out_t = MLP(feature_t + c0) for every t, row 0
  included. The release passes [B,T,D] tensors to ``nn.MultiheadAttention`` without
  ``batch_first``, so its attention runs across the batch at each time step; no checkpoint of
  this variant exists, and here attention runs over time, as intended.
* ``TwoStageExpression``: stage 1 with 21 controls + stage 2 (either generator): audio ->
  embeddings -> controls -> expression, as ``TwoStageGenerator.forward``.

Shapes: ``audio`` [B, T, 80, 16] (one Wav2Lip mel window per frame, mel bins x time steps),
``exp0`` [B, 64], controls [B, T, K]; outputs [B, T, 64] / [B, T, 21]. The audio encoder runs on
all B x T windows at once; the LSTM is a ``lax.scan`` over time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from gohd_jax.models.syncnet import AudioEncoder
from gohd_jax.nn.lstm import LSTM
from gohd_jax.nn.policy import DEFAULT

__all__ = ["ExpressionConfig", "FrameExpression", "ControlGenerator", "TransformerControlGenerator",
           "TwoStageExpression", "sinusoid_positions"]


@dataclass(frozen=True)
class ExpressionConfig:
    """exp_dim 64 (BFM expression); controls 0 / 1 / 21 for stage 1 (see the module docstring);
    control_dim 21 and hidden 512 / control_hidden 128 for stage 2; noise_dim 512;
    audio_width scales the SyncNet audio encoder's channels (1 official), which sets audio_dim."""
    exp_dim: int = 64
    controls: int = 0
    control_dim: int = 21
    hidden: int = 512
    control_hidden: int = 128
    lstm_layers: int = 2
    noise_dim: int = 512
    audio_width: float = 1.0
    control_generator: str = "lstm"
    decoder_layers: int = 3
    heads: int = 8
    feed_forward: int = 2048
    dropout: float = 0.1
    max_frames: int = 1000

    def __post_init__(self):
        if self.control_generator not in ("lstm", "transformer"):
            raise ValueError(f"control_generator must be 'lstm' or 'transformer', got {self.control_generator!r}")
        if self.control_generator == "transformer" and self.hidden != self.audio_dim:
            raise ValueError(f"the transformer generator attends to the audio embeddings: hidden "
                             f"({self.hidden}) must equal audio_dim ({self.audio_dim})")

    @property
    def audio_dim(self) -> int:
        return max(1, int(512 * self.audio_width))

    @classmethod
    def released(cls) -> "ExpressionConfig":
        """``audio2exp.pth``: SimpleWrapperV2(blink_control=0)."""
        return cls(controls=0)

    @classmethod
    def two_stage(cls) -> "ExpressionConfig":
        """``TwoStageGenerator(blink_control=1, brow_control=1)``: stage 1 reads 21 controls."""
        return cls(controls=21)

    @classmethod
    def tiny(cls, controls: int = 21) -> "ExpressionConfig":
        return cls(controls=controls, hidden=64, control_hidden=32, noise_dim=16, audio_width=0.125,
                   heads=4, feed_forward=128)


def _torch_linear(rngs: nnx.Rngs, din: int, dout: int, *, zero_bias: bool = False) -> nnx.Linear:
    """nn.Linear's init: U(+-1/sqrt(din)) for weight and bias."""
    bound = 1.0 / math.sqrt(din)
    init = jax.nn.initializers.uniform(2 * bound)
    shift = lambda f: (lambda k, s, d=jnp.float32: f(k, s, d) - bound)  # noqa: E731
    return nnx.Linear(din, dout, kernel_init=shift(init),
                      bias_init=jax.nn.initializers.zeros if zero_bias else shift(init), rngs=rngs)


class FrameExpression(nnx.Module):
    """Stage 1. ``__call__(audio [B,T,80,16], exp0 [B,64], controls [B,T,K] | None)`` -> [B,T,64].

    Precision: the audio encoder and the head compute in the policy's dtype; the audio
    embedding and the expression are float32. Remat: the encoder's conv blocks ("blocks"), the
    whole forward ("full")."""

    policy = DEFAULT

    def __init__(self, cfg: ExpressionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(rngs=rngs, width=cfg.audio_width)
        self.mapping1 = _torch_linear(rngs, cfg.audio_dim + cfg.exp_dim + cfg.controls, cfg.exp_dim,
                                      zero_bias=True)

    def embed_audio(self, audio: jax.Array, *, train: bool = False) -> jax.Array:
        """[B,T,80,16] -> [B,T,audio_dim]."""
        if audio.ndim != 4 or tuple(audio.shape[2:]) != (80, 16):
            raise ValueError(f"audio must be [B, T, 80, 16] Wav2Lip mel windows, got {tuple(audio.shape)}")
        b, t = audio.shape[:2]
        return self.audio_encoder(audio.reshape(b * t, 80, 16, 1), train=train).reshape(b, t, -1)

    def head(self, audio_em: jax.Array, exp0: jax.Array, controls: jax.Array | None) -> jax.Array:
        """The linear head on embeddings [B,T,A], exp0 [B,E], controls [B,T,K] -> [B,T,E]."""
        b, t = audio_em.shape[:2]
        parts = [audio_em, jnp.broadcast_to(exp0[:, None, :], (b, t, exp0.shape[-1]))]
        k = 0 if controls is None else controls.shape[-1]
        if k != self.cfg.controls:
            raise ValueError(f"this stage-1 model reads {self.cfg.controls} control values per frame, "
                             f"got {k}")
        if controls is not None:
            parts.append(controls)
        x = jnp.concatenate([p.astype(audio_em.dtype) for p in parts], axis=-1)
        return self.policy.f32(self.mapping1(x))

    def __call__(self, audio, exp0, controls=None, *, train: bool = False) -> jax.Array:
        return self.policy.whole(FrameExpression._forward, self, audio, exp0, controls, train=train)

    def _forward(self, audio, exp0, controls=None, *, train: bool = False) -> jax.Array:
        return self.head(self.embed_audio(audio, train=train), exp0, controls)


class ControlGenerator(nnx.Module):
    """Stage 2. ``__call__(audio_em [B,T,A], exp0 [B,E], control0 [B,21], noise [B,T-1,N])`` ->
    controls [B,T,21] (row 0 = control0). ``noise`` is z_1 .. z_{T-1}; ``sample`` draws it.
    The LSTM's state and the controls are float32 (``nn.lstm``); remat per time step."""

    policy = DEFAULT

    def __init__(self, cfg: ExpressionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.control_encoder = nnx.List([_torch_linear(rngs, cfg.control_dim, cfg.control_hidden),
                                         _torch_linear(rngs, cfg.control_hidden, cfg.hidden)])
        self.lstm = LSTM(cfg.audio_dim + cfg.hidden + cfg.exp_dim + cfg.noise_dim, cfg.hidden,
                         cfg.lstm_layers, rngs=rngs)
        self.output = nnx.List([_torch_linear(rngs, cfg.hidden, cfg.control_hidden),
                                _torch_linear(rngs, cfg.control_hidden, cfg.control_dim)])

    @staticmethod
    def _mlp(layers, x):
        return layers[1](jax.nn.leaky_relu(layers[0](x), 0.01))

    def __call__(self, audio_em, exp0, control0, noise) -> jax.Array:
        b, t = audio_em.shape[:2]
        if noise.shape != (b, t - 1, self.cfg.noise_dim):
            raise ValueError(f"noise must be [B={b}, T-1={t - 1}, {self.cfg.noise_dim}], got {noise.shape}")
        c0 = self._mlp(self.control_encoder, control0)  # [B, H]
        steps = audio_em[:, 1:]
        inputs = jnp.concatenate([steps, jnp.broadcast_to(c0[:, None], (b, t - 1, c0.shape[-1])),
                                  jnp.broadcast_to(exp0[:, None], (b, t - 1, exp0.shape[-1])), noise], axis=-1)
        h, _ = self.lstm(inputs)
        out = self.policy.f32(self._mlp(self.output, h + c0[:, None]))
        return jnp.concatenate([control0[:, None].astype(out.dtype), out], axis=1)

    def sample(self, audio_em, exp0, control0, key: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout in this generator
        b, t = audio_em.shape[:2]
        return self(audio_em, exp0, control0, jax.random.normal(key, (b, t - 1, self.cfg.noise_dim)))


def sinusoid_positions(length: int, dim: int) -> jax.Array:
    """[length, dim] sinusoidal position table: sin on even, cos on odd channels (10000^(2i/dim))."""
    pos = jnp.arange(length, dtype=jnp.float32)[:, None]
    rate = jnp.power(10000.0, 2 * (jnp.arange(dim) // 2) / dim)
    angle = pos / rate
    return jnp.where(jnp.arange(dim) % 2 == 0, jnp.sin(angle), jnp.cos(angle))


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class _DecoderLayer(nnx.Module):
    """Post-norm transformer decoder layer (``nn.TransformerDecoderLayer`` wiring, ReLU)."""

    def __init__(self, cfg: ExpressionConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden
        xavier = jax.nn.initializers.xavier_uniform()
        attn = lambda: nnx.MultiHeadAttention(cfg.heads, d, kernel_init=xavier, dropout_rate=cfg.dropout,  # noqa: E731
                                              decode=False, keep_rngs=False, rngs=rngs)
        self.self_attn, self.cross_attn = attn(), attn()
        self.linear1 = nnx.Linear(d, cfg.feed_forward, kernel_init=xavier, rngs=rngs)
        self.linear2 = nnx.Linear(cfg.feed_forward, d, kernel_init=xavier, rngs=rngs)
        self.norms = nnx.List([nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs) for _ in range(3)])
        self.rate = cfg.dropout

    def __call__(self, x, memory, key: jax.Array | None):
        keys = list(jax.random.split(key, 6)) if key is not None else [None] * 6
        det = key is None
        attn_rngs = lambda k: None if det else nnx.Rngs(dropout=k)  # noqa: E731
        x = self.norms[0](x + _dropout(self.self_attn(x, deterministic=det, rngs=attn_rngs(keys[0])),
                                       self.rate, keys[1]))
        x = self.norms[1](x + _dropout(self.cross_attn(x, memory, deterministic=det, rngs=attn_rngs(keys[2])),
                                       self.rate, keys[3]))
        ff = self.linear2(_dropout(jax.nn.relu(self.linear1(x)), self.rate, keys[4]))
        return self.norms[2](x + _dropout(ff, self.rate, keys[5]))


class TransformerControlGenerator(nnx.Module):
    """Stage 2, transformer variant. ``__call__(audio_em [B,T,A], exp0, control0 [B,21], noise
    [B,T,H], dropout_key=None)`` -> controls [B,T,21] (every row generated; exp0 is not read, as
    in the release). ``dropout_key`` given = training (dropout on)."""

    policy = DEFAULT

    def __init__(self, cfg: ExpressionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.control_encoder = nnx.List([_torch_linear(rngs, cfg.control_dim, cfg.control_hidden),
                                         _torch_linear(rngs, cfg.control_hidden, cfg.hidden)])
        self.layers = nnx.List([_DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.decoder_layers)])
        self.norm = nnx.LayerNorm(cfg.hidden, epsilon=1e-5, rngs=rngs)
        self.output = nnx.List([_torch_linear(rngs, cfg.hidden, cfg.control_hidden),
                                _torch_linear(rngs, cfg.control_hidden, cfg.control_dim)])

    def __call__(self, audio_em, exp0, control0, noise, dropout_key: jax.Array | None = None) -> jax.Array:
        del exp0
        b, t = audio_em.shape[:2]
        if noise.shape != (b, t, self.cfg.hidden):
            raise ValueError(f"noise must be [B={b}, T={t}, {self.cfg.hidden}], got {noise.shape}")
        if t > self.cfg.max_frames:
            raise ValueError(f"windows of at most {self.cfg.max_frames} frames, got {t}")
        c0 = ControlGenerator._mlp(self.control_encoder, control0)[:, None]  # [B, 1, H]
        x = noise + sinusoid_positions(t, self.cfg.hidden)[None] + c0
        keys = [None] * len(self.layers) if dropout_key is None else jax.random.split(dropout_key, len(self.layers))
        for layer, k in zip(self.layers, keys):
            x = self.policy.block(layer, x, audio_em, k)
        return self.policy.f32(ControlGenerator._mlp(self.output, self.norm(x) + c0))

    def sample(self, audio_em, exp0, control0, key: jax.Array, *, train: bool = False) -> jax.Array:
        b, t = audio_em.shape[:2]
        noise_key, dropout_key = jax.random.split(key)
        return self(audio_em, exp0, control0, jax.random.normal(noise_key, (b, t, self.cfg.hidden)),
                    dropout_key if train else None)


class TwoStageExpression(nnx.Module):
    """``TwoStageGenerator``: ``__call__(audio [B,T,80,16], exp0, control0, noise)`` -> dict with
    ``audio_em`` [B,T,A], ``controls`` [B,T,21] and ``exp`` [B,T,64]."""

    def __init__(self, cfg: ExpressionConfig, *, rngs: nnx.Rngs):
        if cfg.controls != cfg.control_dim:
            raise ValueError(f"the two-stage model's stage 1 reads the {cfg.control_dim} generated "
                             f"controls; got controls={cfg.controls}")
        self.cfg = cfg
        self.stage1 = FrameExpression(cfg, rngs=rngs)
        generator = TransformerControlGenerator if cfg.control_generator == "transformer" else ControlGenerator
        self.stage2 = generator(cfg, rngs=rngs)

    policy = DEFAULT

    def __call__(self, audio, exp0, control0, noise) -> dict[str, jax.Array]:
        return self.policy.whole(TwoStageExpression._forward, self, audio, exp0, control0, noise)

    def _forward(self, audio, exp0, control0, noise) -> dict[str, jax.Array]:
        audio_em = self.stage1.embed_audio(audio)
        controls = self.stage2(audio_em, exp0, control0, noise)
        return {"audio_em": audio_em, "controls": controls,
                "exp": self.stage1.head(audio_em, exp0, controls)}
