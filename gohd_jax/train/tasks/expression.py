"""The two expression stages on the trainer (GoHD's two-stage training, dossier section 7).

Samples: windows of the ``expression`` pipeline: ``mel_windows`` [W,80,16] (Wav2Lip windows, one
per frame), ``expression`` [W,64], ``controls`` [W,21] (blink ratio + 20 brow values), ``exp0``.

* ``ExpressionStage1Task`` ("expression_stage1"): ``FrameExpression`` regresses the expression of
  every frame from its audio window, exp0 and the ground-truth controls; loss = MSE over the 64
  coefficients. The audio encoder is either initialised from a trained lip-sync expert
  (``task.expert`` = its run directory) and frozen, as GoHD freezes Wav2Lip's, or trained with the
  head (no expert; its BatchNorm statistics are then updated). Optional sync loss
  (``task.sync_expert`` = the run directory of a coefficient-space expert, ``task.visual =
  "mouth"`` in ``configs/expression.py:sync_mouth_tiny``; weight ``task.loss.sync``): for every
  frame f with two neighbours on each side, 1 - cosine between the frozen expert's embedding of
  the mel window of f and of the predicted mouth coefficients of frames f-2 .. f+2; eval reports
  ``sync_cos`` and the ground truth's ``sync_cos_gt``. The release's variant without
  controls is ``task.controls = 0``.
* ``ExpressionStage2Task`` ("expression_stage2"): ``TwoStageExpression`` with stage 1 (audio
  encoder and head) restored from a stage-1 run (``task.stage1``) and frozen; the LSTM generates
  the controls from audio, exp0, control0 and per-step noise; the expression that stage 1 makes
  of them is compared with the ground truth (MSE, plus ``task.loss.controls`` x the controls'
  MSE), plus the blink distribution term below. With ``task.samples`` = K > 1 each window gets
  K noise draws and only the one with the smallest error counts (a "variety" loss: the draws
  spread over when a blink may come instead of all averaging it away).

Blink distribution term (``task.loss.blink``): an expression MSE alone pulls a noise-driven
generator towards the mean, i.e. eyes that never close (a blink at the wrong frame costs more than
none). The term matches the batch's distribution of blink ratios r_t, and of their frame-to-frame
changes r_t - r_{t-1}, to the ground truth's: the 1-D Wasserstein-2 distance (mean squared gap
between the sorted generated and sorted ground-truth values), each divided by the ground truth's
variance plus 1e-4, so a generator whose eyes never close scores about 1 and a realistic one 0.
The first matches how often and how far the eyes close, the second how fast (the closing and
reopening edges). Distributions over the batch, not per-window targets: when the blinks come
stays free, and the gradient reaches every frame (a thresholded "closed" indicator gives none to
open eyes). ``blink_statistics`` (soft closed fraction and closing rate) is logged alongside.

Eval: the loss, the mouth error of ``task.mouth_dims`` and the "copy exp0" baseline's.
Clip-level metrics (correlation, blink rate and duration, the expert's sync confidence) are
``gohd_jax.eval.expression``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines import pipelines
from gohd_jax.models.expression import ExpressionConfig, FrameExpression, TwoStageExpression
from gohd_jax.train.task import Task

__all__ = ["ExpressionStage1Task", "ExpressionStage2Task", "expression_config", "blink_statistics",
           "blink_distribution_loss", "CLOSED_RATIO", "CLOSED_TEMPERATURE"]

CLOSED_RATIO = 0.15       # blink ratio below which the eyes count as closed
CLOSED_TEMPERATURE = 0.02


def expression_config(task_cfg) -> ExpressionConfig:
    preset = task_cfg.model.preset
    if preset == "official":
        base = ExpressionConfig()
    elif preset == "tiny":
        base = ExpressionConfig.tiny()
    else:
        raise ValueError(f"unknown model preset {preset!r}: choose tiny or official")
    overrides = {k: v for k, v in task_cfg.model.items() if k != "preset"}
    overrides.setdefault("controls", int(task_cfg.get("controls", base.controls)))
    return ExpressionConfig(**{**base.__dict__, **overrides})


def blink_statistics(ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(closed fraction, closings per frame) of blink ratios [B,T], soft (see the module docstring)."""
    closed = jax.nn.sigmoid((CLOSED_RATIO - ratio) / CLOSED_TEMPERATURE)
    return jnp.mean(closed), jnp.mean(jax.nn.relu(closed[:, 1:] - closed[:, :-1]))


