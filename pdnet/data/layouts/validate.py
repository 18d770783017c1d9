"""Checking the files of scanned clips in the main process, before any DataLoader
worker starts: each frame and mask exists, and (by level) its header or its pixels read."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, problem, raise_or_warn
from ..io import probe, read_image, read_mask
from .clips import Clip

VALIDATE_LEVELS = ("none", "exists", "header", "full")


def validate_clips(clips: list[Clip], level: str = "header", skip_bad: bool = False) -> list[Clip]:
    """Checks the files of ``clips`` in the calling (main) process.

    Args:
        clips: from a ``scan_*`` function.
        level: "none"; "exists" (every frame and mask is a file); "header" (also: known
            format, not truncated (end marker present), frame and mask sizes equal; reads
            headers and file tails only); "full" (decodes every file).
        skip_bad: drop bad frames (and clips left empty) with a warning instead of raising.

    Returns:
        The clips kept (all of them unless ``skip_bad``), with ``sizes`` filled in
        for levels "header" and "full".

    Raises:
        DataError naming the first bad file; also when no clip is left.
    """
    if level not in VALIDATE_LEVELS:
        raise ValueError(f"validate must be one of {VALIDATE_LEVELS}, got {level!r}")
    if level == "none":
        kept = clips
    else:
        kept = []
        for clip in clips:
            frames, masks, sizes = [], [], []
            for f, m in zip(clip.frames, clip.masks, strict=True):
                try:
                    hw = _check_pair(f, m, level, clip.mask_mode)
                except DataError as exc:
                    raise_or_warn(exc, skip_bad, 3)
                    continue
                frames.append(f)
                masks.append(m)
                sizes.append(hw)
            if not frames:
                raise_or_warn(DataError(f"sequence {clip.name!r}: no usable frames left"), skip_bad, 3)
                continue
            kept.append(
                Clip(clip.name, frames, masks, clip.mask_mode, sizes if level in ("header", "full") else None)
            )
    if not kept:
        raise DataError("no usable samples: every sequence was empty or bad")
    return kept


def _check_pair(frame: Path, mask: Path, level: str, mask_mode: str) -> tuple[int, int] | None:
    if level == "exists":
        for p, what in ((frame, "frame"), (mask, "mask")):
            if not p.is_file():
                raise problem(p, f"{what} file not found")
        return None
    if level == "full":
        hw = tuple(read_image(frame).shape[1:])
        mhw = tuple(read_mask(mask, mask_mode).shape[1:])
    else:
        hw, mhw = probe(frame), probe(mask)
    if hw != mhw:
        raise problem(mask, f"mask is {mhw[1]}x{mhw[0]} (WxH) but its frame {frame} is {hw[1]}x{hw[0]}")
    return hw
