"""The lip-sync expert: Wav2Lip's SyncNet trained contrastively on (mel window, mouth crops).

A sample (``sync`` pipeline) is the Wav2Lip mel window [80,16] of a frame and the 5 face
crops around it, in sync (label 1) or with the mel of a frame >= 5 frames away (label 0). The
expert looks at ``SyncNetConfig.face_box`` of each crop (Wav2Lip: the lower half), resized to
``SyncNetConfig.face_size`` (48 x 96 as Wav2Lip), scaled to [0, 1] and stacked on channels
(frame-major RGB, 15 channels). BatchNorm statistics are updated in training and frozen for eval
(``state.rest``). Two losses (``config.task.loss``):

* ``"bce"``: Wav2Lip's BCE on the cosine similarity of the two normalised embeddings, one
  (in sync | shifted) pair per sample. Metric ``accuracy``: "similarity > 0.5" against the
  label (chance 0.5).
* ``"multiway"``: the in-sync mel window among ``task.negatives`` shifted windows of the same
  clip (>= 5 frames away), softmax over ``cosine / task.temperature``, cross-entropy on the
  in-sync one (as the original SyncNet's multi-way matching, and InfoNCE with negatives from
  the same speaker, so that identity cannot stand in for sync). A sample carries 1 + K
  candidates, so it gives K comparisons instead of one; the tiny expert reaches 0.70
  held-out pair accuracy in 400 steps with it, 0.58 with the BCE (BENCHMARKS.md). Metrics
  ``accuracy``: the in-sync window scores highest (chance 1 / (1 + K)); ``pair_accuracy``: it beats
  the first shifted one (chance 0.5).

``task.visual``: ``"face"`` (the pixel expert above, ``SyncNet``) or ``"mouth"``
(``MouthSyncNet``: the same audio encoder against the mouth expression coefficients of the 5
frames, ``task.model.mouth_dims``; differentiable in the coefficients, it is stage 1's sync loss).

Scoring whole clips (offset, LSE-D, LSE-C) is ``gohd_jax.eval.lipsync`` (pixel expert).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from data_pipelines import pipelines
from gohd_jax.models.syncnet import (MouthSyncConfig, MouthSyncNet, SyncNet, SyncNetConfig, face_input,
                                     sync_probability)
from gohd_jax.train.task import Task

__all__ = ["SyncNetTask", "syncnet_config", "bce"]


def syncnet_config(task_cfg) -> SyncNetConfig | MouthSyncConfig:
    preset = task_cfg.model.preset
    if preset not in ("tiny", "official"):
        raise ValueError(f"unknown model preset {preset!r}: choose tiny or official")
    base = SyncNetConfig.tiny() if preset == "tiny" else SyncNetConfig()
    width = float(task_cfg.model.get("width", base.width))
    visual = task_cfg.get("visual", "face")
    if visual == "mouth":
        dims = tuple(int(i) for i in task_cfg.model.get("mouth_dims", MouthSyncConfig.mouth_dims))
        return MouthSyncConfig(width=width, frames=base.frames, mouth_dims=dims)
    if visual != "face":
        raise ValueError(f"task.visual must be 'face' or 'mouth', got {visual!r}")
    box = tuple(float(x) for x in task_cfg.model.get("face_box", base.face_box))
    return SyncNetConfig(width=width, face_size=base.face_size, frames=base.frames, face_box=box)


def bce(p: jax.Array, label: jax.Array, eps: float = 1e-7) -> jax.Array:
    p = jnp.clip(p, eps, 1.0 - eps)
    return -jnp.mean(label * jnp.log(p) + (1.0 - label) * jnp.log(1.0 - p))


class SyncNetTask(Task):
    def __init__(self, config):
        super().__init__(config)
        self.model_cfg = syncnet_config(config.task)
        if self.loss_type not in ("bce", "multiway"):
            raise ValueError(f"task.loss must be 'bce' (Wav2Lip) or 'multiway', got {self.loss_type!r}")
        if self.loss_type == "multiway" and self.negatives < 1:
            raise ValueError("task.loss='multiway' needs task.negatives >= 1 shifted windows per sample")

    @property
    def mouth(self) -> bool:
        return isinstance(self.model_cfg, MouthSyncConfig)

    def create_models(self, rngs):
        cls = MouthSyncNet if self.mouth else SyncNet
        return {"syncnet": cls(self.model_cfg, rngs=rngs)}

    def _embed_visual(self, model, batch, *, train: bool):
        if self.mouth:
            return model.embed_mouth(batch["expression"])
        face = face_input(batch["faces"], self.model_cfg.face_size, self.model_cfg.face_box)
        return model.embed_face(face, train=train)

    def optimizers(self):
        return {"syncnet": optax.adam(float(self.config.task.learning_rate))}

    @property
    def loss_type(self) -> str:
        return self.config.task.get("loss", "bce")

    @property
    def negatives(self) -> int:
        return int(self.config.task.get("negatives", 0)) if self.loss_type == "multiway" else 0

    def _losses(self, model, batch, *, train: bool):
        """(loss, metrics) of a batch for ``task.loss``; BatchNorm in training mode if ``train``."""
        v = self._embed_visual(model, batch, train=train)
        if self.loss_type == "bce":
            p = sync_probability(model.embed_audio(batch["mel"][..., None], train=train), v)
            loss = bce(p, batch["label"])
            return loss, {"loss": loss, "accuracy": jnp.mean(((p > 0.5) == (batch["label"] > 0.5)).astype(jnp.float32))}
        cands = batch["mel_candidates"]  # [B, 1+K, 80, 16], in sync first
        b, k = cands.shape[:2]
        a = model.embed_audio(cands.reshape(b * k, *cands.shape[2:], 1), train=train).reshape(b, k, -1)
        cos = jnp.einsum("bkd,bd->bk", a, v)
        logits = cos / float(self.config.task.temperature)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros((b,), jnp.int32)))
        return loss, {"loss": loss, "accuracy": jnp.mean((jnp.argmax(logits, -1) == 0).astype(jnp.float32)),
                      "pair_accuracy": jnp.mean((cos[:, 0] > cos[:, 1]).astype(jnp.float32))}

    def train_step(self, ctx, state, batch, key):
        del key

        def loss_fn(params):
            model = ctx.model(state, "syncnet", params)
            loss, metrics = self._losses(model, batch, train=True)
            return loss, (ctx.rest_of(model), metrics)

        (_, (rest, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["syncnet"])
        state = ctx.apply_gradients(state, "syncnet", grads, rest=rest)
        return state, {**metrics, "grad_norm": optax.global_norm(grads)}

    def eval_step(self, ctx, state, batch):
        return self._losses(ctx.model(state, "syncnet"), batch, train=False)[1]

    def dataset(self, split, *, seed, shard_index, shard_count):
        d = self.config.data
        return pipelines.make_dataset("sync", d.dir, seed=seed, split=split, shard_index=shard_index,
                                      shard_count=shard_count, heldout_fraction=float(d.heldout_fraction),
                                      sync_negatives=self.negatives, sync_faces=not self.mouth)

    def describe(self):
        visual = ({"visual": "mouth", "mouth_dims": self.model_cfg.mouth_dims} if self.mouth
                  else {"face_size": self.model_cfg.face_size})
        return {"width": self.model_cfg.width, **visual, "loss": self.loss_type,
                **({"negatives": self.negatives} if self.negatives else {})}
