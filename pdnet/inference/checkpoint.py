"""This project's checkpoint file: writing it atomically, reading and verifying it.

Building a PDNet from a file, of this format or the authors' release files, is
:func:`pdnet.load` (:mod:`pdnet.inference.loading`).

**Format** (written by :func:`save_model_checkpoint`, read by :func:`read_checkpoint`
and :func:`pdnet.load`): a ``torch.save`` of a plain dict::

    {
        "format": "pdnet",            # marks the file
        "version": 1,                 # of this layout
        "config": {...},              # PDNetConfig.to_dict()
        "model": {name: Tensor},      # PDNet.state_dict() (this engine's key names), on the CPU
        "checksum": {"algorithm": "crc32", "tensors": {path: int}},
        ...                           # anything the writer adds through ``extra``
    }

Only ``config`` and ``model`` are required to load a model; ``extra`` entries (epoch,
optimiser state, metrics ...) must be plain containers, numbers, strings and tensors so
that the file loads with ``torch.load(weights_only=True)``. Files are written to a
temporary file ``.NAME.XXXX.tmp`` in the same folder and moved into place with
``os.replace``, so a reader never sees a half-written checkpoint; SIGINT and SIGTERM
are held back during the write and the rename and delivered right after, so Ctrl-C
never leaves a half-written file (nor a damaged previous one). A failed write (disk
full ...) removes the temporary file, leaves the previous file untouched and raises
:class:`CheckpointError` naming the file.

**Integrity.** ``checksum`` holds a CRC-32 of every tensor of the file (its dtype, shape
and raw bytes), keyed by its path in the dict (``model/encoder.conv1.weight``,
``optimizer/state/0/momentum_buffer`` ...). :func:`read_checkpoint` verifies it and
names the first tensor that does not match (a damaged file); files without it (release
files, older engine files) load unchecked. Any checkpoint whose floating-point tensors
hold NaN or inf is refused when read (naming the tensor), and never written.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._fs import temporary_beside
from ..model import PDNet

PathLike = str | os.PathLike

FORMAT = "pdnet"
VERSION = 1
#: keys of the checkpoint dict that ``extra`` may not overwrite
RESERVED_KEYS = ("format", "version", "config", "model", "checksum")
#: the checksum algorithm of the ``checksum`` entry
CHECKSUM_ALGORITHM = "crc32"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, is damaged, holds non-finite weights, does
    not fit the model, or cannot be written; the message names the file."""


# ----------------------------------------------------------------------------- integrity


def _tensors(obj: Any, prefix: str = ""):
    """(path, tensor) for every tensor in a nest of dicts / lists / tuples, in order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}" if prefix else str(i))


def tensor_crc32(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's dtype, shape and raw bytes (row-major, whatever its strides)."""
    head = f"{t.dtype}:{tuple(t.shape)}".encode()
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(data, zlib.crc32(head))


def checksum(payload: Mapping) -> dict[str, Any]:
    """The ``checksum`` entry for a checkpoint dict: a CRC-32 per tensor, keyed by its path."""
    return {
        "algorithm": CHECKSUM_ALGORITHM,
        "tensors": {name: tensor_crc32(t) for name, t in _tensors(payload) if name.split("/", 1)[0] != "checksum"},
    }


def first_nonfinite(obj: Any) -> str | None:
    """The path of the first floating-point tensor holding NaN or inf, else None.

    A tensor's sum screens it (one pass, no temporary the size of the tensor); only a
    non-finite sum (NaN, inf, or an overflow of finite values) is confirmed element by
    element.
    """
    for name, t in _tensors(obj):
        if (t.is_floating_point() or t.is_complex()) and t.numel():
            if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                return name
    return None


