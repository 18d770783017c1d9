"""The configuration of a PDNet that fits the tensors of the authors' release files.

A release file is the authors' ``torch.save`` of ``{"model": state_dict, ...}`` or a bare
state_dict with their key names (``bkbone.*``, ``l5_adapt.*``, ``ipda.part_q_conv.*`` ...).
The configuration is inferred from the tensors (:func:`infer_config`): the backbone from
the lateral widths and the number of ``layer3`` blocks, the number of parts from the
``part_q_conv`` entries, the widths from the weight shapes; the input size is the
release's 480x480 unless given. The key names are converted by :mod:`pdnet.model.release`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..model import PDNetConfig
from .checkpoint import CheckpointError

#: (C2 channels, number of layer3 blocks) -> torchvision ResNet name
_BACKBONE_SIGNATURES = {
    (64, 2): "resnet18",
    (64, 6): "resnet34",
    (256, 6): "resnet50",
    (256, 23): "resnet101",
}


def _count(prefix: str, keys) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for m in map(pat.match, keys) if m})


def infer_config(state: Mapping[str, torch.Tensor], **overrides) -> PDNetConfig:
    """A PDNetConfig that fits a state_dict in this engine's key names.

    Args:
        state: ``PDNet.state_dict()``-style mapping (convert release names first with
            :func:`pdnet.model.release.release_to_pdnet_key`).
        overrides: PDNetConfig fields that win over what is inferred (``backbone``, ``parts``,
            ``input_size`` ...); ``None`` values are ignored.

    Returns:
        PDNetConfig with backbone, parts and the three widths read from the tensors.
        Fields that cannot be inferred (missing keys) keep their defaults, so that
        loading then lists the missing keys.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    keys = list(state)
    found: dict[str, Any] = {}
    lateral2 = state.get("decoder.lateral2.conv.weight")
    n_layer3 = _count("encoder.layer3.", keys)
    if "backbone" not in overrides and lateral2 is not None and lateral2.dim() == 4:
        sig = (int(lateral2.shape[1]), n_layer3)
        if sig not in _BACKBONE_SIGNATURES:
            known = ", ".join(f"{v}: C2={c}, {n} layer3 blocks" for (c, n), v in _BACKBONE_SIGNATURES.items())
            raise CheckpointError(
                f"cannot tell the backbone from the checkpoint: C2 lateral input width {sig[0]} with {sig[1]} "
                f"layer3 blocks matches none of ({known}); pass backbone= (--backbone) explicitly"
            )
        found["backbone"] = _BACKBONE_SIGNATURES[sig]
    parts = _count("ipda.query.", keys)
    if parts:
        found["parts"] = parts
    shapes = {
        "decoder_channels": ("decoder.lateral5.conv.weight", 0),
        "ipda_channels": ("ipda.adapter.1.conv.weight", 0),
        "attention_dim": ("ipda.query.0.weight", 0),
    }
    for field, (key, dim) in shapes.items():
        t = state.get(key)
        if isinstance(t, torch.Tensor) and t.dim() > dim:
            found[field] = int(t.shape[dim])
    return PDNetConfig(**{**found, **overrides})

