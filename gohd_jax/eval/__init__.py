"""Evaluation metrics (reconstruction, lip sync, head-motion rhythm and realism, control accuracy)."""
