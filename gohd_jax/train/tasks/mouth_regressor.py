"""The trainer's own test task: regress the mouth descriptor dims from the
Wav2Lip mel window of each frame.

Input ``mel_windows`` [B,W,80,16] (expression pipeline), target
``expression[..., dims]`` [B,W,k]. A per-frame MLP (1280 -> hidden -> hidden ->
k) trained with MSE and Adam. Small, fast, and real: on the synthetic data the
mouth follows the phonemes, so the held-out error falls well below the
"predict the mean" baseline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from data_pipelines import pipelines
from gohd_jax.train.task import Task


class MelToMouth(nnx.Module):
    """[..., 80, 16] mel window -> [..., k] mouth dims."""

    def __init__(self, hidden: int, out: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(80 * 16, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.l3 = nnx.Linear(hidden, out, rngs=rngs)

    def __call__(self, mel: jax.Array) -> jax.Array:
        x = mel.reshape(*mel.shape[:-2], 80 * 16) / 4.0  # Wav2Lip mel is in [-4, 4]
        x = nnx.gelu(self.l1(x))
        x = nnx.gelu(self.l2(x))
        return self.l3(x).astype(jnp.float32)  # the loss is float32 whatever the compute dtype


class MouthRegressorTask(Task):
    ema_models = ("regressor",)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.config.task.target_dims)

    def create_models(self, rngs):
        return {"regressor": MelToMouth(int(self.config.task.hidden), len(self.dims), rngs=rngs)}

    def optimizers(self):
        return {"regressor": optax.adam(float(self.config.task.learning_rate))}

    def _target(self, batch):
        return batch["expression"][..., jnp.array(self.dims)]

    def train_step(self, ctx, state, batch, key):
        del key  # deterministic task
        target = self._target(batch)

        def loss_fn(params):
            pred = ctx.model(state, "regressor", params)(batch["mel_windows"])
            return jnp.mean((pred - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params["regressor"])
        state = ctx.apply_gradients(state, "regressor", grads)
        return state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    def eval_step(self, ctx, state, batch):
        target = self._target(batch)
        model = ctx.ema_model(state, "regressor") if state.ema else ctx.model(state, "regressor")
        pred = model(batch["mel_windows"])
        baseline = jnp.mean((target - target.mean(axis=(0, 1), keepdims=True)) ** 2)
        return {"mse": jnp.mean((pred - target) ** 2), "mse_predict_mean": baseline}

    def dataset(self, split, *, seed, shard_index, shard_count):
        return pipelines.make_dataset("expression", self.config.data.dir, seed=seed, split=split,
                                      window=int(self.config.data.window), shard_index=shard_index,
                                      shard_count=shard_count)

    def describe(self):
        return {"target_dims": self.dims}
