"""Evaluation: DAVIS J&F (bit-identical to the toolkit, vectorised in torch) and flicker.

See :mod:`pdnet.evaluation.metrics` for the definitions and
:mod:`pdnet.evaluation.evaluate` for folders of PNGs and in-memory predictions.
"""
from .metrics import boundary_f, boundary_radius, flicker, jaccard, statistics

__all__ = ["boundary_f", "boundary_radius", "flicker", "jaccard", "statistics"]
