"""The SyncNet of joonson/syncnet_python (``SyncNetModel.S``, weights ``syncnet_v2.model``) in
Flax NNX, channels-last: the network behind the LSE-D / LSE-C lip-sync scores (``gohd_jax.eval.lse``).

Not Wav2Lip's ``SyncNet_color`` (that one is ``gohd_jax.models.syncnet``). Two streams, each a
conv net (conv -> BatchNorm (eps 1e-5, running statistics) -> ReLU, with max pools) followed by
an MLP ``Linear(512, 512) -> BatchNorm1d -> ReLU -> Linear(512, 1024)``:

* audio: one MFCC window [B, 13 coefficients, 20 MFCC frames (0.2 s at 100 Hz), 1] (NHWC of
  torch's [B, 1, 13, 20]) -> 2-D convs 64, 192 (pool 3x3 stride (1, 2)), 384, 256, 256 (pool 3x3
  stride 2), then a 5x4 conv to [B, 1, 1, 512] -> ``embed_audio`` [B, 1024].
* lip: five consecutive 224x224 face crops [B, 5, 224, 224, 3], raw pixel values 0..255 (no
  normalisation; the channel order the official evaluation feeds is BGR, see ``eval.lse``)
  (NDHWC of torch's [B, 3, 5, 224, 224]) -> 3-D convs: 5x7x7 stride (1, 2, 2) (the only one
  that spans time: 5 frames -> 1) to 96 channels at 109x109, pool 3x3/2 -> 54, 1x5x5/2 pad 1 ->
  256 at 26, pool 3x3/2 pad 1 -> 13, three 1x3x3 convs (256), pool 3x3/2 -> 6, a 1x6x6 conv to
  [B, 1, 1, 1, 512]. ``lip_features`` is that flattened [B, 512] (torch ``forward_lipfeat``),
  ``embed_lip`` the [B, 1024] embedding after the MLP (``forward_lip``).

Embeddings are not normalised (the LSE distances are plain Euclidean distances between them).
``audio_activations`` / ``lip_activations`` return the intermediates the oracle stores, keyed by
the index of the official ``nn.Sequential`` layer whose output they are (``cnn_3``, ``cnn_7``,
``cnn_17``: the outputs of the three max pools; ``cnn_out``: the last ReLU), channels-last.

Parameters keep torch's layout transposed: 2-D conv weights [kh, kw, Cin, Cout], 3-D conv
weights [kd, kh, kw, Cin, Cout], Linear kernels [in, out]. Numerics follow ``nn.policy``: the
default policy is ``PARITY`` (float32, ``Precision.HIGHEST`` for every conv and matmul), the
setting a metric should use; ``nn.policy.apply(model, policy)`` may give another. Inference
only; jit and batch it like any NNX module (one compilation per input shape).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from gohd_jax.nn.policy import PARITY

__all__ = ["SyncNetV2", "AUDIO_CONVS", "LIP_CONVS", "CONV_INDICES", "AUDIO_SHAPE", "LIP_SHAPE",
           "EMBED_DIM", "FEATURE_DIM", "STAGES"]

EMBED_DIM = 1024  # S(num_layers_in_fc_layers=1024), as SyncNetInstance builds it
FEATURE_DIM = 512  # the conv nets' output (the MLPs' input); ``lip_features`` size
AUDIO_SHAPE = (13, 20, 1)  # one MFCC window, [coefficients, MFCC frames, 1]
LIP_SHAPE = (5, 224, 224, 3)  # five face crops, [frames, H, W, channels]

# Positions of the convolutions in the official nn.Sequential (netcnnaud and netcnnlip share
# them); each is followed by its BatchNorm at +1 and a ReLU at +2.
CONV_INDICES = (0, 4, 8, 11, 14, 18)
# (Cin, Cout, kernel (h, w), padding (h, w)); stride 1 everywhere.
AUDIO_CONVS = ((1, 64, (3, 3), (1, 1)), (64, 192, (3, 3), (1, 1)), (192, 384, (3, 3), (1, 1)),
               (384, 256, (3, 3), (1, 1)), (256, 256, (3, 3), (1, 1)), (256, 512, (5, 4), (0, 0)))
# (Cin, Cout, kernel (d, h, w), spatial stride, spatial padding); no time stride or padding.
LIP_CONVS = ((3, 96, (5, 7, 7), 2, 0), (96, 256, (1, 5, 5), 2, 1), (256, 256, (1, 3, 3), 1, 1),
             (256, 256, (1, 3, 3), 1, 1), (256, 256, (1, 3, 3), 1, 1), (256, 512, (1, 6, 6), 1, 0))
# Max pools after conv k: (window (h, w), stride (h, w), padding (h, w)) with the official index
# of the pool (= the intermediate's name). The audio net's first pool is 1x1 (an identity).
AUDIO_POOLS = {0: ((1, 1), (1, 1), (0, 0), 3), 1: ((3, 3), (1, 2), (0, 0), 7),
               4: ((3, 3), (2, 2), (0, 0), 17)}
LIP_POOLS = {0: ((3, 3), (2, 2), (0, 0), 3), 1: ((3, 3), (2, 2), (1, 1), 7),
             4: ((3, 3), (2, 2), (0, 0), 17)}
STAGES = ("cnn_3", "cnn_7", "cnn_17", "cnn_out")


def _bn(c: int, rngs: nnx.Rngs, param_dtype) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, use_running_average=True, rngs=rngs,
                         param_dtype=param_dtype)


def _uniform(rngs: nnx.Rngs, shape, fan_in: int, param_dtype) -> jax.Array:
    bound = 1.0 / fan_in ** 0.5  # torch's default conv/linear init range
    return jax.random.uniform(rngs.params(), shape, param_dtype, -bound, bound)


class _Conv(nnx.Module):
    """A 2-D (``depth=None``) or 3-D conv with bias, channels-last.

    2-D: x [B,H,W,Cin], weight [kh,kw,Cin,Cout]. 3-D: x [B,D,H,W,Cin], weight [kd,kh,kw,Cin,Cout],
    time stride 1 and no time padding. Computed as a 2-D conv (the same sums, and 4x faster than
    XLA's 3-D conv on CPU): with kd = 1 over the B*D images, and where the window spans the whole
    input depth (D = kd: the lip net's first conv on 5 frames -> 1) with the frames folded into
    the channels. Other depths are not needed by SyncNet and are refused.
    """

    policy = PARITY

    def __init__(self, cin: int, cout: int, kernel: tuple[int, ...], stride: int | tuple[int, int],
                 padding: tuple[int, int], *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        self.padding = tuple(padding)
        fan_in = cin
        for k in kernel:
            fan_in *= k
        self.weight = nnx.Param(_uniform(rngs, (*kernel, cin, cout), fan_in, param_dtype))
        self.bias = nnx.Param(_uniform(rngs, (cout,), fan_in, param_dtype))

    def _conv2d(self, x: jax.Array, w: jax.Array) -> jax.Array:
        pol = self.policy
        (ph, pw) = self.padding
        return lax.conv_general_dilated(pol.cast(x), pol.cast(w.astype(x.dtype)), self.stride,
                                        ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=pol.dot_precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...]
        bias = self.policy.cast(self.bias[...].astype(x.dtype))
        if w.ndim == 4:
            return self._conv2d(x, w) + bias
        kd, kh, kw, cin, cout = w.shape
        b, d, h, wd, c = x.shape
        if kd == 1:
            y = self._conv2d(x.reshape(b * d, h, wd, c), w[0])
            return y.reshape(b, d, *y.shape[1:]) + bias
        if d == kd:  # fold the frames into the channels: index f * Cin + c on both sides
            xf = jnp.moveaxis(x, 1, 3).reshape(b, h, wd, d * c)
            wf = jnp.moveaxis(w, 0, 2).reshape(kh, kw, kd * cin, cout)
            return self._conv2d(xf, wf)[:, None] + bias
        raise ValueError(f"a {kd}-frame conv takes {kd} frames here (or kernel depth 1), got {d}")


def _max_pool(x: jax.Array, window, stride, padding) -> jax.Array:
    """Max pool over the two spatial axes before the channels (H, W of [...,H,W,C]); padding is
    -inf, as torch's MaxPool."""
    lead = x.ndim - 3
    (ph, pw) = padding
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) * lead + (*window, 1),
                             (1,) * lead + (*stride, 1),
                             ((0, 0),) * lead + ((ph, ph), (pw, pw), (0, 0)))


