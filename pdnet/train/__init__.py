"""Training: the release recipe (``pdnet train``), resumable and multi-GPU."""
from .config import DEFAULTS, ConfigError, load_config
from .loop import ResumableSampler, Trainer, TrainError

__all__ = ["DEFAULTS", "ConfigError", "load_config", "Trainer", "TrainError", "ResumableSampler"]
