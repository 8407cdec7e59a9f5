"""Temporal stability: One-Euro smoothing and landmark tracking between detections."""