class _MLP(nnx.Module):
    """``netfcaud`` / ``netfclip``: Linear(512, 512) -> BatchNorm1d -> ReLU -> Linear(512, out)."""

    def __init__(self, out_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype, precision=lax.Precision.HIGHEST)
        init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        self.fc0 = nnx.Linear(FEATURE_DIM, FEATURE_DIM, kernel_init=init, **kw)
        self.bn1 = _bn(FEATURE_DIM, rngs, param_dtype)
        self.fc3 = nnx.Linear(FEATURE_DIM, out_dim, kernel_init=init, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc3(jax.nn.relu(self.bn1(self.fc0(x))))


class SyncNetV2(nnx.Module):
    """syncnet_python's ``S``: ``embed_audio`` (forward_aud), ``embed_lip`` (forward_lip),
    ``lip_features`` (forward_lipfeat); ``audio_activations`` / ``lip_activations`` return the
    intermediates as well. See the module docstring for shapes."""

    policy = PARITY

    def __init__(self, *, embed_dim: int = EMBED_DIM, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.embed_dim = embed_dim
        self.aud_convs = nnx.List([_Conv(ci, co, k, 1, p, **kw) for ci, co, k, p in AUDIO_CONVS])
        self.aud_bns = nnx.List([_bn(co, rngs, param_dtype) for _, co, _, _ in AUDIO_CONVS])
        self.lip_convs = nnx.List([_Conv(ci, co, k, s, (p, p), **kw) for ci, co, k, s, p in LIP_CONVS])
        self.lip_bns = nnx.List([_bn(co, rngs, param_dtype) for _, co, _, _, _ in LIP_CONVS])
        self.fcaud = _MLP(embed_dim, **kw)
        self.fclip = _MLP(embed_dim, **kw)

    # ---- the conv nets
    @staticmethod
    def _cnn(x, convs, bns, pools, policy) -> dict[str, jax.Array]:
        acts = {}
        x = policy.cast(x)
        for k, (conv, bn) in enumerate(zip(convs, bns)):
            x = jax.nn.relu(bn(conv(x)))
            if k in pools:
                window, stride, padding, index = pools[k]
                x = _max_pool(x, window, stride, padding)
                acts[f"cnn_{index}"] = x
        acts["cnn_out"] = x
        return acts

    def audio_activations(self, mfcc: jax.Array) -> dict[str, jax.Array]:
        """mfcc [B,13,20,1] -> {cnn_3 [B,13,20,64], cnn_7 [B,11,9,192], cnn_17 [B,5,4,256],
        cnn_out [B,1,1,512], emb [B,1024]} (float32)."""
        if mfcc.ndim != 4 or tuple(mfcc.shape[1:]) != AUDIO_SHAPE:
            raise ValueError(f"the SyncNet audio stream wants MFCC windows [B,13,20,1], got "
                             f"{tuple(mfcc.shape)}")
        acts = self._cnn(mfcc, self.aud_convs, self.aud_bns, AUDIO_POOLS, self.policy)
        acts = {k: self.policy.f32(v) for k, v in acts.items()}
        acts["emb"] = self.policy.f32(self.fcaud(acts["cnn_out"].reshape(mfcc.shape[0], -1)))
        return acts

    def lip_activations(self, frames: jax.Array) -> dict[str, jax.Array]:
        """frames [B,5,224,224,3] (0..255) -> {cnn_3 [B,1,54,54,96], cnn_7 [B,1,13,13,256],
        cnn_17 [B,1,6,6,256], cnn_out [B,1,1,1,512], feat [B,512], emb [B,1024]} (float32)."""
        if frames.ndim != 5 or tuple(frames.shape[1:]) != LIP_SHAPE:
            raise ValueError(f"the SyncNet lip stream wants 5 face crops [B,5,224,224,3], got "
                             f"{tuple(frames.shape)}")
        x = frames.astype(jnp.float32) if not jnp.issubdtype(frames.dtype, jnp.floating) else frames
        acts = self._cnn(x, self.lip_convs, self.lip_bns, LIP_POOLS, self.policy)
        acts = {k: self.policy.f32(v) for k, v in acts.items()}
        acts["feat"] = acts["cnn_out"].reshape(frames.shape[0], -1)
        acts["emb"] = self.policy.f32(self.fclip(acts["feat"]))
        return acts

    # ---- the official forwards
    def embed_audio(self, mfcc: jax.Array) -> jax.Array:
        """``forward_aud``: MFCC windows [B,13,20,1] -> [B,1024]."""
        return self.audio_activations(mfcc)["emb"]

    def embed_lip(self, frames: jax.Array) -> jax.Array:
        """``forward_lip``: face crops [B,5,224,224,3] (0..255, uint8 or float) -> [B,1024]."""
        return self.lip_activations(frames)["emb"]

    def lip_features(self, frames: jax.Array) -> jax.Array:
        """``forward_lipfeat``: face crops [B,5,224,224,3] -> the conv net's [B,512]."""
        return self.lip_activations(frames)["feat"]

    def __call__(self, mfcc: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(audio embedding [B,1024], lip embedding [B,1024])."""
        return self.embed_audio(mfcc), self.embed_lip(frames)
