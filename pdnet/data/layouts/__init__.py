"""Readers of the on-disk dataset layouts (DESIGN.md section 3).

Each ``scan_*`` function turns a dataset folder and a split into a list of
:class:`Clip` (frames and masks, in time order), checking list consistency on the way:

==============  ===========================================================================
layout          files
==============  ===========================================================================
``davis``       ``JPEGImages/480p/<seq>/<frame>.jpg``, ``Annotations/480p/<seq>/<frame>.png``;
                split lists ``ImageSets/480p/<split>.txt`` ("/JPEGImages/... /Annotations/..."
                pairs, DAVIS-2016), else ``ImageSets/2016/<split>.txt`` or
                ``ImageSets/<split>.txt`` (sequence names, one a line). ``pdnet synth`` writes it.
``mvps``        ``Keyframes/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png``, ``<seq>`` =
                ``category/clip``; split lists ``ImageSets/{train,val}.txt`` (sequence names).
``pphumanseg``  PP-HumanSeg14K: list files ``<split>.txt`` (or the release's ``<split>_new.txt``)
                of "image_path mask_path" lines relative to the root; a frame's sequence is
                its path without the top folder, the extension and the trailing frame number
                (``images/train/vid3_0012.jpg`` -> ``train/vid3``). Masks are label maps
                (0/1 or palette), read with mask mode "nonzero".
``images``      image + mask folders matched by file stem: ``Images``/``Labels`` (EG1800),
                ``img``/``mask`` (SuperviselyPerson, COCO person), ``images``/``masks``,
                ``image``/``mask``; ``root`` is such a dataset folder or a folder of them.
                A ``<split>.txt`` of image names in a dataset folder selects the split; with
                none, every image belongs to every split. Each image is a one-frame clip.
==============  ===========================================================================

List files are not trusted: a path (or sequence name) in a list that leaves the data
root, by ``..`` or through a symbolic link, is refused with a :class:`DataError` naming
the list file and line (:class:`RootGuard`). MVPS sequences are nested
(``category/clip``): a sequence is a folder of frames at any depth, named by its path
relative to ``Keyframes/480p``; a list line naming a category stands for its clips.

Frames are paired with masks by file stem, never by position. Missing list files,
sequences named by a list but absent, empty sequences, lines that do not parse and
frames without a mask raise :class:`DataError` naming the file (or, with
``skip_bad=True``, are dropped with a :class:`DataWarning`).

Modules: :mod:`.clips` (:class:`Clip` and what the readers share), :mod:`.video`
(``davis``, ``mvps``, ``pphumanseg``), :mod:`.images` (``images``), :mod:`.validate`
(:func:`validate_clips`, the main-process file check).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import PathLike, problem
from .clips import Clip, RootGuard
from .images import IMAGE_FOLDER_PAIRS, image_dataset_dirs, scan_image_folders
from .validate import VALIDATE_LEVELS, validate_clips
from .video import scan_davis, scan_mvps, scan_pphumanseg

LAYOUTS = ("davis", "mvps", "pphumanseg", "images")

SCANNERS = {"davis": scan_davis, "mvps": scan_mvps, "pphumanseg": scan_pphumanseg, "images": scan_image_folders}


def detect_layout(root: PathLike) -> str:
    """Guesses the layout of a dataset folder: "davis", "mvps", "pphumanseg" or "images"."""
    root = Path(root)
    if not root.is_dir():
        raise problem(root, "dataset folder not found")
    if (root / "JPEGImages").is_dir():
        return "davis"
    if (root / "Keyframes").is_dir():
        return "mvps"
    if any((root / f"{s}{x}.txt").is_file() for s in ("train", "val", "test") for x in ("", "_new")):
        return "pphumanseg"
    if image_dataset_dirs(root):
        return "images"
    raise problem(root, f"cannot tell the dataset layout (one of {', '.join(LAYOUTS)})")


__all__ = [
    "IMAGE_FOLDER_PAIRS",
    "LAYOUTS",
    "SCANNERS",
    "VALIDATE_LEVELS",
    "Clip",
    "RootGuard",
    "detect_layout",
    "scan_davis",
    "scan_image_folders",
    "scan_mvps",
    "scan_pphumanseg",
    "validate_clips",
]
