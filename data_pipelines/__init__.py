"""Data for GoHD-JAX: clip records, audio features, the synthetic talking-head
generator, TFDS builders and the Grain pipelines of each training stage."""
