"""PDNet: Part-Decoupling Network for video portrait segmentation.

The package imports lazily: ``import pdnet`` loads neither torch nor the compiled ops;
the first use of a name below (``pdnet.PDNet``, ``pdnet.load``, ``pdnet.ops``,
``from pdnet import segment_video``...) imports the module that defines it. So
``pdnet --help`` and the argument errors of every command answer without importing
torch, and each command imports only what it uses.
"""
import typing as _typing

from ._lazy import lazy_attributes as _lazy_attributes

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "PDNet": "model",
    "PDNetConfig": "model",
    "ReferenceState": "model",
    "load_release_state_dict": "model",
    "to_release_state_dict": "model",
    "load": "inference",
    "segment_video": "inference",
}

#: subpackages and modules reachable as attributes (``pdnet.ops.part_attention``)
#: without importing them first
_SUBMODULES = (
    "cli",
    "data",
    "demo",
    "evaluation",
    "inference",
    "kernels",
    "losses",
    "model",
    "ops",
    "preprocess",
    "train",
)

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

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from . import ops
    from .inference import load, segment_video
    from .model import PDNet, PDNetConfig, ReferenceState, load_release_state_dict, to_release_state_dict


__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS, _SUBMODULES)
