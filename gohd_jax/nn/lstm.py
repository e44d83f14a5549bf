"""A stacked LSTM with PyTorch's parameterisation (``torch.nn.LSTM``, batch_first), in Flax NNX."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gohd_jax.nn.policy import DEFAULT

__all__ = ["LSTM"]


class LSTM(nnx.Module):
    """A stacked LSTM with PyTorch's parameterisation: per layer kernel_ih [in, 4H],
    kernel_hh [H, 4H], bias_ih and bias_hh [4H], gates i, f, g, o. ``step(carry, x)`` runs one time
    step; ``__call__(x [B,T,in])`` -> (h [B,T,H], final carry) from a zero state.

    Precision (``gohd_jax.nn.policy``): the gate matmuls take compute-dtype inputs and accumulate
    in float32; the cell and hidden states (the recurrence) and the outputs are float32. Under
    ``remat`` "blocks"/"full" each time step is rematerialised.
    """

    policy = DEFAULT

    def __init__(self, in_dim: int, hidden: int, layers: int, *, rngs: nnx.Rngs):
        self.hidden, self.layers = hidden, layers
        bound = 1.0 / math.sqrt(hidden)
        u = lambda shape: nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))  # noqa: E731
        self.kernel_ih = nnx.List([u((in_dim if i == 0 else hidden, 4 * hidden)) for i in range(layers)])
        self.kernel_hh = nnx.List([u((hidden, 4 * hidden)) for _ in range(layers)])
        self.bias_ih = nnx.List([u((4 * hidden,)) for _ in range(layers)])
        self.bias_hh = nnx.List([u((4 * hidden,)) for _ in range(layers)])

    def zero_carry(self, batch: int, dtype=jnp.float32):
        z = jnp.zeros((self.layers, batch, self.hidden), dtype)
        return z, z

    def _matmul(self, x, w):
        pol = self.policy
        acc = pol.f32(x).dtype
        return jnp.matmul(pol.cast(x), pol.cast(w.astype(x.dtype)), precision=pol.dot_precision,
                          preferred_element_type=acc)

    def step(self, carry, x):
        h, c = carry
        hs, cs = [], []
        for i in range(self.layers):
            gates = (self._matmul(x, self.kernel_ih[i][...]) + self.bias_ih[i][...]
                     + self._matmul(h[i], self.kernel_hh[i][...]) + self.bias_hh[i][...])
            gi, gf, gg, go = jnp.split(gates, 4, axis=-1)
            ci = jax.nn.sigmoid(gf) * c[i] + jax.nn.sigmoid(gi) * jnp.tanh(gg)
            hi = jax.nn.sigmoid(go) * jnp.tanh(ci)
            hs.append(hi)
            cs.append(ci)
            x = hi
        return (jnp.stack(hs), jnp.stack(cs)), x

    def __call__(self, x: jax.Array):
        step = self.step if self.policy.remat == "none" else jax.checkpoint(self.step)
        x = self.policy.f32(x)
        carry, ys = jax.lax.scan(step, self.zero_carry(x.shape[0], x.dtype), jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(ys, 0, 1), carry
