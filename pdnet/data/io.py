"""Reading frames and masks, and the cheap checks run when a dataset is built.

Images decode to ``Tensor[3, H, W]`` uint8 RGB. JPEG files go through
``torchvision.io.decode_jpeg`` (measured faster than Pillow for 480p frames, see
bench/bench_data.py); anything else through Pillow. Masks decode with Pillow (which
keeps palette indices) to ``Tensor[1, H, W]`` uint8 in 0..255. (torchvision's
``decode_png`` is a little faster but, in torchvision 0.29.1, kills the process with a
segmentation fault on a PNG whose pixel data fails its CRC, so it is not used.)

Datasets read a frame and its mask together as one RGBA buffer (:func:`read_rgba`,
``Tensor[H, W, 4]``, the mask as alpha), the layout their augmentation resizes in one
pass. For those, an RGB JPEG is decoded by Pillow, which decodes straight into its own
four-bytes-a-pixel layout so the mask is attached without reshuffling the pixels: that
measured faster than torchvision's decoder plus an interleaving copy (bench/bench_data.py).
Both use libjpeg-turbo and give the same pixels (tested); any other image goes through
:func:`read_image`.

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
    return torch.from_numpy(np.ascontiguousarray(_decode_mask(path, mode), dtype=np.uint8))[None]


def _decode_mask(path: PathLike, mode: str = "auto", as_image: bool = False):
    """The mask of :func:`read_mask` as a ``numpy`` [H, W] uint8 array, or with
    ``as_image`` as a decoded Pillow "L" image (the stored one when it is already grey)."""
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
        if as_image and mode == "auto":
            im = Image.open(io.BytesIO(data))
            if im.mode == "L":
                im.load()
                return im
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
    if as_image:
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L")
    return arr


def read_rgba(image_path: PathLike, mask_path: PathLike, mask_mode: str = "auto") -> torch.Tensor:
    """A frame and its mask as one RGBA buffer: RGB as :func:`read_image`, alpha as
    :func:`read_mask` (``mask_mode``).

    Returns:
        Tensor[H, W, 4] uint8, contiguous (possibly read-only memory: do not write to it).

    Raises:
        DataError: as :func:`read_image` / :func:`read_mask`, or when the mask's size is
        not the frame's (the message names both files).
    """
    data = _read_bytes(image_path)
    if not data:
        raise problem(image_path, "empty file")
    reason = _truncation(image_path, data[:8], data[-_TAIL:])
    if reason:
        raise problem(image_path, reason)
    mask = _decode_mask(mask_path, mask_mode, as_image=True)
    if data.startswith(_JPEG_MAGIC):
        rgba = _pil_jpeg_rgba(data, mask)
        if rgba is not None:
            return rgba
    image = read_image(image_path)  # anything else, and whatever Pillow declined: names the problem
    h, w = image.shape[1:]
    if (w, h) != mask.size:
        raise _size_mismatch(image_path, mask_path, (h, w), mask.size[::-1])
    from .augment import pack_rgba

    return pack_rgba(image, torch.from_numpy(np.asarray(mask).copy())[None])


def _size_mismatch(image_path: PathLike, mask_path: PathLike, frame_hw, mask_hw) -> DataError:
    return problem(
        mask_path,
        f"mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its frame {image_path} is {frame_hw[1]}x{frame_hw[0]}",
    )


def _pil_jpeg_rgba(data: bytes, mask) -> "torch.Tensor | None":
    """Pillow decode of an RGB JPEG with ``mask`` (a Pillow "L" image) as its alpha;
    None when Pillow cannot or the sizes differ (the caller's slow path decides)."""
    import io

    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        if im.mode != "RGB" or im.size != mask.size:
            return None
        im.load()
        im.putalpha(mask)  # RGB is stored four bytes a pixel: the mask fills the fourth
        buf = im.tobytes()
    except Exception:  # noqa: BLE001 - any Pillow failure: read_image decides (and names the file)
        return None
    w, h = im.size
    with warnings.catch_warnings():
        # bytes are read-only; the buffer is only ever read (cropped, resized)
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=torch.uint8).view(h, w, 4)


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
