"""The lip-sync expert: Wav2Lip's SyncNet trained contrastively on (mel window, mouth crops).

A sample (``sync`` pipeline) is the Wav2Lip mel window [80,16] of a frame and the lower halves
of the 5 frames around it, in sync (label 1) or with the mel of a frame >= 5 frames away (label
0). The crops are resized to ``SyncNetConfig.face_size`` (48 x 96 as Wav2Lip), scaled to [0, 1]
and stacked on channels (frame-major RGB, 15 channels). Loss: Wav2Lip's BCE on the cosine
similarity of the two normalised embeddings. BatchNorm statistics are updated in training and
frozen for eval (``state.rest``).

Eval on held-out identities: the loss and the accuracy of "similarity > 0.5" against the label
(chance = 0.5). Scoring whole clips (offset, LSE-D, LSE-C) is ``gohd_jax.eval.lipsync``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from data_pipelines import pipelines
from gohd_jax.models.syncnet import SyncNet, SyncNetConfig, face_input, sync_probability
from gohd_jax.train.task import Task

__all__ = ["SyncNetTask", "syncnet_config", "bce"]


def syncnet_config(task_cfg) -> SyncNetConfig:
    preset = task_cfg.model.preset
    if preset not in ("tiny", "official"):
        raise ValueError(f"unknown model preset {preset!r}: choose tiny or official")
    base = SyncNetConfig.tiny() if preset == "tiny" else SyncNetConfig()
    width = float(task_cfg.model.get("width", base.width))
    return SyncNetConfig(width=width, face_size=base.face_size, frames=base.frames)


def bce(p: jax.Array, label: jax.Array, eps: float = 1e-7) -> jax.Array:
    p = jnp.clip(p, eps, 1.0 - eps)
    return -jnp.mean(label * jnp.log(p) + (1.0 - label) * jnp.log(1.0 - p))


class SyncNetTask(Task):
    def __init__(self, config):
        super().__init__(config)
        self.model_cfg = syncnet_config(config.task)

    def create_models(self, rngs):
        return {"syncnet": SyncNet(self.model_cfg, rngs=rngs)}

    def optimizers(self):
        return {"syncnet": optax.adam(float(self.config.task.learning_rate))}

    def _inputs(self, batch):
        return batch["mel"][..., None], face_input(batch["faces"], self.model_cfg.face_size)

    def train_step(self, ctx, state, batch, key):
        del key
        mel, face = self._inputs(batch)

        def loss_fn(params):
            model = ctx.model(state, "syncnet", params)
            a, v = model(mel, face, train=True)
            p = sync_probability(a, v)
            return bce(p, batch["label"]), (ctx.rest_of(model), p)

        (loss, (rest, p)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["syncnet"])
        state = ctx.apply_gradients(state, "syncnet", grads, rest=rest)
        acc = jnp.mean(((p > 0.5) == (batch["label"] > 0.5)).astype(jnp.float32))
        return state, {"loss": loss, "accuracy": acc, "grad_norm": optax.global_norm(grads)}

    def eval_step(self, ctx, state, batch):
        mel, face = self._inputs(batch)
        a, v = ctx.model(state, "syncnet")(mel, face, train=False)
        p = sync_probability(a, v)
        return {"loss": bce(p, batch["label"]),
                "accuracy": jnp.mean(((p > 0.5) == (batch["label"] > 0.5)).astype(jnp.float32))}

    def dataset(self, split, *, seed, shard_index, shard_count):
        d = self.config.data
        return pipelines.make_dataset("sync", d.dir, seed=seed, split=split, shard_index=shard_index,
                                      shard_count=shard_count, heldout_fraction=float(d.heldout_fraction))

    def describe(self):
        return {"width": self.model_cfg.width, "face_size": self.model_cfg.face_size}
