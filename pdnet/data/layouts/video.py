"""The video layouts: DAVIS-2016 (also what ``pdnet synth`` writes), MVPS and
PP-HumanSeg14K (see :mod:`pdnet.data.layouts`)."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import PathLike
from .clips import Clip, clips_from_names, clips_from_pairs, first_existing


def scan_davis(root: PathLike, split: str = "train", skip_bad: bool = False, resolution: str = "480p") -> list[Clip]:
    """DAVIS-2016 layout (also what ``pdnet synth`` writes). See :mod:`pdnet.data.layouts`."""
    root = Path(root)
    image_base = root / "JPEGImages" / resolution
    mask_base = root / "Annotations" / resolution
    pair_list = root / "ImageSets" / resolution / f"{split}.txt"
    if pair_list.is_file():
        return clips_from_pairs(root, pair_list, skip_bad, "auto", _davis_sequence)
    names = first_existing(
        [root / "ImageSets" / "2016" / f"{split}.txt", root / "ImageSets" / f"{split}.txt", pair_list],
        f"DAVIS split list for {split!r}",
    )
    return clips_from_names(root, names, image_base, mask_base, skip_bad)


def _davis_sequence(image_rel: str) -> str:
    parts = Path(image_rel).parts
    return parts[-2] if len(parts) >= 2 else Path(image_rel).stem


def scan_mvps(root: PathLike, split: str = "train", skip_bad: bool = False) -> list[Clip]:
    """MVPS layout. See :mod:`pdnet.data.layouts`."""
    root = Path(root)
    list_file = first_existing([root / "ImageSets" / f"{split}.txt"], f"MVPS split list for {split!r}")
    return clips_from_names(root, list_file, root / "Keyframes" / "480p", root / "Annotations" / "480p", skip_bad)


def _pphumanseg_sequence(image_rel: str) -> str:
    p = Path(image_rel)
    parts = list(p.parent.parts)[1:]  # drop the top folder ("images")
    stem = re.sub(r"[_\-.]?\d+$", "", p.stem)
    if stem:
        parts.append(stem)
    return "/".join(parts) if parts else p.stem


def scan_pphumanseg(
    root: PathLike, split: str = "train", skip_bad: bool = False, list_file: PathLike | None = None
) -> list[Clip]:
    """PP-HumanSeg14K layout. See :mod:`pdnet.data.layouts`."""
    root = Path(root)
    if list_file is None:
        list_file = first_existing(
            [root / f"{split}.txt", root / f"{split}_new.txt"], f"PP-HumanSeg14K list for {split!r}"
        )
    return clips_from_pairs(root, Path(list_file), skip_bad, "nonzero", _pphumanseg_sequence)

