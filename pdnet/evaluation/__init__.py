"""Evaluation: DAVIS J&F (bit-identical to the toolkit, vectorised in torch) and flicker.

- :mod:`pdnet.evaluation.metrics`: ``jaccard``, ``boundary_f``, ``statistics``,
  ``flicker`` and their definitions (and where they differ from the toolkit);
- :mod:`pdnet.evaluation.evaluate`: ``evaluate`` (folders of PNGs), ``evaluate_arrays``
  (in-memory predictions, e.g. from the trainer), the protocols and the result object;
- :mod:`pdnet.evaluation.reference`: the per-frame NumPy transcription of the toolkit
  (oracle and benchmark baseline).
"""
from .evaluate import PROTOCOLS, EvalResult, SequenceResult, Stats, binarize, evaluate, evaluate_arrays
from .io import EvaluationError
from .metrics import boundary_f, boundary_radius, flicker, jaccard, statistics

__all__ = [
    "PROTOCOLS",
    "EvalResult",
    "EvaluationError",
    "SequenceResult",
    "Stats",
    "binarize",
    "boundary_f",
    "boundary_radius",
    "evaluate",
    "evaluate_arrays",
    "flicker",
    "jaccard",
    "statistics",
]
