"""Helpers of the pdnet.data tests (tests/test_data_*.py): frames of a bright square moving on a
textured background, and DAVIS-layout trees of them (the fixture ``davis`` in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 40, 56


#: On the CPU a uint8 frame's mask is resized as the alpha channel of the frame's uint8
#: RGBA resize (pdnet.data.augment.augment_rgba): torch's kernel uses fixed-point (int16)
#: weights and rounds after each of its two passes, so the mask is a grey level within
#: one level of the float resize, plus the weights' quantisation (measured <= 0.001 level;
#: 1/64 allowed); it is at most one level from the rounded float resize.
MASK_LEVELS = 1.0 + 2**-6


def square_frame(t: int, h: int = H, w: int = W, side: int = 12):
    """A bright square moving right and down on a textured dark background: (RGB, mask)."""
    rng = np.random.default_rng(t)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = 4 + 2 * t, 3 + 5 * t
    img[y : y + side, x : x + side] = (230, 200, 40)
    mask[y : y + side, x : x + side] = 255
    return img, mask


def write_pair(img_path: Path, mask_path: Path, t: int, mask_values=None, palette=False):
    img, mask = square_frame(t)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(img_path, quality=95)
    if mask_values is not None:
        mask = np.where(mask > 0, mask_values, 0).astype(np.uint8)
    m = Image.fromarray(mask, mode="L")
    if palette:
        m = Image.fromarray((mask > 0).astype(np.uint8), mode="P")
        m.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    m.save(mask_path)


def make_davis(root: Path, seqs=("bear", "dog"), frames=3, pair_list=False):
    for s in seqs:
        for t in range(frames):
            write_pair(root / "JPEGImages/480p" / s / f"{t:05d}.jpg", root / "Annotations/480p" / s / f"{t:05d}.png", t)
    if pair_list:
        d = root / "ImageSets/480p"
        d.mkdir(parents=True)
        lines = [
            f"/JPEGImages/480p/{s}/{t:05d}.jpg /Annotations/480p/{s}/{t:05d}.png" for s in seqs for t in range(frames)
        ]
        (d / "train.txt").write_text("\n".join(lines) + "\n")
    else:
        d = root / "ImageSets/2016"
        d.mkdir(parents=True)
        (d / "train.txt").write_text("".join(s + "\n" for s in seqs))
    return root
