"""The execution policy: compute precision and rematerialisation, one small object per model.

A model is built as usual (parameters float32) and then given a policy with ``apply(model,
policy)``: every module in its graph that has a ``policy`` attribute gets this one, and Flax's
own layers (``nnx.Linear``, ``nnx.Conv``, ``nnx.MultiHeadAttention``, the norms) get its compute
dtype and matmul precision. The policy is a static attribute, so it is part of the graph
definition: a jitted step over ``nnx.split`` state is traced once per policy, never reused
across policies.

What stays float32 whatever the policy (``Policy.f32``): parameters, optimizer state, EMA,
losses, metrics, diffusion schedules, sampler state and noise, audio features, the QR of the
motion directions, flow fields, sampling grids and warp coordinates, softmax, normalisation and
demodulation statistics, and output images before quantisation. Under ``bfloat16`` the rest
(convolutions, matmuls, the inputs of attention scores, activations between layers) runs in
bfloat16 (``Policy.cast``). Float64 inputs are never cast: the parity route under
``jax.enable_x64`` still runs float64 throughout.

Matmul precision: computations that stay float32 use ``Precision.HIGHEST`` on every backend
(``HIGHEST``; on TPU the default runs a float32 dot as one bfloat16 pass); compute matmuls use
the backend default (``Policy.dot_precision``), except with ``parity=True``, which keeps float32
and HIGHEST everywhere (the oracle checks).

``platform`` is the backend the program is compiled *for* (``"cpu"``, ``"gpu"``, ``"tpu"``), not
the host's: ``gohd-aot`` compiles TPU and GPU programs on a CPU machine, and forms chosen by
backend (``conv_transpose2d``'s method, ``"auto"`` precision) must follow the target.

Rematerialisation (``remat``): ``"none"``; ``"blocks"``: each block (the animator's encoder
ResBlocks and decoder levels, the discriminator's ResBlocks, the conformer's residual layers,
the expression audio encoder's conv blocks and stage 2's recurrence or decoder layers) keeps only
its input for the backward pass and recomputes the rest; ``"full"``: the whole model forward is
rematerialised as well (only the model's inputs are kept; the blocks inside recompute in turn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["HIGHEST", "PRECISIONS", "REMATS", "Policy", "DEFAULT", "PARITY", "resolve",
           "from_config", "apply", "with_policy", "policy_of", "platform_of"]

HIGHEST = jax.lax.Precision.HIGHEST
PRECISIONS = ("auto", "float32", "bfloat16")
REMATS = ("none", "blocks", "full")
_COMPUTE = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FLAX_COMPUTE_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose, nnx.Einsum,
                        nnx.MultiHeadAttention)
_FLAX_NORMS = (nnx.LayerNorm, nnx.BatchNorm, nnx.GroupNorm, nnx.RMSNorm)


def platform_of(devices) -> str:
    """``"cpu"`` | ``"gpu"`` | ``"tpu"`` of a device list or mesh (CUDA/ROCm devices -> gpu)."""
    devs = getattr(devices, "devices", devices)
    first = next(iter(getattr(devs, "flat", devs)))
    p = first.platform.lower()
    return "gpu" if p in ("gpu", "cuda", "rocm") else p


@dataclasses.dataclass(frozen=True)
class Policy:
    """How a model computes (hashable; a static part of the graph definition).

    compute:  "float32" | "bfloat16" (resolved; "auto" is turned into one of them by ``resolve``).
    remat:    "none" | "blocks" | "full".
    platform: the compile target ("cpu" | "gpu" | "tpu"), or None for ``jax.default_backend()``.
    parity:   float32 and HIGHEST everywhere (oracle checks); implies compute float32.
    """

    compute: str = "float32"
    remat: str = "none"
    platform: str | None = None
    parity: bool = False

    def __post_init__(self):
        if self.compute not in _COMPUTE:
            raise ValueError(f"policy compute must be float32 or bfloat16, got {self.compute!r}")
        if self.remat not in REMATS:
            raise ValueError(f"remat must be one of {', '.join(REMATS)}; got {self.remat!r}")
        if self.parity and self.compute != "float32":
            raise ValueError("a parity policy computes in float32")

    # ---- dtypes
    @property
    def compute_dtype(self):
        return _COMPUTE[self.compute]

    @property
    def low_precision(self) -> bool:
        return self.compute != "float32"

    def cast(self, x: jax.Array) -> jax.Array:
        """``x`` in the compute dtype: float32 -> bfloat16 under bfloat16; otherwise unchanged
        (float64 stays float64, integers stay integers)."""
        if self.low_precision and x.dtype == jnp.float32:
            return x.astype(self.compute_dtype)
        return x

    @staticmethod
    def f32(x: jax.Array) -> jax.Array:
        """``x`` for a float32-always computation: low-precision floats -> float32 (float64 kept)."""
        if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
            return x.astype(jnp.float32)
        return x

    @property
    def dot_precision(self):
        """Precision of compute matmuls and convolutions: HIGHEST in parity mode, else default."""
        return HIGHEST if self.parity else None

    @property
    def target(self) -> str:
        """The platform the program is compiled for."""
        return self.platform or platform_of(jax.devices()[:1])

    # ---- rematerialisation
    def block(self, module: nnx.Module, *args, fn: Callable | None = None, **static_kwargs) -> Any:
        """``module(*args, **static_kwargs)`` (or ``fn(module, *args, **static_kwargs)``),
        rematerialised under "blocks" and "full".

        ``args`` are arrays or pytrees of them (None allowed) and may carry gradients;
        ``static_kwargs`` are Python values (flags, indices) closed over.
        """
        call = fn if fn is not None else (lambda m, *a, **k: m(*a, **k))
        if self.remat == "none":
            return call(module, *args, **static_kwargs)
        return _checkpointed(lambda m, *a: call(m, *a, **static_kwargs), module, *args)

    def whole(self, fn: Callable, module: nnx.Module, *args, **static_kwargs) -> Any:
        """``fn(module, *args, **static_kwargs)``, the whole forward rematerialised under "full"."""
        if self.remat != "full":
            return fn(module, *args, **static_kwargs)
        return _checkpointed(lambda m, *a: fn(m, *a, **static_kwargs), module, *args)

    def replace(self, **kw) -> "Policy":
        return dataclasses.replace(self, **kw)


def _checkpointed(call: Callable, module: nnx.Module, *args) -> Any:
    """``call(module, *args)`` under ``jax.checkpoint``, over the module's state as arrays.

    Only the variables the call really changed (batch statistics in training) are written back
    to ``module``: a frozen module called inside a ``jax.vmap`` (stage 2's samples) must not be
    written at all (NNX refuses a write from another trace level, which ``nnx.remat`` attempts).
    """
    graphdef, state = nnx.split(module)
    flat = list(nnx.to_flat_state(state))
    paths = [p for p, _ in flat]
    leaves = [v.get_value() if isinstance(v, nnx.Variable) else v for _, v in flat]
    changed: list[int] = []

    def run(leaves, *a):
        inner = nnx.merge(graphdef, nnx.from_flat_state(
            [(p, type(v)(x) if isinstance(v, nnx.Variable) else x)
             for (p, v), x in zip(flat, leaves)]))
        out = call(inner, *a)
        new = [v.get_value() if isinstance(v, nnx.Variable) else v
               for _, v in nnx.to_flat_state(nnx.split(inner)[1])]
        changed[:] = [i for i, (old, n) in enumerate(zip(leaves, new)) if old is not n]
        return out, [new[i] for i in changed]

    out, updates = jax.checkpoint(run)(leaves, *args)
    if changed:
        nnx.update(module, nnx.from_flat_state(
            [(paths[i], type(flat[i][1])(x)) for i, x in zip(changed, updates)]))
    return out


DEFAULT = Policy()
PARITY = Policy(parity=True)


def resolve(precision: str = "auto", *, platform: str | None = None, remat: str = "none") -> Policy:
    """The policy for ``precision`` ("auto" | "float32" | "bfloat16") on ``platform`` (the compile
    target; default the host's backend). "auto": bfloat16 on GPU and TPU, float32 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    platform = platform or platform_of(jax.devices()[:1])
    compute = precision if precision != "auto" else ("float32" if platform == "cpu" else "bfloat16")
    return Policy(compute=compute, remat=remat, platform=platform)


def from_config(config, *, platform: str | None = None) -> Policy:
    """The policy of a run's config (``config.precision``, ``config.remat``; see
    ``configs/common.py``), for the compile target ``platform``."""
    return resolve(str(config.get("precision", "auto")), platform=platform,
                   remat=str(config.get("remat", "none")))


def apply(model, policy: Policy):
    """Gives ``policy`` to every module of ``model`` (a module, or a dict of modules); returns it.

    Our layers read ``self.policy``; Flax's compute layers get ``dtype`` = the compute dtype (None
    under float32: they follow their inputs, as before) and ``precision``; Flax's norms compute
    their statistics in float32 and return the compute dtype. ``nnx.MultiHeadAttention`` (and
    its projections) keep float32, as Flax computes its softmax in the module's dtype.
    """
    if isinstance(model, Mapping):
        for m in model.values():
            apply(m, policy)
        return model
    dtype = policy.compute_dtype if policy.low_precision else None
    # Flax's attention runs its softmax in its compute dtype: attention modules (stage 2's
    # transformer variant, a small model) keep float32, projections included.
    float32_only = {id(m) for _, a in nnx.iter_graph(model) if isinstance(a, nnx.MultiHeadAttention)
                    for _, m in nnx.iter_graph(a)}
    for _, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module):
            continue
        if id(module) in float32_only:
            if hasattr(module, "precision"):
                module.precision = policy.dot_precision
            continue
        if hasattr(module, "policy"):
            module.policy = policy
        if isinstance(module, _FLAX_COMPUTE_LAYERS):
            module.dtype = dtype
            if hasattr(module, "precision"):
                module.precision = policy.dot_precision
        elif isinstance(module, _FLAX_NORMS):
            module.dtype = dtype
    return model


def with_policy(model: nnx.Module, policy: Policy) -> nnx.Module:
    """A view of ``model`` under ``policy``: new module objects over the same parameter arrays
    (nothing copied); ``model`` itself keeps its policy."""
    graph, state = nnx.split(model)
    return apply(nnx.merge(graph, state), policy)


def policy_of(module: nnx.Module) -> Policy:
    return getattr(module, "policy", DEFAULT)
