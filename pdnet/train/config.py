"""Training configuration: YAML files with ``model``, ``data``, ``train``, ``log`` sections.

Every key has a default (:data:`DEFAULTS`); a file overrides some, and ``--set
section.key=value`` overrides on the command line (values parsed as YAML scalars, so
``train.lr=1e-3``, ``model.input_size=[256,256]``, ``train.compile=true`` work).
Unknown keys are errors, so typos never pass silently.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {
        "backbone": "resnet50",
        "parts": 5,
        "attention_scale": 1.0,
        "ipda_stride": 4,
        "loss_variant": "release",
        "ops_backend": "auto",
        "imagenet": "cache",  # path to a torchvision ResNet state_dict, "cache" (hub cache only) or null
    },
    "data": {
        "video": [],  # [{"kind": "davis"|"mvps"|"pphumanseg"|"auto", "root": DIR}] ; --data DIR adds one
        "image": [],  # [{"kind": "images", "root": DIR}] ; empty: video frames serve as still images
        "size": 480,  # int or [H, W], multiples of 32
        "workers": 2,
        "output": "uint8",  # DataLoader sample format: uint8 (finished on the device) | float | raw
        "val_split": "val",
        "skip_bad": False,
        "seed": 0,
    },
    "train": {
        "epochs": 60,
        "batch_size": 4,  # per process
        "lr": 2.5e-4,
        "momentum": 0.9,
        "weight_decay": 5.0e-4,
        "poly_power": 0.9,
        "halve_lr_from_epoch": 6,  # lr halved from this epoch (0-based); null disables
        "image_every": 3,  # steps image, video, video, image, ... (0: video steps only)
        "video_backbone_lr": 0.01,  # backbone lr multiplier on video steps
        "video_head_lr": 10.0,  # non-backbone lr multiplier on video steps
        "image_head_lr": 0.0,  # non-backbone lr multiplier on image steps
        "amp": "auto",  # auto | bf16 | fp16 | off
        "channels_last": True,
        # keep freed memory in this process (glibc malloc, pdnet._malloc): auto = on CPU
        # devices, where page-faulting every step's large tensors afresh costs up to half
        # the step (bench/results/README.md); true | false
        "keep_freed_memory": "auto",
        "compile": False,
        "seed": 0,
        "semantic_features": "cache",  # ResNet-18 weights for the semantic loss (path | cache | null)
        "semantic_impl": "factored",  # factored (no [B,512,H,W] tensors) | dense (the release's formula)
    },
    "log": {
        "every": 10,  # steps between metric lines
        "checkpoint_every": 500,  # steps between checkpoints (and at each epoch end)
        "val_every": 0,  # steps between validations (0: at each epoch end only); null: never
        "val_clips": 0,  # validate on at most this many clips (0: all)
        "tensorboard": True,
        "progress": True,
    },
}


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and the file)."""


def _merge(base: Dict[str, Any], update: Dict[str, Any], where: str) -> None:
    for section, values in update.items():
        if section not in base:
            raise ConfigError(f"{where}: unknown section {section!r}; sections: {', '.join(base)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError(
                    f"{where}: unknown key {section}.{key}; keys of {section}: {', '.join(base[section])}"
                )
            base[section][key] = value


def parse_override(item: str) -> Dict[str, Dict[str, Any]]:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}``."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    return {section: {key: value}}


def find_config(name: str) -> Path:
    """A config path, or the name of a shipped config (``release``, ``demo-cpu``)."""
    p = Path(name)
    if p.is_file():
        return p
    stem = f"{name.removesuffix('.yaml')}.yaml"
    shipped = Path(__file__).resolve().parents[2] / "configs" / stem  # a source checkout
    if shipped.is_file():
        return shipped
    try:  # an installed wheel: configs/ is installed as the data package pdnet.configs
        from importlib import resources

        installed = resources.files("pdnet.configs").joinpath(stem)
        if installed.is_file():
            return Path(str(installed))
    except (ModuleNotFoundError, TypeError):
        pass
    raise ConfigError(f"config file not found: {name} (nor a shipped config {shipped})")


def load_config(
    path: Optional[str] = None, overrides: Iterable[str] = (), base: Optional[Dict[str, Any]] = None
) -> Dict[str, Dict[str, Any]]:
    """DEFAULTS, then ``base`` (a saved config dict), then the YAML file at ``path``,
    then ``overrides`` ("section.key=value")."""
    cfg = copy.deepcopy(DEFAULTS)
    if base is not None:
        _merge(cfg, base, "saved config")
    if path is not None:
        file = find_config(path)
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of sections, got {type(data).__name__}")
        _merge(cfg, data, str(file))
    for item in overrides:
        _merge(cfg, parse_override(item), f"--set {item}")
    validate(cfg)
    return cfg


def validate(cfg: Dict[str, Dict[str, Any]]) -> None:
    t, d = cfg["train"], cfg["data"]
    for key in ("batch_size", "epochs"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {t[key]!r}")
    if not isinstance(t["lr"], (int, float)) or t["lr"] <= 0:
        raise ConfigError(f"train.lr must be a positive number, got {t['lr']!r}")
    if t["amp"] is False or t["amp"] is None:  # YAML reads a bare `off` as false
        t["amp"] = "off"
    if t["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {t['amp']!r}")
    if t["keep_freed_memory"] not in ("auto", True, False):
        raise ConfigError(f"train.keep_freed_memory must be auto, true or false, got {t['keep_freed_memory']!r}")
    if t["semantic_impl"] not in ("factored", "dense"):
        raise ConfigError(f"train.semantic_impl must be factored or dense, got {t['semantic_impl']!r}")
    if not isinstance(d["workers"], int) or d["workers"] < 0:
        raise ConfigError(f"data.workers must be a non-negative integer, got {d['workers']!r}")
    if d["output"] not in ("uint8", "float", "raw"):
        raise ConfigError(f"data.output must be uint8, float or raw, got {d['output']!r}")
    size = d["size"]
    sizes = [size, size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else None
    if not sizes or len(sizes) != 2 or any(not isinstance(s, int) or s <= 0 or s % 32 for s in sizes):
        raise ConfigError(f"data.size must be an int or [H, W], multiples of 32, got {size!r}")
    for group in ("video", "image"):
        if not isinstance(d[group], list) or any(not isinstance(e, dict) or "root" not in e for e in d[group]):
            raise ConfigError(f"data.{group} must be a list of {{kind, root}} mappings, got {d[group]!r}")
