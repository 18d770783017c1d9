"""Reading mask PNGs and folders of sequences for evaluation, with one-line errors.

Layout: ``ROOT/<sequence>/<frame>.png``, where a sequence is any folder holding PNG
frames, at any depth, named by its path relative to ``ROOT`` with ``/`` (MVPS:
``category/clip``). Frames are ordered naturally (``2.png`` before ``10.png``). A PNG
becomes a uint8 (H, W) array on the 0..255 scale by the one mask reader that training
uses too, :func:`pdnet.data.io.decode_mask`, decided per file:

- 8-bit grey: 0/255 and soft 0..255 masks as stored; a file of only 0 and 1 is a 0/1
  mask (scaled to 0/255); a largest value of 2..15 fits no rule (read as stored, with a
  :class:`pdnet.data.DataWarning` naming the file);
- palette and 1-bit: 255 where the index / bit is non-zero;
- RGB / RGBA: equal channels follow the grey rules; a coloured file is a colour-coded
  label image, 255 wherever any channel is non-zero;
- 16-bit or float files with values beyond 0..255 (and CMYK ...) are refused.

Every problem raises :class:`EvaluationError` with one line naming the file (or
folder) and the problem. Truncated files are detected: Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off while reading.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class EvaluationError(ValueError):
    """Bad evaluation input (a missing, unreadable or mismatched file or folder)."""


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str):
    """Sort key comparing digit runs as numbers: '2.png' < '10.png'."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in _DIGITS.split(name) if tok != ""]


def sequence_dirs(root: Path, what: str) -> list[str]:
    """The sequences under ``root``, naturally sorted: every folder that holds ``.png``
    frames, at any depth, named by its path relative to ``root`` ("bear",
    "cat0/clip3"), plus every folder without sub-folders (a sequence, empty when it
    holds no PNG: reported when it is read). Hidden folders are skipped; symbolic links to folders are
    followed, each folder visited once."""
    root = Path(root)
    if not root.exists():
        raise EvaluationError(f"{what} folder {root} does not exist")
    if not root.is_dir():
        raise EvaluationError(f"{what} path {root} is not a folder")
    names, seen = [], {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, onerror=_walk_error, followlinks=True):
        has_dirs, keep = bool(dirs), []
        for d in dirs:  # hidden folders skipped; a linked folder is visited once (no cycles)
            real = os.path.realpath(os.path.join(folder, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        if Path(folder) == root:
            continue
        if not has_dirs or any(f.lower().endswith(".png") for f in files):
            names.append(Path(folder).relative_to(root).as_posix())
    names.sort(key=natural_key)
    if not names:
        has_png = any(p.suffix.lower() == ".png" for p in root.iterdir())
        hint = " (it holds PNGs directly: put them in a sub-folder per sequence)" if has_png else ""
        raise EvaluationError(f"{what} folder {root} is empty: expected <sequence>/<frame>.png{hint}")
    return names


def _walk_error(exc: OSError) -> None:
    raise EvaluationError(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")


def frame_names(folder: Path) -> list[str]:
    """PNG file names in ``folder``, naturally sorted; an error when there is none."""
    pngs = (p.name for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file())
    names = sorted(pngs, key=natural_key)
    if not names:
        raise EvaluationError(f"{folder} is empty: no .png frames")
    return names


@contextlib.contextmanager
def strict_pillow() -> Iterator[None]:
    """Pillow raises on truncated images while inside (LOAD_TRUNCATED_IMAGES off)."""
    from PIL import ImageFile

    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def read_mask(path: Path) -> np.ndarray:
    """One mask PNG -> uint8 (H, W) on the 0..255 scale, by
    :func:`pdnet.data.io.decode_mask` (see the module docstring)."""
    from ..data.errors import DataError
    from ..data.io import decode_mask

    try:
        return decode_mask(path)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
