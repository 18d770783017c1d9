"""Loading checkpoints saved by the authors' release (iCVTEAM/PDNet).

The release names modules differently (``bkbone``, ``l5_adapt``, ``ipda.part_sep_conv``
...). One table, :data:`KEY_RULES`, pairs a release name pattern with this engine's
name pattern; it is used in both directions. :func:`load_release_state_dict` checks
that every key is accounted for and every shape fits, listing all problems at once.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

#: (release pattern, engine pattern); ``{name}`` matches one dotted component,
#: ``{rest}`` the remainder of the key.
KEY_RULES: list[tuple[str, str]] = [
    ("bkbone.{rest}", "encoder.{rest}"),
    ("l{n}_adapt.0.{rest}", "decoder.lateral{n}.conv.{rest}"),
    ("l{n}_adapt.1.{rest}", "decoder.lateral{n}.bn.{rest}"),
    ("fuse{n}.conv_{j}.{rest}", "decoder.fuse{n}.conv{j}.conv.{rest}"),
    ("fuse{n}.bn_{j}.{rest}", "decoder.fuse{n}.conv{j}.bn.{rest}"),
    ("ipda.sup_adapt1.0.{rest}", "ipda.adapter.0.conv.{rest}"),
    ("ipda.sup_adapt1.1.{rest}", "ipda.adapter.0.bn.{rest}"),
    ("ipda.sup_adapt2.0.{rest}", "ipda.adapter.1.conv.{rest}"),
    ("ipda.sup_adapt2.1.{rest}", "ipda.adapter.1.bn.{rest}"),
    ("ipda.part_sep_conv.{k}.conv_{j}.{rest}", "ipda.branches.{k}.conv{j}.conv.{rest}"),
    ("ipda.part_sep_conv.{k}.bn_{j}.{rest}", "ipda.branches.{k}.conv{j}.bn.{rest}"),
    ("ipda.sup_head.{rest}", "ipda.saliency_head.{rest}"),
    ("ipda.part_sep_pred.{rest}", "ipda.part_head.{rest}"),
    ("ipda.part_q_conv.{k}.{rest}", "ipda.query.{k}.{rest}"),
    ("ipda.part_k_conv.{k}.{rest}", "ipda.key.{k}.{rest}"),
    ("ipda.part_v_conv.{k}.{rest}", "ipda.value.{k}.{rest}"),
    ("ipda.part_att_conv.{k}.0.{rest}", "ipda.out_proj.{k}.conv.{rest}"),
    ("ipda.part_att_conv.{k}.1.{rest}", "ipda.out_proj.{k}.bn.{rest}"),
    ("spatiotemporal_fusion.conv_t.{rest}", "fusion.project.conv.{rest}"),
    ("spatiotemporal_fusion.bn_t.{rest}", "fusion.project.bn.{rest}"),
    ("spatiotemporal_fusion.conv_t1.{rest}", "fusion.gate.{rest}"),
    ("spatiotemporal_fusion.conv_{j}.{rest}", "fusion.refine{j}.conv.{rest}"),
    ("spatiotemporal_fusion.bn_{j}.{rest}", "fusion.refine{j}.bn.{rest}"),
    ("head.{rest}", "head.{rest}"),
    # the release's side heads head_1..head_4 sit on x2, x3, x4, x5
    ("head_1.{rest}", "side_heads.x2.{rest}"),
    ("head_2.{rest}", "side_heads.x3.{rest}"),
    ("head_3.{rest}", "side_heads.x4.{rest}"),
    ("head_4.{rest}", "side_heads.x5.{rest}"),
]


def _compile(pattern: str) -> re.Pattern:
    out = ""
    for piece in re.split(r"(\{\w+\})", pattern):
        if piece == "{rest}":
            out += r"(?P<rest>.+)"
        elif piece.startswith("{"):
            out += rf"(?P<{piece[1:-1]}>[^.]+?)"
        else:
            out += re.escape(piece)
    return re.compile(out + "$")


_FORWARD = [(_compile(src), dst) for src, dst in KEY_RULES]
_BACKWARD = [(_compile(dst), src) for src, dst in KEY_RULES]


def _apply(rules, key: str) -> str | None:
    for pat, template in rules:
        m = pat.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def release_to_pdnet_key(key: str) -> str | None:
    """Map one release state_dict key to this engine's name (None if it has none)."""
    return _apply(_FORWARD, key)


def pdnet_to_release_key(key: str) -> str | None:
    """Map one of this engine's state_dict keys to the release's name."""
    return _apply(_BACKWARD, key)


def unwrap_state_dict(state: Mapping) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict, one nested under 'state_dict'/'model', and DDP 'module.' prefixes."""
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_release_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state_dict saved by the authors' release into ``model`` (in place).

    Every problem is listed at once: checkpoint keys the model has no place for
    (unexpected), model keys the checkpoint lacks (missing) and shape mismatches
    (with both shapes). On any problem a ``RuntimeError`` is raised and the model
    is left untouched.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_release_state_dict: expected a state_dict mapping, got {type(state_dict).__name__}")
    state = unwrap_state_dict(state_dict)
    own = model.state_dict()
    converted: dict[str, tuple[str, torch.Tensor]] = {}
    unexpected = []
    for k, v in state.items():
        new = release_to_pdnet_key(k)
        if new is None or new not in own:
            unexpected.append(k)
        else:
            converted[new] = (k, v)
    missing = [pdnet_to_release_key(k) or k for k in own if k not in converted]
    mismatched = [
        f"{old}: checkpoint {tuple(v.shape)} vs model {tuple(own[new].shape)}"
        for new, (old, v) in converted.items()
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(own[new].shape)
    ]
    if missing or unexpected or mismatched:
        cfg = getattr(model, "config", None)
        desc = f"{cfg.backbone}, p={cfg.parts}" if cfg is not None else type(model).__name__
        lines = [f"the release checkpoint does not fit this PDNet ({desc})"]
        problems = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for title, items in problems:
            if items:
                shown = ", ".join(items[:40]) + (f" ... and {len(items) - 40} more" if len(items) > 40 else "")
                lines.append(f"{title} ({len(items)}): {shown}")
        raise RuntimeError("; ".join(lines))  # one line: the CLI prints it as is
    model.load_state_dict({new: v for new, (_, v) in converted.items()}, strict=True)
    return model


def to_release_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Export ``model``'s weights under the release's key names."""
    out = {}
    for k, v in model.state_dict().items():
        rk = pdnet_to_release_key(k)
        if rk is None:
            raise RuntimeError(f"no release name for {k}")
        out[rk] = v
    return out
