"""Reading frames and masks, and the cheap checks run when a dataset is built.

Images decode to ``Tensor[3, H, W]`` uint8 RGB. JPEG files go through
``torchvision.io.decode_jpeg`` (measured faster than Pillow for 480p frames, see
bench/bench_data.py); anything else through Pillow. Masks decode with Pillow (which
keeps palette indices) to ``Tensor[1, H, W]`` uint8 in 0..255. (torchvision's
``decode_png`` is a little faster but, in torchvision 0.29.1, kills the process with a
segmentation fault on a PNG whose pixel data fails its CRC, so it is not used.)

Any failure is raised as :class:`~pdnet.data.errors.DataError` naming the file.
"""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from .errors import DataError, PathLike, problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_EXTENSIONS = (".png", ".bmp")
#: how masks are turned into 0..255: "auto" keeps grey levels (palette images: index != 0
#: is foreground); "nonzero": every non-zero value (or palette index) is foreground (255),
#: for label maps stored as 0/1 (PP-HumanSeg14K).
MASK_MODES = ("auto", "nonzero")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_TAIL = 1024  # bytes inspected at the end of a file for its end marker


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise problem(path, "file not found") from None
    except OSError as exc:
        raise problem(path, f"cannot read file ({exc.strerror or exc})") from None


def _truncation(path: PathLike, head: bytes, tail: bytes) -> str:
    """Returns why a JPEG/PNG file looks truncated from its first/last bytes, or ''."""
    if head.startswith(_JPEG_MAGIC) and _JPEG_END not in tail:
        return "truncated JPEG file (no end-of-image marker)"
    if head.startswith(_PNG_MAGIC) and _PNG_END not in tail:
        return "truncated PNG file (no IEND chunk)"
    return ""


def read_image(path: PathLike) -> torch.Tensor:
    """Decodes an RGB image.

    Args:
        path: a JPEG, PNG, BMP or WebP file (grey and CMYK images are converted to RGB).

    Returns:
        Tensor[3, H, W] uint8.

    Raises:
        DataError: missing, unreadable, truncated or undecodable file (message names it).
    """
    data = _read_bytes(path)
    if not data:
        raise problem(path, "empty file")
    reason = _truncation(path, data[:8], data[-_TAIL:])
    if reason:
        raise problem(path, reason)
    if data.startswith(_JPEG_MAGIC) and _tv_decode_jpeg() is not None:
        decode, rgb = _tv_decode_jpeg()
        try:
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its image codecs (in favour of TorchCodec);
                # they remain the fastest JPEG decoder here, with Pillow as the fallback
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=rgb)
        except RuntimeError:
            pass  # unusual JPEG flavours (e.g. some CMYK files): let Pillow try
    return _pil_rgb(path, data)


@lru_cache(maxsize=1)
def _tv_decode_jpeg():
    """(torchvision.io.decode_jpeg, ImageReadMode.RGB), or None where unavailable."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return decode_jpeg, ImageReadMode.RGB


def _pil_rgb(path: PathLike, data: bytes) -> torch.Tensor:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise problem(path, "not an image file (unknown format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise problem(path, f"cannot decode image ({exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_mask(path: PathLike, mode: str = "auto") -> torch.Tensor:
    """Decodes a person mask.

    Args:
        path: a PNG (or BMP) file, grey levels, palette indices, binary or RGB.
        mode: "auto": grey values as stored (RGB converted to grey), palette images
            foreground where the index is non-zero; "nonzero": foreground (255) wherever
            the value or palette index is non-zero (label maps stored as 0/1).

    Returns:
        Tensor[1, H, W] uint8 in 0..255 (255 = person).

    Raises:
        DataError: missing, unreadable, truncated or undecodable file (message names it).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"read_mask: mode must be one of {MASK_MODES}, got {mode!r}")
    import io

    from PIL import Image, UnidentifiedImageError

    data = _read_bytes(path)
    if not data:
        raise problem(path, "empty file")
    reason = _truncation(path, data[:8], data[-_TAIL:])
    if reason:
        raise problem(path, reason)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "P":
                arr = (np.asarray(im) != 0).astype(np.uint8) * 255
            elif im.mode == "1":
                arr = np.asarray(im).astype(np.uint8) * 255
            elif im.mode in ("I", "I;16", "I;16B", "F"):
                arr = np.asarray(im)
                if mode == "auto":
                    raise problem(path, f"mask has {im.mode} pixels; use mask mode 'nonzero' for label maps")
            else:
                arr = np.array(im if im.mode == "L" else im.convert("L"))
    except DataError:
        raise
    except UnidentifiedImageError:
        raise problem(path, "not an image file (unknown format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise problem(path, f"cannot decode mask ({exc})") from None
    if mode == "nonzero":
        arr = (arr != 0).astype(np.uint8) * 255
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))[None]


def probe(path: PathLike) -> Tuple[int, int]:
    """Cheap check of an image file: exists, readable, known format, not truncated.

    Reads the header and the last bytes only (no decoding).

    Returns:
        (H, W) of the image.

    Raises:
        DataError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        raise problem(path, "file not found") from None
    except OSError as exc:
        raise problem(path, f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise problem(path, "empty file")
    reason = _truncation(path, head, tail)
    if reason:
        raise problem(path, reason)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except UnidentifiedImageError:
        raise problem(path, "not an image file (unknown format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise problem(path, f"cannot read image header ({exc})") from None
    return h, w


def list_files(folder: Path, extensions: Tuple[str, ...]) -> list:
    """Sorted files of ``folder`` whose lower-cased suffix is in ``extensions`` (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file()
    )
