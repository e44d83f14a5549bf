"""TFDS builders of GoHD-JAX datasets (ArrayRecord, no TensorFlow needed).

Build with ``gohd-tfds build <builder dir or name> --data_dir=DIR`` (same flags
as ``tfds build``; see ``data_pipelines/tfds/cli.py`` for why a wrapper) and
read with ``tfds.data_source(...)`` + ``data_pipelines.tfds.TfdsClips``.
"""

from data_pipelines.tfds.source import TfdsClips

__all__ = ["TfdsClips"]