def verify_checkpoint(obj: Mapping, name: str) -> None:
    """Check a loaded checkpoint dict: its ``checksum`` entry (when it has one) and that
    no floating-point tensor holds NaN / inf.

    Raises:
        CheckpointError: naming ``name`` and the first damaged or non-finite tensor.
    """
    recorded = obj.get("checksum") if obj.get("format") == FORMAT else None
    if recorded is not None:
        if (
            not isinstance(recorded, Mapping)
            or recorded.get("algorithm") != CHECKSUM_ALGORITHM
            or not isinstance(recorded.get("tensors"), Mapping)
        ):
            algo = recorded.get("algorithm") if isinstance(recorded, Mapping) else type(recorded).__name__
            raise CheckpointError(
                f"checkpoint {name}: unknown checksum entry (algorithm {algo!r}; this engine knows "
                f"{CHECKSUM_ALGORITHM!r}); the file is damaged or from a newer engine"
            )
        expected = dict(recorded["tensors"])
        for path, t in _tensors(obj):
            if path.split("/", 1)[0] == "checksum":
                continue
            if path not in expected:
                raise CheckpointError(f"checkpoint {name} is damaged: tensor {path} is not in its checksum list")
            if tensor_crc32(t) != expected.pop(path):
                raise CheckpointError(
                    f"checkpoint {name} is damaged: tensor {path} does not match its checksum "
                    "(bytes changed after it was written)"
                )
        if expected:
            raise CheckpointError(f"checkpoint {name} is damaged: tensor {next(iter(expected))} is missing")
    bad = first_nonfinite({k: v for k, v in obj.items() if k != "checksum"})
    if bad is not None:
        raise CheckpointError(f"checkpoint {name}: tensor {bad} holds NaN or inf values; refusing to load it")


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def deferred_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Hold SIGINT / SIGTERM back for the duration of the block, then deliver them.

    A signal that arrives inside the block is recorded; on leaving, the previous handlers
    are restored and each recorded signal is handed to its handler (Python's SIGINT
    handler raises KeyboardInterrupt; a default disposition is re-raised, ending the
    process as it would have). Outside the main thread (where handlers cannot be set)
    the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    try:
        for sig in signals:
            if signal.getsignal(sig) is None:  # a handler installed outside Python: leave it alone
                continue
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Writer:
    """A binary file for torch.save that keeps the OSError of a failed write: torch.save
    reports it as an opaque RuntimeError ("unexpected pos ...")."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file ``.NAME.XXXX.tmp`` in the
    same folder, fsync and ``os.replace``; SIGINT / SIGTERM are deferred until the file
    is in place or removed (:func:`deferred_signals`).

    Raises:
        CheckpointError: the write failed (disk full, permissions ...); the message names
            ``path``, which is left as it was, and the temporary file is removed.
    """
    path = Path(path)
    with deferred_signals():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = temporary_beside(path)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from None
        writer = None
        try:
            with os.fdopen(fd, "wb") as f:
                writer = _Writer(f)
                torch.save(obj, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            cause = writer.error if writer is not None and writer.error is not None else exc
            if isinstance(cause, OSError):
                kept = f"{path} is unchanged" if path.exists() else f"{path} was not created"
                raise CheckpointError(f"cannot write checkpoint {path}: {cause.strerror or cause}; {kept}") from None
            raise
        _fsync_dir(path.parent)
    return path


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def _unwrap_module(model: nn.Module) -> nn.Module:
    """The PDNet inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save_model_checkpoint(path: PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a PDNet, possibly wrapped by DDP or torch.compile) to ``path`` atomically.

    Args:
        path: destination file (its folder is created if needed).
        model: the PDNet; its ``config`` and ``state_dict()`` (moved to the CPU) are stored.
        extra: more entries for the checkpoint dict (e.g. ``{"epoch": 3, "optimizer": ...}``);
            they may not use the keys in :data:`RESERVED_KEYS`.

    Returns:
        The path written.

    Raises:
        CheckpointError: a tensor holds NaN / inf (nothing is written; the message names
            it), or the write failed (the previous file at ``path`` is left intact).
    """
    net = _unwrap_module(model)
    if not isinstance(net, PDNet):
        raise TypeError(f"save_model_checkpoint: expected a PDNet, got {type(net).__name__}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"save_model_checkpoint: extra may not contain the reserved keys {clash}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": net.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **_to_cpu(extra),
    }
    bad = first_nonfinite(payload)
    if bad is not None:
        raise CheckpointError(f"refusing to write checkpoint {path}: tensor {bad} holds NaN or inf values")
    payload["checksum"] = checksum(payload)
    return atomic_torch_save(payload, path)


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint file's dict on the CPU (``weights_only=True``) and verify it
    (:func:`verify_checkpoint`: its checksum when it has one, no NaN / inf tensors).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        CheckpointError: the file is unreadable, not a torch file, not a dict, damaged
            (checksum mismatch) or holds non-finite tensors.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..); the legacy format (torch < 1.6, some
    # released checkpoints) is a pickle stream, which starts with the PROTO opcode 0x80
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        what = "an empty file" if not head else f"a file starting with {head!r}"
        raise CheckpointError(
            f"checkpoint {path} is not a torch file (neither a zip archive nor a pickle stream: {what}); "
            "it may be truncated or of another format"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a weights-only torch file (it holds Python objects beyond "
            f"tensors and plain containers, or is not a torch file at all): {first}"
        ) from None
    except Exception as exc:  # torch.load fails in many ways on a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
    obj = dict(obj)
    verify_checkpoint(obj, str(path))
    return obj
