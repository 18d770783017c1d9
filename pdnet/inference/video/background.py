"""The ``--composite`` background: an image file or a colour, at the frame size."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .source import IMAGE_EXTENSIONS, PathLike, SourceError

if TYPE_CHECKING:  # torch is imported by background() itself: checking a --composite value does not need it
    import torch

_COLOURS = {
    "green": (0, 177, 64),  # chroma-key green
    "blue": (0, 71, 187),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "red": (255, 0, 0),
}


def parse_colour(text: str) -> tuple[int, int, int] | None:
    """``"green"``, ``"#00b140"``, ``"0,177,64"`` -> (R, G, B); None when ``text`` is not a colour."""
    s = text.strip().lower()
    if s in _COLOURS:
        return _COLOURS[s]
    if s.startswith("#") and len(s) == 7:
        try:
            return tuple(int(s[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            return None
    parts = s.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and 0 <= int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    return None


def background_array(spec: str | PathLike | tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The composite background at the frame size as a numpy uint8 array [H, W, 3] (see :func:`background`)."""
    H, W = size
    if isinstance(spec, tuple):
        colour = spec
    else:
        if not str(spec).strip():
            raise SourceError("the composite background is empty (an image file or a colour)")
        path = Path(spec)
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.exists():
            raise SourceError(f"{path}: no such background image file")
        if path.is_file():
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as im:
                    return np.array(im.convert("RGB").resize((W, H), Image.BILINEAR), dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise SourceError(f"{path}: cannot read the background image ({exc})") from None
        colour = parse_colour(str(spec))
        if colour is None:
            raise SourceError(
                f"composite background {str(spec)!r} is neither an existing image file nor a colour "
                f"({', '.join(sorted(_COLOURS))}, #rrggbb or R,G,B)"
            )
    if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
        raise SourceError(f"composite colour must be three values in 0..255, got {colour}")
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (H, W, 3)).copy()


def background(spec: str | PathLike | tuple[int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """The composite background at the frame size: Tensor[3, H, W] uint8.

    Args:
        spec: an image file (resized to the frame, bilinear), a colour name
            (``green``, ``blue``, ``black``, ``white``, ``grey``, ``red``), ``#rrggbb``,
            ``R,G,B`` or an (R, G, B) tuple.
        size: (H, W) of the frames.

    Raises:
        SourceError: naming a missing or unreadable image, or a value that is no colour.
    """
    import torch

    return torch.from_numpy(background_array(spec, size)).permute(2, 0, 1).contiguous()
