"""``pdnet.load``: a PDNet from this project's checkpoint or from the authors' release file.

The file (or an already loaded dict) is read and verified by :mod:`.checkpoint`,
:func:`checkpoint_kind` tells the two kinds apart; a release file's configuration comes
from its tensors (:mod:`.release_config`) and its key names are converted by
:mod:`pdnet.model.release`. Every key that does not fit is listed at once.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .._device import parse_device
from ..model import PDNet, PDNetConfig, load_release_state_dict
from ..model.release import release_to_pdnet_key, unwrap_state_dict
from .checkpoint import CheckpointError, PathLike, read_checkpoint, verify_checkpoint
from .release_config import infer_config


def checkpoint_kind(obj: Mapping) -> str:
    """``"pdnet"`` (this project's format), ``"release"`` (the authors' key names) or ``"unknown"``."""
    if "config" in obj and isinstance(obj.get("model"), Mapping):
        return "pdnet"
    state = unwrap_state_dict(obj)
    if any(isinstance(k, str) and k.startswith("bkbone.") for k in state):
        return "release"
    return "unknown"


def _listing(title: str, problems: list[tuple[str, list[str]]]) -> str:
    lines = [title]
    for name, items in problems:
        if items:
            shown = ", ".join(items[:40]) + (f" ... and {len(items) - 40} more" if len(items) > 40 else "")
            lines.append(f"  {name} ({len(items)}): {shown}")
    return "\n".join(lines)


def load_engine_state_dict(model: PDNet, state: Mapping[str, torch.Tensor]) -> PDNet:
    """Load a state_dict in this engine's key names, listing every problem at once.

    Raises:
        RuntimeError: missing keys, unexpected keys and shape mismatches (all listed);
            the model is left untouched.
    """
    state = unwrap_state_dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} "
        f"vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and (not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(own[k].shape))
    ]
    if missing or unexpected or mismatched:
        cfg = model.config
        raise RuntimeError(
            _listing(
                f"the checkpoint does not fit this PDNet ({cfg.backbone}, p={cfg.parts}):",
                [("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)],
            )
        )
    model.load_state_dict(dict(state), strict=True)
    return model


def load(
    checkpoint: PathLike | Mapping,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
    backbone: str | None = None,
    parts: int | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> PDNet:
    """Build a PDNet from a checkpoint, in eval mode.

    Args:
        checkpoint: a file path (this project's checkpoint, or a release state_dict file),
            or an already loaded dict of either kind.
        device: where to put the model (``"auto"`` / None: CUDA when available).
        dtype: parameter dtype (float32 by default; the fast inference path keeps its own
            low-precision copy, see :class:`pdnet.inference.VideoSegmenter`).
        backbone: override the backbone (release files: otherwise inferred from the keys).
        parts: override the number of parts (release files: otherwise the count of
            ``ipda.part_q_conv.*``).
        input_size: override the model input size (release files default to 480x480;
            this project's checkpoints store theirs).

    Returns:
        PDNet in eval mode on ``device`` with parameters in ``dtype``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is unreadable, damaged (checksum), holds NaN / inf
            weights, is of an unknown kind, or does not fit the model (the message lists
            every missing / unexpected / mis-shaped key).
    """
    name = str(checkpoint) if not isinstance(checkpoint, Mapping) else "<checkpoint dict>"
    if isinstance(checkpoint, Mapping):
        obj = dict(checkpoint)
        verify_checkpoint(obj, name)
    else:
        obj = read_checkpoint(checkpoint)
    kind = checkpoint_kind(obj)
    overrides = {"backbone": backbone, "parts": parts, "input_size": input_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        if kind == "pdnet":
            cfg_dict = obj["config"]
            if not isinstance(cfg_dict, Mapping):
                raise CheckpointError(f"checkpoint {name}: 'config' is a {type(cfg_dict).__name__}, not a dict")
            config = PDNetConfig.from_dict({**dict(cfg_dict), **overrides})
            model = load_engine_state_dict(PDNet(config), obj["model"])
        elif kind == "release":
            state = unwrap_state_dict(obj)
            engine_names = {}
            for k, v in state.items():
                new = release_to_pdnet_key(k)
                if new is not None:
                    engine_names[new] = v
            config = infer_config(engine_names, **overrides)
            model = load_release_state_dict(PDNet(config), state)
        else:
            sample = ", ".join(list(map(str, obj))[:8])
            raise CheckpointError(
                f"checkpoint {name} is neither a pdnet checkpoint (keys 'model' and 'config') nor a release "
                f"state_dict (keys 'bkbone.*'); its first keys are: {sample}"
            )
    except CheckpointError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {name}: {exc}") from None
    return model.to(device=parse_device(device), dtype=dtype).eval()
