"""Training configuration: YAML files with ``model``, ``data``, ``train``, ``log`` sections.

Every key has a default (:data:`DEFAULTS`); a file overrides some, and ``--set
section.key=value`` overrides on the command line (values parsed as YAML scalars, so
``train.lr=1e-3``, ``data.size=[256,256]``, ``train.compile=true`` work).

Every value is checked when the config is loaded, before any data or model is touched
(:func:`validate`, rules in :data:`RULES`): numbers must be finite and in range (``lr >
0``, ``momentum`` in [0, 1), counts >= 1 ...), choices must be one of theirs, switches
true or false, explicit weight files must exist. Unknown keys are errors with a
suggestion, so typos never pass silently. Each error is one line naming the key, the
value and where it came from (the file or the ``--set`` item).
"""
from __future__ import annotations

import copy
import difflib
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, dict[str, Any]] = {
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
        # true: this process and its DataLoader workers keep the memory they free (glibc malloc,
        # pdnet._malloc) instead of page-faulting every step's large tensors afresh, at the cost
        # of a resident set that stays at its peak; worth it on CPU devices. Opt-in: false
        # leaves malloc as it is
        "keep_freed_memory": False,
        "compile": False,
        "seed": 0,
        "semantic_features": "cache",  # ResNet-18 weights for the semantic loss (path | cache | null)
        "semantic_impl": "factored",  # factored (no [B,512,H,W] tensors) | dense (the release's formula)
        # a step whose loss is NaN / inf: stop (the run ends with an error naming the step and
        # the loss terms; last.pt stays the last finite checkpoint) | skip (no update for that
        # step, counted in the metrics and the result; checks the loss every step)
        "nonfinite": "stop",
        "max_skips": 10,  # nonfinite=skip: stop after this many non-finite steps in a row
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


#: values the model accepts (pdnet.model.config.BACKBONE_CHANNELS, LOSS_VARIANTS, OPS_BACKENDS;
#: data layouts: pdnet.data.layouts.LAYOUTS), repeated here so that checking a config
#: imports neither torch nor the data stack; tests/test_train_config_checks.py keeps them equal
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
LOSS_VARIANTS = ("release", "paper")
OPS_BACKENDS = ("auto", "reference", "triton", "cpp", "cuda", "torch")
DATA_KINDS = ("auto", "davis", "mvps", "pphumanseg", "images")
MAX_PARTS = 8
SEED_MAX = 2**31 - 1


class _Bad(Exception):
    """A rule's refusal: what the value must be."""


def _number(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False, null=False):
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    if lo is not None and hi is not None:
        want = f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    else:
        want = "a finite number" + (f" {parts[0]}" if parts else "")
    want += " or null" if null else ""

    def check(v):
        if v is None and null:
            return None
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                raise _Bad(want) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad(want)
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise _Bad(want)
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise _Bad(want)
        return v

    return check


def _int(lo: int, hi: int | None = None, null=False):
    want = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    want += " or null" if null else ""

    def check(v):
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _Bad(want)
        return v

    return check


def _choice(*options):
    want = "one of " + ", ".join(str(o) for o in options)

    def check(v):
        if v is False and "off" in options:  # YAML reads a bare `off` as false
            v = "off"
        if not isinstance(v, str) or v not in options:
            raise _Bad(want)
        return v

    return check


def _flag(v):
    if v is True or v is False:
        return v
    raise _Bad("true or false")


def _opt_in_flag(v):
    """true or false; ``auto`` (which a run's saved config.yaml may still hold: it meant "on for CPU
    devices" before the setting became opt-in) reads as false, with a warning, so such a run resumes."""
    if v == "auto":
        warnings.warn("train.keep_freed_memory=auto is read as false: keeping freed memory is opt-in "
                      "(set it to true to keep it)", UserWarning, stacklevel=2)
        return False
    return _flag(v)


def _text(v):
    if not isinstance(v, str) or not v:
        raise _Bad("a non-empty string")
    return v


def _weights(v, must_exist: bool = True):
    """null, cache (torchvision's file in the torch hub cache) or an existing file (made absolute)."""
    if v is None or v == "cache":
        return v
    if not isinstance(v, str) or not v:
        raise _Bad("a weights file, cache or null")
    p = Path(v).expanduser()
    if must_exist and not p.is_file():
        raise _Bad("an existing weights file, cache or null (no such file)" if not p.exists()
                   else "a weights file, cache or null (this is not a file)")
    return str(p.resolve())


def _size(v):
    if isinstance(v, int) and not isinstance(v, bool):
        sizes = [v, v]
    else:
        sizes = list(v) if isinstance(v, (list, tuple)) else None
    if not sizes or len(sizes) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 or s % 32
                                           for s in sizes):
        raise _Bad("an int or [H, W], multiples of 32")
    return v


def _datasets(v):
    want = "a list of {kind, root[, split]} mappings, kind one of " + ", ".join(DATA_KINDS)
    if not isinstance(v, list):
        raise _Bad(want)
    for e in v:
        if not isinstance(e, dict) or not isinstance(e.get("root"), str) or not e["root"]:
            raise _Bad(want)
        if set(e) - {"kind", "root", "split"} or e.get("kind", "auto") not in DATA_KINDS:
            raise _Bad(want)
        if "split" in e and (not isinstance(e["split"], str) or not e["split"]):
            raise _Bad(want)
    return v


