"""Inference: sliding-window prediction, mirroring TTA, entropy uncertainty and per-case summaries."""

from .result import MAX_ENTROPY_2CLASS_NATS, Prediction

__all__ = ["MAX_ENTROPY_2CLASS_NATS", "Prediction"]
