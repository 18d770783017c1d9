"""Evaluation: DAVIS J&F (bit-identical to the toolkit, vectorised in torch) and flicker.

- :mod:`pdnet.evaluation.metrics`: ``jaccard``, ``boundary_f``, ``statistics``,
  ``flicker`` and their definitions (and where they differ from the toolkit);
- :mod:`pdnet.evaluation.evaluate`: ``evaluate`` (folders of PNGs), ``evaluate_arrays``
  (in-memory predictions, e.g. from the trainer), the protocols and the result object;
- :mod:`pdnet.evaluation.reference`: the per-frame NumPy transcription of the toolkit
  (oracle and benchmark baseline).
"""
import sys as _sys
import types as _types

from .._lazy import lazy_attributes as _lazy_attributes

#: public name -> submodule defining it; imported on first use (PEP 562), so that
#: ``pdnet evaluate --help`` and argument errors do not import torch
_EXPORTS = {
    **dict.fromkeys(
        ("PROTOCOLS", "EvalResult", "SequenceResult", "Stats", "binarize", "evaluate", "evaluate_arrays"), "evaluate"
    ),
    "EvaluationError": "io",
    **dict.fromkeys(("boundary_f", "boundary_radius", "flicker", "jaccard", "statistics"), "metrics"),
}


__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS)


class _Package(_types.ModuleType):
    """Keeps ``pdnet.evaluation.evaluate`` the function: importing the submodule of the
    same name sets the package attribute to the module, which would hide the function."""

    def __setattr__(self, name, value):
        if name == "evaluate" and isinstance(value, _types.ModuleType):
            value = value.evaluate
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


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
