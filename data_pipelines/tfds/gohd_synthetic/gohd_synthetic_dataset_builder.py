"""TFDS builder: the synthetic talking-head dataset, in the clip-record schema (schema 2).

Build (ArrayRecord, no TensorFlow)::

    gohd-tfds build data_pipelines/tfds/gohd_synthetic --config=tiny --data_dir=DIR

Read with Grain::

    import tensorflow_datasets as tfds
    from data_pipelines import pipelines
    from data_pipelines.tfds import TfdsClips
    clips = TfdsClips(tfds.data_source("gohd_synthetic/tiny", split="train", data_dir=DIR))
    ds = pipelines.make_dataset("animator", clips, split="all")

One TFDS example per record of ``data_pipelines.schema`` (a clip's header, its time chunks, its
frames), in order, so that a sample reads only the records it uses, as from a dataset folder;
the header example of a clip carries its ids, frame count, record count and content hash.
Splits go by identity: ``heldout`` holds the identities chosen by
``pipelines.heldout_identities`` (a quarter of them), ``train`` the rest.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_pipelines import pipelines, records, schema
from data_pipelines.synthetic.generator import SynthConfig, generate_clip
from data_pipelines.tfds.source import record_example, record_features

HELDOUT_FRACTION = 0.25


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

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Clip-record schema v1: one example per clip.",
                     "2.0.0": "Clip-record schema v2: one example per record (header, time chunks, frames)."}
    BUILDER_CONFIGS = [
        SynthBuilderConfig(name="tiny", description="16 clips, 4 s, 64 px, 4 identities (tests, CPU)"),
        SynthBuilderConfig(name="small", clips=256, seconds=6.0, identities=32,
                           description="256 clips, 6 s, 64 px, 32 identities (tiny-model training)"),
        SynthBuilderConfig(name="full256", clips=2000, seconds=10.0, size=256, identities=200,
                           description="2000 clips, 10 s, 256 px, 200 identities (official-size models)"),
    ]
    DEFAULT_CONFIG_NAME = "tiny"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=record_features(),
            disable_shuffling=True,  # a clip's records must stay together and in order
            description="Synthetic talking heads (gohd_jax), one example per clip record (schema 2): "
                        "JPEG frames, 16 kHz audio, 72-d descriptors, 21-d controls and both mel streams.",
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
            recs, digest = schema.encode_clip(clip)
            entry = records.index_entry(clip, recs, digest)
            for offset, rec in enumerate(recs):  # keys sort in clip, then record order
                yield f"{i:08d}-{offset:08d}", record_example(rec, offset, entry)
