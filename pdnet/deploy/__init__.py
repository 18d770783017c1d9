"""Deployment: ONNX export of PDNet and an ONNX Runtime engine that runs without torch.

* :func:`export_onnx` (``pdnet export CHECKPOINT --format onnx --out DIR``) writes the
  three graphs ``pdnet.onnx``, ``encode_reference.onnx`` and ``step.onnx`` and
  ``export.json`` (module :mod:`pdnet.deploy.export`, needs torch, onnx, onnxscript);
* :class:`OnnxSegmenter` runs an exported folder with ONNX Runtime and numpy only
  (module :mod:`pdnet.deploy.runtime`, importable without torch), the engine of
  ``pdnet segment --engine onnxruntime --onnx DIR``.

Names import on first use, so ``import pdnet.deploy`` loads neither torch nor onnxruntime.
"""
from .._lazy import lazy_attributes as _lazy_attributes

_EXPORTS = {
    "export_onnx": "export",
    "OnnxSegmenter": "runtime",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS, ("export", "runtime"))
