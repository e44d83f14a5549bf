"""The pose / gaze stage: epsilon-prediction training of the GoHD motion denoiser (LDA 'tisa').

A sample is a window (150 frames by default) from the motion pipeline: ``cond`` [W,320] (4 rows
of the 100 Hz mel per frame), ``pose`` [W,6] as residual to the window's first frame with
``pose0`` [6], ``gaze`` [W,2] absolute with ``gaze0`` [2]. ``config.task.target`` picks which:

* pose: x0 = pose residual, global condition pose0 (``use_residual_headpose``);
* gaze: x0 = absolute gaze, global condition gaze0 (``use_residual_gaze=False``).

Objective (LDA's, dossier 6.2): t ~ U{0..N-1}, eps ~ N(0, I),
x_t = sqrt(alpha_cum_t) x0 + sqrt(1 - alpha_cum_t) eps, loss = mean (eps_hat(x_t, t) - eps)^2
over the 150-step linear schedule 1e-4..0.05.

Option ``config.task.data_scale`` (default 1, as the release): the model learns motion x
data_scale (target and global condition), for data whose motion is small next to the unit noise
(the synthetic heads move by a few hundredths of a radian); samplers divide it back out
(``WindowSampler(data_scale=...)``). Values beyond +-1 / data_scale are clamped by the sampler.

Option ``config.task.cond_dropout`` (default 0, the release has no guidance): with that
probability per sample, the mel and global conditions are zeroed, which trains the
unconditional branch classifier-free guidance needs.

Eval: the same loss on held-out identities at fixed t and noise, and the loss of predicting
eps = 0 (= 1, the trivial baseline); the sampled-motion metrics (rhythm, Frechet distance,
diversity) are ``gohd_jax.eval.motion``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gohd_jax.diffusion import samplers
from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig
from gohd_jax.train.task import Task

TARGETS = {"pose": ("pose", "pose0", 6), "gaze": ("gaze", "gaze0", 2)}


def denoiser_config(task_cfg) -> MotionDenoiserConfig:
    """The model config of ``config.task``: ``model.preset`` (official | tiny) + overrides,
    channels set by the target."""
    _, _, channels = TARGETS[task_cfg.target]
    overrides = {k: v for k, v in task_cfg.model.items() if k != "preset"}
    if "dilation_cycle" in overrides:
        overrides["dilation_cycle"] = tuple(overrides["dilation_cycle"])
    if task_cfg.model.preset == "official":
        base = MotionDenoiserConfig.pose() if task_cfg.target == "pose" else MotionDenoiserConfig.gaze()
        return MotionDenoiserConfig(**{**base.__dict__, **overrides})
    if task_cfg.model.preset == "tiny":
        base = MotionDenoiserConfig.tiny(channels, channels)
        return MotionDenoiserConfig(**{**base.__dict__, **overrides})
    raise ValueError(f"unknown model preset {task_cfg.model.preset!r}: choose tiny or official")


class MotionDiffusionTask(Task):
    ema_models = ("denoiser",)

    def __init__(self, config):
        super().__init__(config)
        if config.task.target not in TARGETS:
            raise ValueError(f"task.target must be 'pose' or 'gaze', got {config.task.target!r}")
        self.x_key, self.g_key, _ = TARGETS[config.task.target]
        self.model_cfg = denoiser_config(config.task)
        self.alpha_cum = np.cumprod(1.0 - samplers.linear_betas(self.model_cfg.max_steps).astype(np.float64))

    def create_models(self, rngs):
        return {"denoiser": MotionDenoiser(self.model_cfg, rngs=rngs)}

    def optimizers(self):
        t = self.config.task
        opt = optax.adam(float(t.learning_rate))
        if float(t.get("grad_clip", 0.0)) > 0:
            opt = optax.chain(optax.clip_by_global_norm(float(t.grad_clip)), opt)
        return {"denoiser": opt}

    @property
    def data_scale(self) -> float:
        return float(self.config.task.get("data_scale", 1.0))

    def _loss(self, model, batch, t, eps, drop=None):
        x0 = batch[self.x_key] * self.data_scale
        ac = jnp.asarray(self.alpha_cum, jnp.float32)[t][:, None, None]
        xt = jnp.sqrt(ac) * x0 + jnp.sqrt(1.0 - ac) * eps
        cond, g = batch["cond"], batch[self.g_key] * self.data_scale
        if drop is not None:
            cond = jnp.where(drop[:, None, None], 0.0, cond)
            g = jnp.where(drop[:, None], 0.0, g)
        return jnp.mean((model(xt, t, cond, g) - eps) ** 2)

    def _noise(self, key, batch):
        x0 = batch[self.x_key]
        kt, ke = jax.random.split(key)
        t = jax.random.randint(kt, (x0.shape[0],), 0, self.model_cfg.max_steps)
        return t, jax.random.normal(ke, x0.shape, jnp.float32)

    def train_step(self, ctx, state, batch, key):
        kn, kd = jax.random.split(key)
        t, eps = self._noise(kn, batch)
        p = float(self.config.task.cond_dropout)
        drop = jax.random.bernoulli(kd, p, (t.shape[0],)) if p > 0 else None

        def loss_fn(params):
            return self._loss(ctx.model(state, "denoiser", params), batch, t, eps, drop)

        loss, grads = jax.value_and_grad(loss_fn)(state.params["denoiser"])
        state = ctx.apply_gradients(state, "denoiser", grads)
        return state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    def eval_step(self, ctx, state, batch):
        model = ctx.ema_model(state, "denoiser") if state.ema else ctx.model(state, "denoiser")
        t, eps = self._noise(jax.random.key(0), batch)  # fixed t and noise: comparable across evals
        return {"loss": self._loss(model, batch, t, eps), "loss_predict_zero": jnp.mean(eps ** 2)}

    def dataset(self, split, *, seed, shard_index, shard_count):
        from data_pipelines import pipelines  # here: the step imports without grain (gpu_suite)

        d = self.config.data
        return pipelines.make_dataset("motion", d.dir, seed=seed, split=split, window=int(d.window),
                                      shard_index=shard_index, shard_count=shard_count,
                                      heldout_fraction=float(d.heldout_fraction),
                                      condition=str(d.condition))

    def describe(self):
        c = self.model_cfg
        return {"target": self.config.task.target, "layers": c.residual_layers,
                "channels": c.residual_channels, "data_scale": self.data_scale,
                "cond_dropout": float(self.config.task.cond_dropout)}
