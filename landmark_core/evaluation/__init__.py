"""Evaluation: test metrics, calibration, open-set thresholds and Grad-CAM heatmaps."""
