"""Figures computed from a model's scores on labelled samples: calibration, per-class damage."""
