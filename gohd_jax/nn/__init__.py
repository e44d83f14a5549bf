"""Layers shared by the models (NHWC, Flax NNX, pure jnp/lax)."""

from gohd_jax.nn.stylegan import (DEFAULT_BLUR, Blur, ConstantInput, Conv2d, ConvLayer,
                                  EqualConv2d, EqualLinear, FusedLeakyReLU, ModulatedConv2d,
                                  NoiseInjection, ResBlock, StyledConv, ToFlow, ToRGB, Upsample,
                                  conv2d, conv_transpose2d, fused_leaky_relu, leaky_relu,
                                  normal_init, uniform_init, upfirdn2d)
from gohd_jax.nn.warp import grid_sample, identity_grid

__all__ = [
    "DEFAULT_BLUR", "Blur", "ConstantInput", "Conv2d", "ConvLayer", "EqualConv2d", "EqualLinear",
    "FusedLeakyReLU", "ModulatedConv2d", "NoiseInjection", "ResBlock", "StyledConv", "ToFlow",
    "ToRGB", "Upsample", "conv2d", "conv_transpose2d", "fused_leaky_relu", "leaky_relu",
    "upfirdn2d", "normal_init", "uniform_init", "grid_sample", "identity_grid",
]
