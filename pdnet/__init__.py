"""PDNet: Part-Decoupling Network for video portrait segmentation."""
from . import ops
from .model import PDNet, PDNetConfig, ReferenceState, load_release_state_dict, to_release_state_dict
from .inference import load, segment_video

__version__ = "0.1.0"

__all__ = [
    "PDNet",
    "PDNetConfig",
    "ReferenceState",
    "load_release_state_dict",
    "to_release_state_dict",
    "load",
    "segment_video",
    "ops",
    "__version__",
]
