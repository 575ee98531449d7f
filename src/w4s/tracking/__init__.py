"""Tracking, traces and the model registry on MLflow."""
