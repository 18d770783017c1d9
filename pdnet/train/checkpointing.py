"""The run folder's training state: ``last.pt`` (model, part basis, optimizer, scaler,
step, stream positions, RNG states), written atomically and read back for a resume.

A checkpoint is never written with NaN / inf tensors and never half-written (a
temporary file beside it, fsynced, then renamed; :mod:`pdnet.inference.checkpoint`).
Temporary files of writes killed midway are removed when a run starts in the folder.
Only the main process writes; every rank records the step written, so that all ranks
take the same decisions from it.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model import PDNetConfig
from .errors import TrainError

#: what a training checkpoint holds beyond a model checkpoint (a resume needs them all)
RESUME_KEYS = ("model", "config", "optimizer", "basis", "step", "streams", "rng")

#: model settings a resumed checkpoint must share with the config
ARCHITECTURE = ("backbone", "parts", "input_size", "ipda_stride", "attention_dim", "ipda_channels", "decoder_channels")

#: temporary files of the run folder's atomic writes (checkpoints, config.yaml), left
#: behind when a process is killed midway
STALE_TEMPORARY = re.compile(r"^\.(?:last\.pt|best\.pt|config\.yaml)\.(?:[A-Za-z0-9_]+\.)?tmp$")


def rng_state() -> dict[str, Any]:
    """Every global generator's state, as tensors and plain numbers (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`."""
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``.NAME.tmp`` and ``os.replace`` (the file gets
    the umask's mode); the temporary file is removed when the write fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_stale_temporaries(folder: Path) -> list[tuple[Path, int]]:
    """Remove the temporary files of killed checkpoint / config writes in ``folder``;
    returns (path, size in bytes) of each file removed."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if STALE_TEMPORARY.match(p.name) and p.is_file():
                try:
                    size = p.stat().st_size
                    p.unlink()
                    removed.append((p, size))
                except OSError:
                    pass
    return removed


def on_disk(path: Path, saved_step: int | None) -> str:
    """What the run folder holds, for error messages: ``RUN/last.pt holds step N``."""
    return f"{path} holds step {saved_step}" if saved_step is not None else "no checkpoint was written"


def write_checkpoint(path: Path, model: nn.Module, state: dict[str, Any], saved_step: int | None) -> Path:
    """Write ``model`` and the training ``state`` to ``path`` (the main process's job).

    Raises:
        TrainError: the weights hold NaN / inf, or the write failed (disk full ...); the
            message names the step and what ``path`` still holds (``saved_step``).
    """
    from ..inference.checkpoint import CheckpointError, save_model_checkpoint

    try:
        return save_model_checkpoint(path, model, state)
    except CheckpointError as exc:
        raise TrainError(f"step {state['step']}: {exc}; {on_disk(path, saved_step)}") from None


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """The verified checkpoint at ``path``, which must hold a training state (:data:`RESUME_KEYS`).

    Raises:
        TrainError: missing, unreadable, damaged or not a training checkpoint (names the file).
    """
    from ..inference.checkpoint import CheckpointError, read_checkpoint

    if not path.exists():
        raise TrainError(f"cannot resume: {path} does not exist")
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise TrainError(f"cannot resume from {path}: {exc}") from None
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise TrainError(f"cannot resume from {path}: not a training checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_training_state(ckpt: dict[str, Any], path: Path, config: PDNetConfig, model: nn.Module, basis: nn.Module,
                        optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Load the weights, part basis, optimizer and scaler of ``ckpt`` (read from ``path``)
    into a model built from ``config``.

    Raises:
        TrainError: the checkpoint's architecture differs from ``config`` (each setting
            named), or its state does not fit.
    """
    saved = PDNetConfig.from_dict(ckpt["config"])
    diff = [
        f"{k}: checkpoint {getattr(saved, k)!r} vs config {getattr(config, k)!r}"
        for k in ARCHITECTURE
        if getattr(saved, k) != getattr(config, k)
    ]
    if diff:
        raise TrainError(f"cannot resume from {path}: the model differs from the config ({'; '.join(diff)})")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
        basis.load_state_dict(ckpt["basis"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainError(f"cannot resume from {path}: incompatible state ({exc})") from None


def write_run_config(out: Path, cfg: dict[str, Any]) -> None:
    """Create the run folder and write its resolved ``config.yaml`` (what ``--resume`` reads).

    Raises:
        TrainError: the folder or the file cannot be written.
    """
    import yaml

    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    except OSError as exc:
        raise TrainError(f"cannot write {out / 'config.yaml'}: {exc.strerror or exc}") from None
