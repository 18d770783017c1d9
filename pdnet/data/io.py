"""Reading frames and masks, and the cheap checks run when a dataset is built.

Images decode to ``Tensor[3, H, W]`` uint8 RGB. JPEG files go through
``torchvision.io.decode_jpeg`` (measured faster than Pillow for 480p frames, see
bench/bench_data.py); anything else through Pillow. Masks decode with Pillow (which
keeps palette indices) to ``Tensor[1, H, W]`` uint8 in 0..255 by the rules of
:func:`decode_mask` (0/255 and soft grey as stored, 0/1 scaled to 0/255, palette and
colour-coded RGB: non-zero is person; decided per file), the one mask reader that
``pdnet evaluate`` uses too. (torchvision's
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

import numpy as np
import torch

from .errors import DataError, DataWarning, PathLike, problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_EXTENSIONS = (".png", ".bmp")
#: how masks are turned into 0..255: "auto": the rules of :func:`decode_mask`; "nonzero":
#: every non-zero value (or palette index) is foreground (255), for label maps
#: (PP-HumanSeg14K).
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


def _read_whole(path: PathLike) -> bytes:
    """The bytes of an image file, refusing an empty or visibly truncated one."""
    data = _read_bytes(path)
    if not data:
        raise problem(path, "empty file")
    reason = _truncation(path, data[:8], data[-_TAIL:])
    if reason:
        raise problem(path, reason)
    return data


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
    data = _read_whole(path)
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
    """Decodes a person mask by the rules of :func:`decode_mask`.

    Args:
        path: a PNG (or BMP) file: grey levels, 0/1, palette, 1-bit or RGB.
        mode: "auto" (the rules) or "nonzero" (255 wherever the value or palette index
            is non-zero: label maps).

    Returns:
        Tensor[1, H, W] uint8 in 0..255 (255 = person).

    Raises:
        DataError: missing, unreadable, truncated or undecodable file, or pixel values no
        mask can hold (message names it).
    """
    return torch.from_numpy(decode_mask(path, mode))[None]


#: a grey mask whose largest value is 1 < max < SOFT_MIN fits no rule (warned)
SOFT_MIN = 16
#: more distinct colours than this in a coloured RGB mask: a photo, not a mask (warned)
MAX_MASK_COLOURS = 256
_NONZERO_LUT = [0] + [255] * 255


def decode_mask(path: PathLike, mode: str = "auto", as_image: bool = False):
    """The one mask reader (training and ``pdnet evaluate``); the rules, decided per file
    from that file's values only:

    - 8-bit grey (``L``; ``LA``: its grey channel): values all 0 or 1: a 0/1 mask, scaled
      to 0/255; otherwise kept as stored (0/255 binary and soft 0..255 masks alike). A
      largest value of 2..15 fits no rule (a soft mask never reaching 16/255, or a label
      map): kept as stored, with a :class:`DataWarning` naming the file.
    - palette (``P``, as DAVIS): 255 where the index is non-zero; 1-bit: 255 where set.
    - RGB / RGBA (alpha ignored): channels equal everywhere: the grey rules on them;
      coloured: a colour-coded label image, 255 wherever any channel is non-zero (black is
      background, as in the DAVIS palette); over 256 distinct colours (a photo) fits no
      rule: read the same way, with a :class:`DataWarning`.
    - 16/32-bit grey (``I;16``, ``I``, ``F``): integer values within 0..255 follow the
      grey rules; other values are refused.
    - ``mode="nonzero"`` (label maps, PP-HumanSeg14K): 255 wherever the value or the
      palette index is non-zero, whatever the file.

    Args:
        path: the mask file.
        mode: "auto" (the rules) or "nonzero".
        as_image: return a Pillow "L" image instead of an array (the stored image itself
            when nothing changes: the fast path of :func:`read_rgba`).

    Returns:
        ndarray[H, W] uint8 (writable, contiguous) on the 0..255 scale, or a Pillow image.

    Raises:
        DataError naming the file: missing, unreadable, truncated, undecodable, or values
        no mask can hold.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"read_mask: mode must be one of {MASK_MODES}, got {mode!r}")
    import io

    from PIL import Image, UnidentifiedImageError

    data = _read_whole(path)
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError:
        raise problem(path, "not an image file (unknown format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise problem(path, f"cannot decode mask ({exc})") from None
    if im.mode == "LA":
        im = im.getchannel(0)
    if im.mode == "L":  # the common case, kept as a Pillow image (no copy unless rescaled)
        if mode == "auto" and _probe_max(im) >= SOFT_MIN:  # 0/255 or soft: kept as stored
            return im if as_image else np.array(im)
        lo, hi = im.getextrema()
        if hi > 0 and (mode == "nonzero" or hi <= 1):
            im = im.point(_NONZERO_LUT)
        elif 1 < hi < SOFT_MIN and mode == "auto":
            _warn_no_rule(path, f"grey values {lo}..{hi}")
        return im if as_image else np.array(im)
    arr = _mask_array(im, path, mode)
    if as_image:
        return Image.fromarray(arr)
    return arr


def _probe_max(im) -> int:
    """A lower bound of the largest value of an "L" image from one pixel in 16 x 16
    (nearest-neighbour subsample: 1/16 of the time of a full scan at 480p): enough to
    tell a 0/255 or soft mask that shows a person from the files the rules rescale."""
    w, h = im.size
    if w < 64 or h < 64:
        return im.getextrema()[1]
    return im.resize((w // 16, h // 16), 0).getextrema()[1]  # 0: Image.NEAREST


def _warn_no_rule(path: PathLike, what: str) -> None:
    warnings.warn(
        f"{path}: mask {what} fit no mask rule (0/255 or 0/1 binary, soft 0..255 reaching "
        f"{SOFT_MIN}, palette, grey or colour-coded RGB); read as documented in pdnet.data.io.decode_mask",
        DataWarning,
        stacklevel=4,
    )


def _binary(a: np.ndarray) -> np.ndarray:
    return np.where(a != 0, np.uint8(255), np.uint8(0))


def _grey_rules(a: np.ndarray, path: PathLike) -> np.ndarray:
    """The 8-bit grey rules on a uint8 [H, W] array."""
    hi = int(a.max()) if a.size else 0
    if hi == 1:
        return _binary(a)
    if 1 < hi < SOFT_MIN:
        _warn_no_rule(path, f"grey values {int(a.min())}..{hi}")
    return np.ascontiguousarray(a)


def _mask_array(im, path: PathLike, mode: str) -> np.ndarray:
    """Modes other than "L" / "LA": the rules of :func:`decode_mask` on a loaded image."""
    m = im.mode
    if m in ("P", "PA"):
        a = np.asarray(im if m == "P" else im.getchannel(0))
        return _binary(a)
    if m == "1":
        return _binary(np.asarray(im))
    if m in ("RGB", "RGBA", "RGBX"):
        a = np.asarray(im)[..., :3]
        r, g, b = a[..., 0], a[..., 1], a[..., 2]
        if mode == "auto" and np.array_equal(r, g) and np.array_equal(g, b):
            return _grey_rules(r, path)
        if mode == "auto":
            packed = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
            n = np.unique(packed).size
            if n > MAX_MASK_COLOURS:
                _warn_no_rule(path, f"colours ({n} distinct: a photo?)")
        return _binary(a.max(axis=-1))
    if m in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im)
        if mode == "nonzero":
            return _binary(a)
        lo, hi = (a.min(), a.max()) if a.size else (0, 0)
        if lo < 0 or hi > 255 or (m == "F" and not np.array_equal(a, np.round(a))):
            raise problem(
                path,
                f"unsupported {im.format or 'image'} mode {m!r} for a mask: values {lo:g}..{hi:g} "
                "(a mask is 8-bit grey, 0/1, RGB or palette)",
            )
        return _grey_rules(a.astype(np.uint8), path)
    raise problem(path, f"unsupported {im.format or 'image'} mode {m!r} for a mask (use 8-bit grey, RGB or palette)")


def read_rgba(image_path: PathLike, mask_path: PathLike, mask_mode: str = "auto") -> torch.Tensor:
    """A frame and its mask as one RGBA buffer: RGB as :func:`read_image`, alpha as
    :func:`read_mask` (``mask_mode``).

    Returns:
        Tensor[H, W, 4] uint8, contiguous (possibly read-only memory: do not write to it).

    Raises:
        DataError: as :func:`read_image` / :func:`read_mask`, or when the mask's size is
        not the frame's (the message names both files).
    """
    data = _read_whole(image_path)
    mask = decode_mask(mask_path, mask_mode, as_image=True)
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


def _pil_jpeg_rgba(data: bytes, mask) -> torch.Tensor | None:
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


def probe(path: PathLike) -> tuple[int, int]:
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


def list_files(folder: Path, extensions: tuple[str, ...]) -> list:
    """Sorted files of ``folder`` whose lower-cased suffix is in ``extensions`` (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file()
    )
