"""Training: the release recipe (``pdnet train``), resumable and multi-GPU.

The package imports lazily: ``pdnet train --help`` and its argument errors import the
config module only (no torch); the trainer is imported on first use of its names.
"""
import importlib as _importlib
import typing as _typing

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


def __getattr__(name: str) -> "_typing.Any":
    """Imports the submodule behind ``name`` on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
