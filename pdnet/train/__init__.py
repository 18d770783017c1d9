"""Training: the release recipe (``pdnet train``), resumable and multi-GPU.

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
    "ResumableSampler": "loop",
    "Trainer": "loop",
    "TrainError": "loop",
}

__all__ = ["DEFAULTS", "ConfigError", "load_config", "Trainer", "TrainError", "ResumableSampler"]

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .config import DEFAULTS, ConfigError, load_config
    from .loop import ResumableSampler, Trainer, TrainError


__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS)
