"""The animator stage: self-reconstruction GAN training of ``SemanticAnimator`` (LIA's recipe).

A sample is (source frame, target frame, the target's 27-frame descriptor window) from one
clip; a share ``config.data.expression_pairs`` of the training pairs are those that differ most
in expression (``data_pipelines.pipelines.AnimatorSampler``). The generator renders the target
from the source and the window; losses (weights in ``config.task.loss``):

* ``l1``: mean |x_hat - x|;
* ``vgg``: LIA's 4-scale x 5-slice VGG19 pyramid (weight 10 inside), when converted VGG19
  weights are given (``config.task.vgg19_weights``; see ``gohd_jax/interop/vgg19_weights.py``);
  without them ``ms_ssim`` (1 - MS-SSIM) and ``gradient`` (L1 of image gradients) take its
  place, and the log says so;
* ``changed``: L1 weighted by ``losses.change_map`` (where target and source differ), so that
  the mouth and eyes, a few percent of the pixels, are not drowned by what copying gets right;
* ``mouth``: L1 inside the mouth box of the pair (from the clips' ``aux/landmarks``, grown by
  ``config.data.mouth_margin`` pixels), so that the rendered mouth follows the descriptors'
  opening; off (0) unless set, as it needs landmarks in the dataset;
* ``gan``: non-saturating loss against a StyleGAN2 discriminator, which trains on
  softplus(-D(x)) + softplus(D(x_hat)) (no R1, as LIA); both switch on at
  ``config.task.gan_start_step`` (0 = from the start, as LIA; the tiny config warms up on
  reconstruction first).

Adam with beta1 = 0 and LIA's learning rates and beta2 (dossier 4.2); EMA of the generator.
Eval: PSNR of the EMA generator's reconstruction of held-out identities against the
"copy the source frame" baseline, the L1 where source and target differ (``changed_l1``), and
``sharpness`` (the reconstruction's image-gradient energy over the target's).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gohd_jax.models.animator import AnimatorConfig, SemanticAnimator
from gohd_jax.models.discriminator import Discriminator
from gohd_jax.train import losses
from gohd_jax.train.task import Task

log = logging.getLogger("gohd_jax.train")


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [..., 3] from the pipeline -> float32 in [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def animator_config(task_cfg) -> AnimatorConfig:
    preset = {"tiny": AnimatorConfig.tiny, "official": AnimatorConfig}[task_cfg.model.preset]
    overrides = {k: v for k, v in task_cfg.model.items() if k != "preset"}
    return preset(**overrides)


class AnimatorTask(Task):
    ema_models = ("generator",)

    def __init__(self, config):
        super().__init__(config)
        self.model_cfg = animator_config(config.task)
        self.use_vgg = bool(config.task.vgg19_weights)
        if self.use_vgg:  # read on the host once; the trainer's init writes it into the state
            from gohd_jax.interop.vgg19_weights import load_vgg19_params
            from gohd_jax.models.vgg19 import VGG19Features

            params = load_vgg19_params(config.task.vgg19_weights)
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                vgg = VGG19Features(params=params)
            self.pretrained["vgg"] = jax.tree_util.tree_map(np.asarray, nnx.state(vgg).to_pure_dict())

    def create_models(self, rngs):
        models = {"generator": SemanticAnimator(self.model_cfg, rngs=rngs),
                  "discriminator": Discriminator(self.model_cfg.size, channels=self.model_cfg.channel_map(),
                                                 rngs=rngs)}
        if self.use_vgg:
            # Frozen loss network: its weights are not nnx.Param, so they live in state.rest,
            # are passed to the step as arguments (not baked-in constants) and get no optimizer.
            from gohd_jax.models.vgg19 import VGG19Features
            models["vgg"] = VGG19Features.zeros()
        return models

    def optimizers(self):
        t = self.config.task
        return {"generator": optax.adam(float(t.g_lr), b1=0.0, b2=float(t.g_beta2)),
                "discriminator": optax.adam(float(t.d_lr), b1=0.0, b2=float(t.d_beta2))}

    def _reconstruction_terms(self, ctx, state, fake, target, source, batch) -> dict[str, jax.Array]:
        w = self.config.task.loss
        terms = {"loss_l1": losses.l1(fake, target)}
        if w.get("changed", 0.0):
            terms["loss_changed"] = losses.weighted_l1(fake, target, losses.change_map(source, target))
        if w.get("mouth", 0.0):
            mask = losses.box_mask(batch["mouth_box"], target.shape[1], target.shape[2])
            terms["loss_mouth"] = losses.weighted_l1(fake, target, mask)
        if "vgg" in state.rest:
            terms["loss_vgg"] = losses.vgg_pyramid_loss(ctx.model(state, "vgg"), fake, target)
        else:
            if w.ms_ssim:
                terms["loss_ms_ssim"] = losses.ms_ssim_loss(fake, target)
            if w.gradient:
                terms["loss_gradient"] = losses.gradient_loss(fake, target)
        return terms

    def _weight(self, name: str) -> float:
        return float(self.config.task.loss[name[len("loss_"):]])

    def train_step(self, ctx, state, batch, key):
        del key
        source, target = to_unit_range(batch["source"]), to_unit_range(batch["target"])
        window = batch["descriptor_window"]
        gan_w = float(self.config.task.loss.gan)
        # The adversarial terms switch on at task.gan_start_step (a reconstruction warm-up). Before
        # it they are computed but gated off: the generator's GAN term is weighted 0 and the
        # discriminator keeps its old params and Adam state. A gate and not lax.cond: on XLA:CPU
        # the cond'ed step ran 4x slower with the GAN on (1210 vs 299 ms at the tiny size, batch
        # 8); computing the unused discriminator in the warm-up costs about 27% (BENCHMARKS.md).
        gan_on = state.step >= int(self.config.task.gan_start_step)
        gate = gan_on.astype(jnp.float32)

        def g_loss(g_params):
            fake = ctx.model(state, "generator", g_params)(source, window)["rgb"][0]
            terms = self._reconstruction_terms(ctx, state, fake, target, source, batch)
            total = sum(self._weight(k) * v for k, v in terms.items())
            if gan_w:
                terms["loss_gan_g"] = gate * losses.gan_g_loss(ctx.model(state, "discriminator")(fake))
                total = total + gan_w * terms["loss_gan_g"]
            return total, (terms, fake)

        (loss_g, (terms, fake)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.params["generator"])
        state = ctx.apply_gradients(state, "generator", g_grads)
        metrics = {"loss_g": loss_g, **terms, "psnr": losses.psnr(fake, target)}
        if gan_w:
            fake = jax.lax.stop_gradient(fake)

            def d_loss(d_params):
                disc = ctx.model(state, "discriminator", d_params)
                return losses.gan_d_loss(disc(target), disc(fake))

            loss_d, d_grads = jax.value_and_grad(d_loss)(state.params["discriminator"])
            updated = ctx.apply_gradients(state, "discriminator", d_grads)
            part = lambda s: (s.params["discriminator"], s.opt["discriminator"])  # noqa: E731
            d_params, d_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(gan_on, n, o),
                                                     part(updated), part(state))
            state = state.replace(params={**state.params, "discriminator": d_params},
                                  opt={**state.opt, "discriminator": d_opt})
            metrics["loss_d"] = gate * loss_d.astype(jnp.float32)
        return state, metrics

    def reconstruct(self, ctx, state, batch) -> jax.Array:
        """The EMA generator's rendering of the batch's targets, [B,H,W,3] in [-1, 1]."""
        model = ctx.ema_model(state, "generator") if state.ema else ctx.model(state, "generator")
        return model(to_unit_range(batch["source"]), batch["descriptor_window"])["rgb"][0]

    def eval_step(self, ctx, state, batch):
        source, target = to_unit_range(batch["source"]), to_unit_range(batch["target"])
        recon = self.reconstruct(ctx, state, batch)
        changed = losses.change_map(source, target)
        return {"psnr": losses.psnr(recon, target), "psnr_copy_source": losses.psnr(source, target),
                "l1": losses.l1(recon, target),
                # L1 where source and target differ (mouth, eyes, moved edges): copying the source
                # scores changed_l1_copy there, and a model that follows the target goes below it.
                "changed_l1": losses.weighted_l1(recon, target, changed),
                "changed_l1_copy_source": losses.weighted_l1(source, target, changed),
                # image-gradient energy of the reconstruction over the target's: 1 = as sharp
                # as the target, < 1 = blurred (the L1-trained tiny model sits near 0.78)
                "sharpness": losses.gradient_energy(recon) / losses.gradient_energy(target)}

    def dataset(self, split, *, seed, shard_index, shard_count):
        from data_pipelines import pipelines  # here: the step imports without grain (gpu_suite)

        # Expression pairs for training only: the held-out pairs stay uniform, so the eval's PSNR
        # keeps its meaning against the "copy the source" baseline.
        data = self.config.data
        pairs = float(data.get("expression_pairs", 0.0)) if split == "train" else 0.0
        mouth = int(data.get("mouth_margin", 2)) if self.config.task.loss.get("mouth", 0.0) and split == "train" else -1
        return pipelines.make_dataset("animator", data.dir, seed=seed, split=split,
                                      shard_index=shard_index, shard_count=shard_count,
                                      heldout_fraction=float(data.heldout_fraction), expression_pairs=pairs,
                                      expression_radius=int(data.get("expression_radius", 12)),
                                      mouth_margin=mouth)

    def describe(self):
        perceptual = "VGG19 pyramid" if self.use_vgg else (
            "no VGG19 weights given: L1 + MS-SSIM + gradient losses instead of the VGG19 pyramid")
        return {"image_size": self.model_cfg.size, "losses": perceptual}