#: section -> key -> check(value) -> normalised value (raises _Bad(what it must be))
RULES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "model": {
        "backbone": _choice(*BACKBONES),
        "parts": _int(1, MAX_PARTS),
        "attention_scale": _number(0, lo_open=True),
        "ipda_stride": _int(1),
        "loss_variant": _choice(*LOSS_VARIANTS),
        "ops_backend": _choice(*OPS_BACKENDS),
        "imagenet": _weights,
    },
    "data": {
        "video": _datasets,
        "image": _datasets,
        "size": _size,
        "workers": _int(0),
        "output": _choice("uint8", "float", "raw"),
        "val_split": _text,
        "skip_bad": _flag,
        "seed": _int(0, SEED_MAX),
    },
    "train": {
        "epochs": _int(1),
        "batch_size": _int(1),
        "lr": _number(0, lo_open=True),
        "momentum": _number(0, 1, hi_open=True),
        "weight_decay": _number(0),
        "poly_power": _number(0),
        "halve_lr_from_epoch": _int(0, null=True),
        "image_every": _int(0),
        "video_backbone_lr": _number(0),
        "video_head_lr": _number(0),
        "image_head_lr": _number(0),
        "amp": _choice("auto", "bf16", "fp16", "off"),
        "channels_last": _flag,
        "keep_freed_memory": _opt_in_flag,
        "compile": _flag,
        "seed": _int(0, SEED_MAX),
        "semantic_features": _weights,
        "semantic_impl": _choice("factored", "dense"),
        "nonfinite": _choice("stop", "skip"),
        "max_skips": _int(1),
    },
    "log": {
        "every": _int(1),
        "checkpoint_every": _int(1),
        "val_every": _int(0, null=True),
        "val_clips": _int(0),
        "tensorboard": _flag,
        "progress": _flag,
    },
}


def _suggest(section: str, key: str, base: dict[str, Any]) -> str:
    dotted = [f"{s}.{k}" for s in base for k in base[s]]
    same_key = [d for d in dotted if d.split(".", 1)[1] == key]
    close = same_key or difflib.get_close_matches(f"{section}.{key}", dotted, n=1, cutoff=0.6)
    if not close and section in base:
        close = [f"{section}.{k}" for k in difflib.get_close_matches(key, list(base[section]), n=1, cutoff=0.5)]
    return f" (did you mean {close[0]}?)" if close else ""


def _merge(base: dict[str, Any], update: dict[str, Any], where: str, origins: dict[tuple[str, str], str]) -> None:
    for section, values in update.items():
        if section not in base:
            close = difflib.get_close_matches(str(section), list(base), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}: unknown section {section!r}{hint}; sections: {', '.join(base)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError(
                    f"{where}: unknown key {section}.{key}{_suggest(section, str(key), base)}; "
                    f"keys of {section}: {', '.join(base[section])}"
                )
            base[section][key] = value
            origins[(section, key)] = where


def parse_override(item: str) -> dict[str, dict[str, Any]]:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}``."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    if not section or not key:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({first})") from None
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    return {section: {key: value}}


def find_config(name: str) -> Path:
    """A config path, or the name of a shipped config (``release``, ``demo-cpu``)."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir():
        raise ConfigError(f"config {name} is a folder, not a YAML file")
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


def read_yaml_mapping(file: Path, what: str = "") -> dict[str, Any]:
    """A YAML file's top-level mapping; one-line ConfigError naming the file otherwise."""
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}{file}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what}{file}: not valid YAML{where} ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}{file}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | None = None,
    overrides: Iterable[str] = (),
    base: dict[str, Any] | None = None,
    base_name: str = "saved config",
    resume: bool = False,
) -> dict[str, dict[str, Any]]:
    """DEFAULTS, then ``base`` (a saved config dict, named ``base_name`` in errors), then
    the YAML file at ``path``, then ``overrides`` ("section.key=value"); validated
    (``resume``: the config of a run being resumed, whose ``model.imagenet`` file is not
    read again and need not exist any more).

    Raises:
        ConfigError: one line naming the key, the value and where it was set.
    """
    cfg = copy.deepcopy(DEFAULTS)
    origins: dict[tuple[str, str], str] = {}
    if base is not None:
        if not isinstance(base, dict):
            raise ConfigError(f"{base_name}: expected a mapping of sections, got {type(base).__name__}")
        _merge(cfg, base, base_name, origins)
    if path is not None:
        file = find_config(path)
        _merge(cfg, read_yaml_mapping(file), str(file), origins)
    for item in overrides:
        _merge(cfg, parse_override(item), f"--set {item}", origins)
    validate(cfg, origins, resume=resume)
    return cfg


def validate(
    cfg: dict[str, dict[str, Any]], origins: dict[tuple[str, str], str] | None = None, resume: bool = False
) -> None:
    """Check (and normalise, e.g. ``"1e-3"`` -> 0.001) every value against :data:`RULES`
    (``resume``: ``model.imagenet`` need not exist).

    Raises:
        ConfigError: ``[where: ]section.key must be <rule>, got <value>``.
    """
    origins = origins or {}
    for section, rules in RULES.items():
        values = cfg.get(section)
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} is missing")
        unknown = [k for k in values if k not in rules]
        if unknown:
            raise ConfigError(f"unknown key {section}.{unknown[0]}{_suggest(section, unknown[0], RULES)}")
        for key, check in rules.items():
            if resume and (section, key) == ("model", "imagenet"):
                check = lambda v: _weights(v, must_exist=False)  # noqa: E731
            value = values.get(key, DEFAULTS[section][key])
            try:
                values[key] = check(value)
            except _Bad as bad:
                where = origins.get((section, key))
                prefix = f"{where}: " if where else ""
                raise ConfigError(f"{prefix}{section}.{key} must be {bad}, got {value!r}") from None
