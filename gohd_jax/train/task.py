"""The interface between a training stage and the trainer.

A stage supplies its models, their optimizers, a pure train step, an optional
eval step and its Grain pipeline. The trainer owns the rest: mesh, shardings,
jit, the loop, checkpoints, metrics, eval cadence and parameter EMA.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import jax
import optax
from flax import nnx

from gohd_jax.train.state import StepContext, TrainState

if TYPE_CHECKING:  # annotations only: a task's steps import without grain or ml_collections
    import grain
    import ml_collections

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Task(abc.ABC):
    """Subclass per stage. ``config`` is the run's whole ConfigDict (stage settings
    under ``config.task``, data under ``config.data``)."""

    #: Models whose parameters the trainer keeps an EMA of (``config.ema_decay`` > 0).
    ema_models: tuple[str, ...] = ()
    #: Frozen networks (a loss network, an expert): their whole state lives in ``state.rest``
    #: (no parameters, no optimizer, no EMA); a step reads them with ``ctx.model(state, name)``.
    frozen_models: tuple[str, ...] = ()

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        #: Weights the models start from (loaded on the host by the task's ``__init__``): module
        #: path ("vgg", "expression.stage1": a model name, then attributes) -> the pure dict of
        #: that module's state (``nnx.state(m).to_pure_dict()``). The trainer passes them to its
        #: jitted init as an argument and writes them into the new models, so no compiled program
        #: holds them as constants; afterwards they are part of the state (and of checkpoints).
        self.pretrained: dict[str, Any] = {}

    @abc.abstractmethod
    def create_models(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        """Builds the models (called inside jit: no host work, no data access)."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, optax.GradientTransformation]:
        """Optimizer per trainable model name (a GAN returns two). Others stay frozen."""

    @abc.abstractmethod
    def train_step(self, ctx: StepContext, state: TrainState, batch: Batch,
                   key: jax.Array) -> tuple[TrainState, Metrics]:
        """Pure: one step. Returns the new state (step counter and EMA are the
        trainer's) and scalar metrics; every metric whose name starts with
        ``loss`` is checked for NaN/Inf."""

    def eval_step(self, ctx: StepContext, state: TrainState, batch: Batch) -> Metrics:
        """Pure: scalar metrics on one held-out batch (averaged by the trainer)."""
        raise NotImplementedError

    @abc.abstractmethod
    def dataset(self, split: str, *, seed: int, shard_index: int, shard_count: int) -> grain.MapDataset:
        """The unbatched sample stream of ``split`` ("train" or "heldout") for one process."""

    def describe(self) -> dict[str, Any]:
        """Extra facts for the log at start-up (loss terms in use etc.)."""
        return {}
