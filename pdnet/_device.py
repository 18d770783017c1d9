"""One reading of a device argument for every command and API (``--device``, ``device=``)."""
from __future__ import annotations

import torch


def parse_device(spec: str | torch.device | None, name: str = "device") -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``.

    Args:
        spec: the value given.
        name: how the value is named in errors (``"--device"`` for a flag).

    Raises:
        ValueError: one line naming the value: not a device, a device type the engine
            does not run on (``meta``, ``cpu:1``...), CUDA unavailable, or a CUDA index
            beyond the visible devices.
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"{name} {spec}: not a device this engine runs on; expected auto, cpu, cuda or cuda:N")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{name} {spec}: CUDA is not available on this machine")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
