"""TFDS builder: real talking-head videos -> GoHD clip records (schema 2), through Apache Beam.

The per-video work is ``gohd-preprocess``'s (``preprocess.process_video``: decode, face track,
cut, crop, the Deep3DFaceRecon and L2CS-Net estimators, controls, mels), run by a Beam ``DoFn``
(``data_pipelines.video.beam.VideoRecords``) that loads the models once per worker; TFDS's Beam
writer stores the examples. Build (ArrayRecord, no TensorFlow; any runner)::

    gohd-tfds build data_pipelines/tfds/gohd_video --manual_dir=RAW --data_dir=DIR \\
        --beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing

``RAW`` (the manual dir) holds ``videos/`` (searched recursively; or ``videos.txt``, one path per
line) and ``weights/``: ``epoch_20.pth`` (or ``deep3d.npz``), ``similarity_Lm3D_all.mat``,
``L2CSNet_gaze360.pkl`` (or ``l2cs.npz``) and optionally ``shape_predictor_68_face_landmarks.dat``.

Read with Grain, as the synthetic builder::

    clips = TfdsClips(tfds.data_source("gohd_video", split="train", data_dir=DIR))
    ds = pipelines.make_dataset("animator", clips, split="all")

One example per record, keyed by (a hash of its clip id, its offset) with shuffling off, so a
clip's records stay together and in order (``TfdsClips`` needs that). Splits by identity (the file-name rule of
``gohd-preprocess``): ``heldout`` holds ``pipelines.heldout_identities`` (a quarter), ``train`` the
rest. Videos that give no clips are skipped (Beam counter ``gohd-preprocess/skipped``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import tensorflow_datasets as tfds

from data_pipelines import pipelines
from data_pipelines.tfds.source import record_example, record_features
from data_pipelines.video import preprocess as pp
from data_pipelines.video.segment import SegmentConfig

HELDOUT_FRACTION = 0.25
WEIGHT_FILES = {"deep3d": ("epoch_20.pth", "deep3d.npz"), "l2cs": ("L2CSNet_gaze360.pkl", "l2cs.npz"),
                "lm3d": ("similarity_Lm3D_all.mat",), "landmarks": ("shape_predictor_68_face_landmarks.dat",)}


@dataclasses.dataclass
class VideoBuilderConfig(tfds.core.BuilderConfig):
    min_seconds: float = SegmentConfig.min_seconds
    max_seconds: float = SegmentConfig.max_seconds
    detect_size: int = 640
    jpeg_quality: int = 95
    batch_size: int = 32


def weights_in(manual_dir) -> dict:
    """The weight files found in ``manual_dir/weights`` (name -> path; None where absent)."""
    folder = Path(manual_dir) / "weights"
    found = {}
    for name, candidates in WEIGHT_FILES.items():
        found[name] = next((str(folder / c) for c in candidates if (folder / c).is_file()), None)
    missing = [WEIGHT_FILES[n][0] for n in ("deep3d", "l2cs", "lm3d") if found[n] is None]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (see gohd-preprocess --help for "
                                f"where each comes from)")
    return found


def load_models(manual_dir, batch_size: int):
    """What each Beam worker calls in ``setup``: (FaceModels, Estimators) from the manual dir."""
    from data_pipelines.video.beam import load_models_from_files

    w = weights_in(manual_dir)
    return functools.partial(load_models_from_files, w["landmarks"], w["deep3d"], w["l2cs"], w["lm3d"], batch_size)


def _example_key(clip_id: str, offset: int) -> int:
    """An integer key (TFDS's Beam writer orders unshuffled examples by integer key): 60 bits of
    the clip id's SHA-256, then the record's offset in its clip (20 bits), so a clip's records sort
    together and in order; clips sort by hash."""
    return (int(hashlib.sha256(clip_id.encode()).hexdigest()[:15], 16) << 20) | offset


class Builder(tfds.core.GeneratorBasedBuilder):
    """Real talking-head videos through gohd-preprocess's per-video work (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clip-record schema v2 from real videos, built on Beam."}
    BUILDER_CONFIGS = [VideoBuilderConfig(name="default", description="gohd-preprocess's default settings")]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the raw videos in <manual_dir>/videos/ (or list them in <manual_dir>/videos.txt) and the
    estimators' weights in <manual_dir>/weights/: epoch_20.pth, similarity_Lm3D_all.mat and
    L2CSNet_gaze360.pkl (gohd-preprocess --help says where each comes from)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=record_features(),
            disable_shuffling=True,  # a clip's records must stay together and in order
            description="Real talking-head videos as GoHD clip records (schema 2): 256x256 JPEG face "
                        "crops, 16 kHz audio, 72-d descriptors (Deep3DFaceRecon, L2CS-Net), 21-d "
                        "controls and both mel streams.",
            homepage="https://github.com/Jia1018/GoHD")

    def _preprocess_config(self) -> pp.PreprocessConfig:
        c = self.builder_config
        return pp.PreprocessConfig(segment=SegmentConfig(min_seconds=c.min_seconds, max_seconds=c.max_seconds),
                                   detect_size=c.detect_size, jpeg_quality=c.jpeg_quality)

    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        sources = [str(manual / "videos.txt")] if (manual / "videos.txt").is_file() else [str(manual / "videos")]
        videos = pp.list_videos(sources)
        if not videos:
            raise FileNotFoundError(f"no videos in {sources[0]}\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        ids = [pp.identity_of(v) for v in videos]
        held = pipelines.heldout_identities(ids, HELDOUT_FRACTION)
        models = load_models(manual, self.builder_config.batch_size)
        splits = {"train": [v for v, i in zip(videos, ids) if i not in held],
                  "heldout": [v for v, i in zip(videos, ids) if i in held]}
        return {k: self._generate_examples(v, models) for k, v in splits.items() if v}

    def _generate_examples(self, videos, models):
        beam = tfds.core.lazy_imports.apache_beam
        from data_pipelines.video.beam import VideoRecords

        def example(item):
            rec, offset, entry = item
            return _example_key(entry["clip_id"], offset), record_example(rec, offset, entry)

        return (beam.Create(videos) | beam.Reshuffle()
                | beam.ParDo(VideoRecords(self._preprocess_config(), models)) | beam.Map(example))
