"""Diffusion samplers for the pose / gaze denoisers."""
