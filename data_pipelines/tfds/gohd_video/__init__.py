"""TFDS builder of a real-video dataset, made by ``gohd-preprocess``'s per-video work on Beam."""
