"""TFDS builder of the synthetic talking-head dataset."""
