"""TFDS builder: the synthetic talking-head dataset, in the clip-record schema.

Build (ArrayRecord, no TensorFlow)::

    gohd-tfds build data_pipelines/tfds/gohd_synthetic --config=tiny --data_dir=DIR

Read with Grain::

    import tensorflow_datasets as tfds
    from data_pipelines import pipelines
    from data_pipelines.tfds import TfdsClips
    clips = TfdsClips(tfds.data_source("gohd_synthetic/tiny", split="train", data_dir=DIR))
    ds = pipelines.make_dataset("animator", clips, split="all")

Splits go by identity: ``heldout`` holds the identities chosen by
``pipelines.heldout_identities`` (a quarter of them), ``train`` the rest.
Frames are JPEG bytes (``schema.decode_jpeg``); all arrays are Tensor features,
because TFDS's Image/Audio/Video features need TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import pipelines, records, schema
from data_pipelines.synthetic.generator import SynthConfig, generate_clip

HELDOUT_FRACTION = 0.25
# Per-frame ground truth of the synthetic generator (see data_pipelines/synthetic/README.md).
AUX_FEATURES = {"phoneme": np.int32, "stress": np.float32, "blink": np.float32, "speaking": np.float32}


@dataclasses.dataclass
class SynthBuilderConfig(tfds.core.BuilderConfig):
    clips: int = 16
    size: int = 64
    seconds: float = 4.0
    identities: int = 4
    seed: int = 0
    jpeg_quality: int = 95


class Builder(tfds.core.GeneratorBasedBuilder):
    """Procedural talking heads with exactly known descriptors (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clip-record schema v1."}
    BUILDER_CONFIGS = [
        SynthBuilderConfig(name="tiny", description="16 clips, 4 s, 64 px, 4 identities (tests, CPU)"),
        SynthBuilderConfig(name="small", clips=256, seconds=6.0, identities=32,
                           description="256 clips, 6 s, 64 px, 32 identities (tiny-model training)"),
        SynthBuilderConfig(name="full256", clips=2000, seconds=10.0, size=256, identities=200,
                           description="2000 clips, 10 s, 256 px, 200 identities (official-size models)"),
    ]
    DEFAULT_CONFIG_NAME = "tiny"

    def _info(self) -> tfds.core.DatasetInfo:
        f32 = np.float32
        features = {
            "clip_id": tfds.features.Text(), "identity_id": tfds.features.Text(),
            "source_id": tfds.features.Text(), "content_hash": tfds.features.Text(),
            "fps": tfds.features.Scalar(np.int32), "sample_rate": tfds.features.Scalar(np.int32),
            "height": tfds.features.Scalar(np.int32), "width": tfds.features.Scalar(np.int32),
            "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "audio": tfds.features.Tensor(shape=(None,), dtype=f32),
            "descriptors": tfds.features.Tensor(shape=(None, schema.DESCRIPTOR_DIM), dtype=f32),
            "controls": tfds.features.Tensor(shape=(None, schema.CONTROL_DIM), dtype=f32),
            "mel_80hz": tfds.features.Tensor(shape=(None, schema.MEL_BINS), dtype=f32),
            "mel_100hz": tfds.features.Tensor(shape=(None, schema.MEL_BINS), dtype=f32),
            **{f"aux_{k}": tfds.features.Tensor(shape=(None,), dtype=t) for k, t in AUX_FEATURES.items()},
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            description="Synthetic talking heads (gohd_jax): JPEG frames, 16 kHz audio, 72-d descriptors, "
                        "21-d controls and both mel streams per clip.",
            homepage="https://github.com/Jia1018/GoHD")

    def _synth_config(self) -> SynthConfig:
        c = self.builder_config
        return SynthConfig(size=c.size, seconds=c.seconds, num_identities=c.identities, seed=c.seed)

    def _split_generators(self, dl_manager):
        cfg = self._synth_config()
        ids = [f"{i % cfg.num_identities}" for i in range(self.builder_config.clips)]
        held = pipelines.heldout_identities(ids, HELDOUT_FRACTION)
        train = [i for i, k in enumerate(ids) if k not in held]
        heldout = [i for i, k in enumerate(ids) if k in held]
        return {"train": self._generate_examples(train), "heldout": self._generate_examples(heldout)}

    def _generate_examples(self, indices):
        cfg = self._synth_config()
        for i in indices:
            clip = records.make_record_clip(generate_clip(cfg, i), self.builder_config.jpeg_quality)
            _, digest = schema.encode_clip(clip)
            h, w = schema.decode_jpeg(clip["frames"][0]).shape[:2]
            t = len(clip["frames"])
            aux = clip.get("aux", {})
            yield clip["clip_id"], {
                "clip_id": clip["clip_id"], "identity_id": clip["identity_id"],
                "source_id": clip.get("source_id", "synthetic"), "content_hash": digest,
                "fps": schema.FPS, "sample_rate": schema.SAMPLE_RATE, "height": h, "width": w,
                "frames": list(clip["frames"]),
                **{k: clip[k] for k in ("audio", "descriptors", "controls", "mel_80hz", "mel_100hz")},
                **{f"aux_{k}": np.asarray(aux.get(k, np.zeros(t)), t_) for k, t_ in AUX_FEATURES.items()},
            }
