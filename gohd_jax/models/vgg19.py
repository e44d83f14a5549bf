"""VGG19 features for LIA's perceptual loss (torchvision ``vgg19().features`` up to relu5_1), NHWC.

LIA (``LIA-train:vgg19.py``, the FOMM recipe) cuts torchvision's ``features`` stack into five
slices and returns the activation after each::

    slice1 = features[0:2]    conv1_1 relu                                -> relu1_1 [B, H,    W,    64]
    slice2 = features[2:7]    conv1_2 relu pool conv2_1 relu              -> relu2_1 [B, H/2,  W/2,  128]
    slice3 = features[7:12]   conv2_2 relu pool conv3_1 relu              -> relu3_1 [B, H/4,  W/4,  256]
    slice4 = features[12:21]  conv3_2..conv3_4 (relu) pool conv4_1 relu   -> relu4_1 [B, H/8,  W/8,  512]
    slice5 = features[21:30]  conv4_2..conv4_4 (relu) pool conv5_1 relu   -> relu5_1 [B, H/16, W/16, 512]

All convolutions are 3x3, stride 1, zero padding 1, with bias; pools are 2x2 max pools, stride 2,
rounding down (``nn.MaxPool2d(2, 2)``), so spatial sizes are ``floor(H / 2**k)``.

Input: RGB images [B, H, W, 3] in [-1, 1]. As LIA does, they are clamped to [-1, 1], mapped to
[0, 1] and normalised with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
inside the module.

The weights are :class:`VGGWeight` variables, not ``nnx.Param``: the network is a frozen loss
network, so an optimiser built with ``wrt=nnx.Param`` never updates it. Kernels are HWIO
([3, 3, in, out]); torchvision's OIHW ``features.{i}.weight`` map to them in
``gohd_jax.interop.vgg19_weights``, which also loads the converted ``.npz``
(:func:`gohd_jax.interop.vgg19_weights.load_vgg19`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from gohd_jax.nn.policy import DEFAULT

__all__ = ["VGGWeight", "VGG19Features", "VGG19_CONVS", "SLICE_NAMES", "IMAGENET_MEAN",
           "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (name, in channels, out channels, index in torchvision's vgg19().features), in forward order.
VGG19_CONVS: tuple[tuple[str, int, int, int], ...] = (
    ("conv1_1", 3, 64, 0), ("conv1_2", 64, 64, 2),
    ("conv2_1", 64, 128, 5), ("conv2_2", 128, 128, 7),
    ("conv3_1", 128, 256, 10), ("conv3_2", 256, 256, 12), ("conv3_3", 256, 256, 14),
    ("conv3_4", 256, 256, 16),
    ("conv4_1", 256, 512, 19), ("conv4_2", 512, 512, 21), ("conv4_3", 512, 512, 23),
    ("conv4_4", 512, 512, 25),
    ("conv5_1", 512, 512, 28),
)
SLICE_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Forward program: conv names, "pool", and the outputs after the named relus.
_PROGRAM = ("conv1_1", "out", "conv1_2", "pool", "conv2_1", "out", "conv2_2", "pool", "conv3_1",
            "out", "conv3_2", "conv3_3", "conv3_4", "pool", "conv4_1", "out", "conv4_2",
            "conv4_3", "conv4_4", "pool", "conv5_1", "out")


class VGGWeight(nnx.Variable):
    """A frozen weight of the perceptual network (not an ``nnx.Param``: never trained)."""


class _Conv3x3(nnx.Module):
    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs | None, kernel=None, bias=None,
                 param_dtype=jnp.float32):
        if kernel is None:  # torchvision init: kaiming_normal_(fan_out, relu), zero bias
            # Drawn with numpy from the key's bits: the same numbers for the same key, and ~20x
            # faster on CPU than compiling jax.random for each of the 13 kernel shapes.
            seed = np.asarray(jax.random.key_data(rngs.params())).astype(np.uint32).ravel()
            std = np.sqrt(2.0 / (cout * 9))
            kernel = std * np.random.default_rng(seed).standard_normal((3, 3, cin, cout), np.float32)
        if bias is None:
            bias = jnp.zeros((cout,), param_dtype)
        kernel = jnp.asarray(kernel, param_dtype)
        bias = jnp.asarray(bias, param_dtype)
        if kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
            raise ValueError(f"conv {cin}->{cout}: got kernel {kernel.shape}, bias {bias.shape}; "
                             f"expected (3, 3, {cin}, {cout}) and ({cout},)")
        self.kernel = VGGWeight(kernel)
        self.bias = VGGWeight(bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(x.dtype)
        y = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(x.dtype)


def _max_pool2(x: jax.Array) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class VGG19Features(nnx.Module):
    """torchvision VGG19 ``features`` through relu5_1, returning LIA's five slice outputs.

    Args:
      rngs: for the random (torchvision-style) init when ``params`` is not given.
      params: optional ``{"conv1_1.kernel": [3,3,3,64], "conv1_1.bias": [64], ...}`` (13 convs,
        HWIO kernels), e.g. from ``gohd_jax.interop.vgg19_weights``; no random init then.
      dtype: compute dtype (default: the input's dtype, float32 for float32 inputs).
      param_dtype: storage dtype of the weights.

    Call: ``feats = vgg(x)`` with ``x`` [B, H, W, 3] RGB in [-1, 1]; returns a tuple of 5 arrays
    (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1) with shapes [B, H/2**k, W/2**k, C_k],
    C = (64, 128, 256, 512, 512), k = 0..4, sizes rounded down. A slice whose spatial size
    rounds to 0 (an input side under 16 px) comes back with a zero-sized axis.

    With a policy (``gohd_jax.nn.policy.apply``) and no explicit ``dtype``, the convolutions run
    in the policy's compute dtype (the perceptual loss itself is summed in float32).
    """

    policy = DEFAULT

    def __init__(self, *, rngs: nnx.Rngs | None = None, params: Mapping[str, np.ndarray] | None = None,
                 dtype=None, param_dtype=jnp.float32):
        if params is None and rngs is None:
            rngs = nnx.Rngs(0)
        if params is not None:
            missing = [f"{n}.{p}" for n, *_ in VGG19_CONVS for p in ("kernel", "bias")
                       if f"{n}.{p}" not in params]
            if missing:
                raise ValueError(f"VGG19 params lack {missing[:4]}{'...' if len(missing) > 4 else ''}")
        self.dtype = dtype
        for name, cin, cout, _ in VGG19_CONVS:
            kw = {} if params is None else dict(kernel=params[f"{name}.kernel"],
                                                bias=params[f"{name}.bias"])
            setattr(self, name, _Conv3x3(cin, cout, rngs=rngs, param_dtype=param_dtype, **kw))
        self.mean = VGGWeight(jnp.asarray(IMAGENET_MEAN, jnp.float32))
        self.std = VGGWeight(jnp.asarray(IMAGENET_STD, jnp.float32))

    @classmethod
    def zeros(cls, **kwargs) -> "VGG19Features":
        """All-zero weights of the right shapes (no random init: usable inside jit), to be
        overwritten with real ones (``Task.pretrained``)."""
        params = {**{f"{n}.kernel": jnp.zeros((3, 3, ci, co), jnp.float32) for n, ci, co, _ in VGG19_CONVS},
                  **{f"{n}.bias": jnp.zeros((co,), jnp.float32) for n, _, co, _ in VGG19_CONVS}}
        return cls(params=params, **kwargs)

    def normalize(self, x: jax.Array) -> jax.Array:
        """[-1, 1] RGB -> ImageNet-normalised input (LIA: clamp, /2 + 0.5, (x - mean) / std)."""
        x = jnp.clip(x, -1.0, 1.0) / 2 + 0.5
        return (x - self.mean[...].astype(x.dtype)) / self.std[...].astype(x.dtype)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG19Features expects [B, H, W, 3] RGB images, got shape {x.shape}")
        dtype = self.dtype or (x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
        if self.dtype is None and self.policy.low_precision and dtype == jnp.float32:
            dtype = self.policy.compute_dtype
        h = self.normalize(x.astype(dtype))
        outs = []
        for step in _PROGRAM:
            if step == "pool":
                h = _max_pool2(h)
            elif step == "out":
                outs.append(h)
            else:
                h = jax.nn.relu(getattr(self, step)(h))
        return tuple(outs)

    def params_dict(self) -> dict[str, np.ndarray]:
        """The weights as ``{"conv1_1.kernel": ..., ...}`` numpy arrays (the ``.npz`` layout)."""
        out = {}
        for name, *_ in VGG19_CONVS:
            conv = getattr(self, name)
            out[f"{name}.kernel"] = np.asarray(conv.kernel[...])
            out[f"{name}.bias"] = np.asarray(conv.bias[...])
        return out
