"""Reading mask PNGs and folders of sequences for evaluation, with one-line errors.

Layout: ``ROOT/<sequence>/<frame>.png``. Frames are ordered naturally (``2.png`` before
``10.png``). A PNG becomes a uint8 (H, W) array on the 0..255 scale:

- 8-bit grayscale (``L``, ``LA``): the gray value;
- RGB / RGBA: the largest of R, G, B (so both gray masks saved as colour and the DAVIS
  palette colours count as foreground);
- palette (``P``) and 1-bit (``1``): label images: 255 where the index / bit is
  non-zero, else 0;
- anything else (16-bit, float, CMYK ...) is refused.

Every problem raises :class:`EvaluationError` with one line naming the file (or
folder) and the problem. Truncated files are detected: Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off while reading.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator, List

import numpy as np


class EvaluationError(ValueError):
    """Bad evaluation input (a missing, unreadable or mismatched file or folder)."""


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str):
    """Sort key comparing digit runs as numbers: '2.png' < '10.png'."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in _DIGITS.split(name) if tok != ""]


def sequence_dirs(root: Path, what: str) -> List[str]:
    """Names of the sub-folders of ``root`` (sequences), naturally sorted."""
    root = Path(root)
    if not root.exists():
        raise EvaluationError(f"{what} folder {root} does not exist")
    if not root.is_dir():
        raise EvaluationError(f"{what} path {root} is not a folder")
    names = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if not names:
        has_png = any(p.suffix.lower() == ".png" for p in root.iterdir())
        hint = " (it holds PNGs directly: put them in a sub-folder per sequence)" if has_png else ""
        raise EvaluationError(f"{what} folder {root} is empty: expected <sequence>/<frame>.png{hint}")
    return names


def frame_names(folder: Path) -> List[str]:
    """PNG file names in ``folder``, naturally sorted; an error when there is none."""
    names = sorted((p.name for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file()), key=natural_key)
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
    """One mask PNG -> uint8 (H, W) on the 0..255 scale (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "RGB", "RGBA", "LA", "P", "1"):
                a = np.asarray(im)
            else:
                raise EvaluationError(f"{path}: unsupported PNG mode {mode!r} (use 8-bit gray, RGB or palette)")
    except EvaluationError:
        raise
    except FileNotFoundError:
        raise EvaluationError(f"{path}: file not found") from None
    except (UnidentifiedImageError, SyntaxError) as exc:
        raise EvaluationError(f"{path}: not a readable PNG ({exc})") from None
    except (OSError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        raise EvaluationError(f"{path}: unreadable or truncated PNG ({msg})") from None
    if mode in ("RGB", "RGBA"):
        return a[..., :3].max(axis=-1)
    if mode == "LA":
        return np.ascontiguousarray(a[..., 0])
    if mode in ("P", "1"):
        return np.where(a != 0, np.uint8(255), np.uint8(0))
    return a
