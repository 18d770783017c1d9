"""The PDNet network, its configuration and release-checkpoint loading."""
from .config import BACKBONE_CHANNELS, PDNetConfig
from .pdnet import FrameFeatures, PDNet, ReferenceState
from .release import load_release_state_dict, to_release_state_dict

__all__ = [
    "PDNet",
    "PDNetConfig",
    "FrameFeatures",
    "ReferenceState",
    "BACKBONE_CHANNELS",
    "load_release_state_dict",
    "to_release_state_dict",
]