def _sorted_w2(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared 1-D Wasserstein-2 distance between the empirical distributions of x and y (same size)."""
    return jnp.mean((jnp.sort(x.ravel()) - jnp.sort(y.ravel())) ** 2)


def blink_distribution_loss(ratio: jax.Array, ratio_gt: jax.Array) -> jax.Array:
    """The blink distribution term of generated vs ground-truth blink ratios [B,T] (module docstring)."""
    dr, dr_gt = jnp.diff(ratio, axis=1), jnp.diff(ratio_gt, axis=1)
    return (_sorted_w2(ratio, ratio_gt) / (jnp.var(ratio_gt) + 1e-4)
            + _sorted_w2(dr, dr_gt) / (jnp.var(dr_gt) + 1e-4))


class _ExpressionTask(Task):
    ema_models = ("expression",)

    def __init__(self, config):
        super().__init__(config)
        self.model_cfg = expression_config(config.task)
        self.mouth_dims = tuple(int(i) for i in config.task.mouth_dims)

    def optimizers(self):
        return {"expression": optax.adam(float(self.config.task.learning_rate))}

    def dataset(self, split, *, seed, shard_index, shard_count):
        d = self.config.data
        return pipelines.make_dataset("expression", d.dir, seed=seed, split=split, window=int(d.window),
                                      shard_index=shard_index, shard_count=shard_count,
                                      heldout_fraction=float(d.heldout_fraction))

    def _mouth(self, x):
        return x[..., list(self.mouth_dims)]

    def _eval_terms(self, exp, batch) -> dict[str, jax.Array]:
        gt = batch["expression"]
        copy = jnp.broadcast_to(batch["exp0"][:, None], gt.shape)
        return {"loss": jnp.mean((exp - gt) ** 2),
                "mouth_mae": jnp.mean(jnp.abs(self._mouth(exp) - self._mouth(gt))),
                "mouth_mae_copy_exp0": jnp.mean(jnp.abs(self._mouth(copy) - self._mouth(gt)))}


def _host_state(module) -> dict:
    """A module's state as a pure dict of host arrays (``Task.pretrained``)."""
    return jax.tree_util.tree_map(np.asarray, nnx.state(module).to_pure_dict())


class ExpressionStage1Task(_ExpressionTask):
    """Stage 1; with ``task.expert``, its audio encoder starts as the expert's and stays frozen; with
    ``task.sync_expert``, that frozen coefficient-space expert (``sync_expert`` in ``state.rest``,
    an argument of the step, not a constant) gives the sync loss."""

    frozen_models = ("sync_expert",)

    def __init__(self, config):
        super().__init__(config)
        self.expert = str(config.task.get("expert", "") or "")
        if self.expert:
            from gohd_jax.train.restore import load_model

            sync = load_model(self.expert, "syncnet", expect_task="syncnet")
            if abs(sync.cfg.width - self.model_cfg.audio_width) > 1e-9:
                raise ValueError(f"the expert's audio encoder has width {sync.cfg.width}, the stage-1 "
                                 f"model {self.model_cfg.audio_width}: set task.model.audio_width")
            self.pretrained["expression.audio_encoder"] = _host_state(sync.audio_encoder)
        self.sync_expert = str(config.task.get("sync_expert", "") or "")
        self._sync_cfg = None
        if self.sync_expert:
            from gohd_jax.models.syncnet import MouthSyncNet
            from gohd_jax.train.restore import load_model

            sync = load_model(self.sync_expert, "syncnet", expect_task="syncnet")
            if not isinstance(sync, MouthSyncNet):
                raise ValueError(f"{self.sync_expert}: the sync loss needs a coefficient-space expert "
                                 f"(task.visual='mouth'); this run trained a pixel expert")
            self._sync_cfg = sync.cfg
            self.pretrained["sync_expert"] = _host_state(sync)
        elif float(config.task.loss.get("sync", 0.0)):
            raise ValueError("task.loss.sync > 0 needs task.sync_expert (a task.visual='mouth' expert run)")

    def sync_cosine(self, expert, exp: jax.Array, mel_windows: jax.Array) -> jax.Array:
        """Mean cosine of the frozen coefficient ``expert`` (``ctx.model(state, "sync_expert")``)
        between each frame's mel window and the mouth coefficients of the frames around it;
        exp [B,T,64], mel_windows [B,T,80,16]."""
        n = expert.cfg.frames
        b, t = exp.shape[:2]
        if t < n:
            raise ValueError(f"the sync loss needs windows of >= {n} frames, got {t}")
        half, centres = n // 2, t - n + 1
        idx = np.arange(centres)[:, None] + np.arange(n)[None]  # [centres, n]
        mouth = exp[:, idx].reshape(b * centres, n, exp.shape[-1])
        mel = mel_windows[:, half:half + centres].reshape(b * centres, 80, 16, 1)
        a = jax.lax.stop_gradient(expert.embed_audio(mel))
        return jnp.mean(jnp.sum(a * expert.embed_mouth(mouth), axis=-1))

    @property
    def frozen_encoder(self) -> bool:
        return bool(self.expert)

    def create_models(self, rngs):
        models = {"expression": FrameExpression(self.model_cfg, rngs=rngs)}
        if self._sync_cfg is not None:
            from gohd_jax.models.syncnet import MouthSyncNet

            models["sync_expert"] = MouthSyncNet(self._sync_cfg, rngs=rngs)
        return models

    def _controls(self, batch):
        return batch["controls"][..., : self.model_cfg.controls] if self.model_cfg.controls else None

    def train_step(self, ctx, state, batch, key):
        del key
        train_bn = not self.frozen_encoder

        def loss_fn(params):
            model = ctx.model(state, "expression", params)
            em = model.embed_audio(batch["mel_windows"], train=train_bn)
            if self.frozen_encoder:
                em = jax.lax.stop_gradient(em)
            exp = model.head(em, batch["exp0"], self._controls(batch))
            terms = {"loss_mse": jnp.mean((exp - batch["expression"]) ** 2)}
            total = terms["loss_mse"]
            if self._sync_cfg is not None:
                terms["sync_cos"] = self.sync_cosine(ctx.model(state, "sync_expert"), exp, batch["mel_windows"])
                total = total + float(self.config.task.loss.get("sync", 0.0)) * (1.0 - terms["sync_cos"])
            return total, (ctx.rest_of(model), exp, terms)

        (loss, (rest, exp, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["expression"])
        state = ctx.apply_gradients(state, "expression", grads, rest=rest if train_bn else None)
        mouth = jnp.mean(jnp.abs(self._mouth(exp) - self._mouth(batch["expression"])))
        return state, {"loss": loss, **terms, "mouth_mae": mouth, "grad_norm": optax.global_norm(grads)}

    def eval_step(self, ctx, state, batch):
        model = ctx.ema_model(state, "expression") if state.ema else ctx.model(state, "expression")
        exp = model(batch["mel_windows"], batch["exp0"], self._controls(batch))
        terms = self._eval_terms(exp, batch)
        if self._sync_cfg is not None:
            expert = ctx.model(state, "sync_expert")
            terms["sync_cos"] = self.sync_cosine(expert, exp, batch["mel_windows"])
            terms["sync_cos_gt"] = self.sync_cosine(expert, batch["expression"], batch["mel_windows"])
        return terms

    def describe(self):
        return {"controls": self.model_cfg.controls, "audio_encoder": f"frozen expert {self.expert}"
                if self.expert else "trained (no expert given)",
                "sync_loss": f"{float(self.config.task.loss.get('sync', 0.0))} x (1 - cos), expert "
                f"{self.sync_expert}" if self.sync_expert else "off"}


class ExpressionStage2Task(_ExpressionTask):
    def __init__(self, config):
        super().__init__(config)
        if self.model_cfg.controls != self.model_cfg.control_dim:
            raise ValueError(f"stage 2 generates the {self.model_cfg.control_dim} controls stage 1 "
                             f"reads: task.controls must be {self.model_cfg.control_dim}")
        stage1 = str(config.task.get("stage1", "") or "")
        if not stage1:
            raise ValueError("stage 2 needs a trained stage 1: set task.stage1 to its run directory")
        from gohd_jax.train.restore import load_model

        s1 = load_model(stage1, "expression", expect_task="expression_stage1")
        if s1.cfg.controls != self.model_cfg.controls or s1.cfg.audio_width != self.model_cfg.audio_width:
            raise ValueError(f"{stage1}: its stage 1 (controls {s1.cfg.controls}, audio width "
                             f"{s1.cfg.audio_width}) does not match this config")
        self.stage1_dir = stage1
        self.pretrained["expression.stage1"] = _host_state(s1)

    def create_models(self, rngs):
        return {"expression": TwoStageExpression(self.model_cfg, rngs=rngs)}

    def optimizers(self):
        adam = optax.adam(float(self.config.task.learning_rate))

        def labels(params):  # stage 1 is frozen: only the LSTM stage learns
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "frozen" if getattr(path[0], "key", None) == "stage1" else "train", params)
        return {"expression": optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)}

    def _generate(self, model, batch, key, *, train: bool = False):
        em = jax.lax.stop_gradient(model.stage1.embed_audio(batch["mel_windows"]))
        control0 = batch["controls"][:, 0]
        controls = model.stage2.sample(em, batch["exp0"], control0, key, train=train)
        return controls, model.stage1.head(em, batch["exp0"], controls)

    def train_step(self, ctx, state, batch, key):
        w = self.config.task.loss
        samples = int(self.config.task.get("samples", 1))
        gt_exp, gt_ctrl = batch["expression"], batch["controls"]

        def loss_fn(params):
            model = ctx.model(state, "expression", params)
            keys = jax.random.split(key, samples)
            controls, exp = jax.vmap(lambda k: self._generate(model, batch, k, train=True))(keys)  # [K,B,T,.]
            # per sample and window: expression MSE + weighted control MSE; the best of K counts
            err = (jnp.mean((exp - gt_exp) ** 2, axis=(2, 3))
                   + float(w.get("controls", 0.0)) * jnp.mean((controls - gt_ctrl) ** 2, axis=(2, 3)))
            terms = {"loss_expression": jnp.mean(jnp.min(err, axis=0))}
            ratio = jnp.moveaxis(controls[..., 0], 0, 1).reshape(-1, controls.shape[2])
            gen = blink_statistics(ratio)
            terms["loss_blink"] = blink_distribution_loss(
                ratio, jnp.repeat(gt_ctrl[..., 0], samples, axis=0))
            total = terms["loss_expression"] + float(w.blink) * terms["loss_blink"]
            return total, (terms, gen)

        (loss, (terms, gen)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["expression"])
        state = ctx.apply_gradients(state, "expression", grads)
        return state, {"loss": loss, **terms, "closed_fraction": gen[0],
                       "grad_norm": optax.global_norm(grads)}

    def eval_step(self, ctx, state, batch):
        model = ctx.ema_model(state, "expression") if state.ema else ctx.model(state, "expression")
        controls, exp = self._generate(model, batch, jax.random.key(0))
        gen, gt = blink_statistics(controls[..., 0]), blink_statistics(batch["controls"][..., 0])
        return {**self._eval_terms(exp, batch), "closed_fraction": gen[0], "closed_fraction_gt": gt[0]}

    def describe(self):
        return {"stage1": self.stage1_dir, "control_generator": self.model_cfg.control_generator,
                "blink_weight": float(self.config.task.loss.blink)}
