"""Training: the release recipe (``pdnet train``), resumable and multi-GPU.

Modules: :mod:`.config` (the YAML config and its checks), :mod:`.trainer` (the
:class:`Trainer`: steps, the run loop, signals), :mod:`.schedule` (image / video steps,
epochs, learning rates), :mod:`.streams` (datasets, loaders, resumable data order),
:mod:`.checkpointing` (``last.pt``: training state, atomic writes, resume),
:mod:`.nonfinite` (NaN / inf losses), :mod:`.metrics` (metrics.jsonl, TensorBoard, the
progress bar), :mod:`.distributed` (ranks and their agreement), :mod:`.validation`
(J&F through the inference path), :mod:`.cli` (``pdnet train``).

The package imports lazily: ``pdnet train --help`` and its argument errors import the
config module only (no torch); the trainer is imported on first use of its names.
"""
import typing as _typing

from .._lazy import lazy_attributes as _lazy_attributes

#: public name -> the submodule that defines it
_EXPORTS = {
    "DEFAULTS": "config",
    "ConfigError": "config",
    "load_config": "config",
    "NonFiniteLoss": "errors",
    "TrainError": "errors",
    "TrainInterrupted": "errors",
    "ResumableSampler": "streams",
    "Trainer": "trainer",
}

__all__ = ["DEFAULTS", "ConfigError", "load_config", "Trainer", "TrainError", "NonFiniteLoss", "TrainInterrupted",
           "ResumableSampler"]

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .config import DEFAULTS, ConfigError, load_config
    from .errors import NonFiniteLoss, TrainError, TrainInterrupted
    from .streams import ResumableSampler
    from .trainer import Trainer


__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS)
