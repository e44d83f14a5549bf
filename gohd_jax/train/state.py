"""The functional train state and what a task's pure step sees of its models."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Everything a step reads and writes, as one pytree (saved whole in checkpoints).

    step:   int32 [] number of optimizer steps taken.
    params: model name -> nnx.State of its ``nnx.Param`` variables.
    rest:   model name -> nnx.State of its other variables (batch statistics...).
    opt:    model name -> optax state (only models that have an optimizer).
    ema:    model name -> exponential moving average of ``params`` (models the task lists).
    rng:    uint32 [2] raw data of the run's base PRNG key; step k uses fold_in(key, k).
    """

    step: jax.Array
    params: dict[str, Any]
    rest: dict[str, Any]
    opt: dict[str, Any]
    ema: dict[str, Any]
    rng: jax.Array

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def ema_decay_at(step, ema_decay: float, warmup: bool):
    """The EMA decay applied at (1-based) ``step``: ``ema_decay``, or with ``warmup``
    min(ema_decay, (1 + step) / (10 + step)) (``configs/common.py``: ema_warmup)."""
    if not warmup:
        return jnp.float32(ema_decay)
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(ema_decay), (1.0 + t) / (10.0 + t))


def step_with_ema(task_step, state: TrainState, batch, ema_decay: float, ema_warmup: bool = False):
    """The trainer's step around a task's pure step ``task_step(state, batch, key)``: the step's
    key from the state, the step counter + 1, and the EMA (``ema_decay``, warmed up with
    ``ema_warmup``: ``ema_decay_at``) of the models the state keeps one of. Returns (new state,
    metrics)."""
    new, metrics = task_step(state, batch, state.step_key())
    new = new.replace(step=state.step + 1)
    if new.ema:
        d = ema_decay_at(new.step, ema_decay, ema_warmup)
        new = new.replace(ema={n: jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, e_, new.params[n])
                               for n, e_ in new.ema.items()})
    return new, metrics


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Static helpers handed to a task's pure steps: the models' graph definitions
    and optimizers. Hashable by identity, so jit treats it as a constant."""

    graphdefs: dict[str, nnx.GraphDef]
    optimizers: dict[str, optax.GradientTransformation]

    def model(self, state: TrainState, name: str, params=None) -> nnx.Module:
        """A live module for ``name`` (optionally with other ``params``, e.g. inside grad)."""
        p = state.params[name] if params is None else params
        return nnx.merge(self.graphdefs[name], p, state.rest[name], copy=True)

    def ema_model(self, state: TrainState, name: str) -> nnx.Module:
        return nnx.merge(self.graphdefs[name], state.ema[name], state.rest[name], copy=True)

    @staticmethod
    def rest_of(module: nnx.Module) -> Any:
        """The non-Param state of a module after a call (to keep updated batch statistics)."""
        _, _, rest = nnx.split(module, nnx.Param, ...)
        return rest

    def apply_gradients(self, state: TrainState, name: str, grads, rest=None) -> TrainState:
        """One optimizer update of model ``name``; optionally also replace its ``rest``."""
        updates, opt = self.optimizers[name].update(grads, state.opt[name], state.params[name])
        params = optax.apply_updates(state.params[name], updates)
        new = state.replace(params={**state.params, name: params}, opt={**state.opt, name: opt})
        if rest is not None:
            new = new.replace(rest={**state.rest, name: rest})
        return new

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other
