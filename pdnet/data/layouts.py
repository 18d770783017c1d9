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
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import DataError, PathLike, problem, raise_or_warn
from .io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, list_files, probe, read_image, read_mask

LAYOUTS = ("davis", "mvps", "pphumanseg", "images")
VALIDATE_LEVELS = ("none", "exists", "header", "full")

#: (image folder, mask folder) names of the image datasets the release trains on
IMAGE_FOLDER_PAIRS = (("Images", "Labels"), ("img", "mask"), ("images", "masks"), ("image", "mask"))


@dataclass
class Clip:
    """One sequence: frames and their masks in time order (``frames[0]`` is the reference).

    Attributes:
        name: sequence name ("bear", "category/clip", "EG1800/00012").
        frames: image files, in time order.
        masks: mask files, ``masks[i]`` belongs to ``frames[i]``.
        mask_mode: how ``read_mask`` interprets the masks ("auto" or "nonzero").
    """

    name: str
    frames: List[Path]
    masks: List[Path]
    mask_mode: str = "auto"
    sizes: Optional[List[Tuple[int, int]]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frames)


# --------------------------------------------------------------------------- helpers


def _read_list(path: Path) -> List[Tuple[int, str]]:
    """Non-empty, non-comment lines of a list file as (line number, stripped text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise problem(path, "list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(path, f"cannot read list file ({exc})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((n, line))
    return out


def _first_existing(paths: Sequence[Path], what: str) -> Path:
    for p in paths:
        if p.is_file():
            return p
    raise DataError(f"{paths[0]}: {what} not found (looked for {', '.join(str(p) for p in paths)})", path=paths[0])


def _pair_by_stem(
    frames: Iterable[Path], mask_dir: Path, skip_bad: bool
) -> Tuple[List[Path], List[Path]]:
    """Frames and their masks (same stem, a mask extension, in ``mask_dir``)."""
    masks_by_stem: Dict[str, Path] = {}
    if mask_dir.is_dir():
        for m in list_files(mask_dir, MASK_EXTENSIONS):
            masks_by_stem.setdefault(m.stem, m)
    out_f, out_m = [], []
    for f in frames:
        m = masks_by_stem.get(f.stem)
        if m is None:
            raise_or_warn(problem(f, f"frame has no mask (expected {mask_dir / (f.stem + '.png')})"), skip_bad, 4)
            continue
        out_f.append(f)
        out_m.append(m)
    return out_f, out_m


def _clip_from_folders(name: str, image_dir: Path, mask_dir: Path, skip_bad: bool, mask_mode: str) -> Optional[Clip]:
    frames = list_files(image_dir, IMAGE_EXTENSIONS)
    if not frames:
        raise_or_warn(problem(image_dir, f"empty sequence {name!r} (no frames)"), skip_bad, 4)
        return None
    frames, masks = _pair_by_stem(frames, mask_dir, skip_bad)
    if not frames:
        raise_or_warn(problem(image_dir, f"sequence {name!r} has no annotated frames"), skip_bad, 4)
        return None
    return Clip(name, frames, masks, mask_mode)


class RootGuard:
    """Resolves the paths a list file names, refusing any that leave the data root.

    A path is relative to the root (a leading ``/`` too: DAVIS lists write
    ``/JPEGImages/...``). Refused, with a :class:`DataError` naming the list file and the
    line (whatever ``skip_bad`` says: such a list is not to be trusted): a path that
    climbs out with ``..``, and one that a symbolic link inside the root sends outside it
    (the root itself may be a link). Folders are resolved once each, so checking a list
    of thousands of frames costs one ``lstat`` a line.
    """

    def __init__(self, root: Path, list_file: Path):
        self.root = Path(root)
        self.real = os.path.realpath(self.root)
        self.list_file = list_file
        self._dirs: Dict[str, str] = {}

    def path(self, rel: str, n: int, entry: Optional[str] = None) -> Path:
        """``root / rel`` (normalised), after checking that it stays inside the root;
        ``entry``: the list's text for it, as the error quotes it (default ``rel``)."""
        entry = rel if entry is None else entry
        norm = os.path.normpath(rel.lstrip("/"))
        if norm == os.pardir or norm.startswith(os.pardir + os.sep) or os.path.isabs(norm):
            raise self._leaves(entry, n, "climbs out of it")
        parent, base = os.path.split(norm)
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = self._dirs[parent] = os.path.realpath(self.root / parent)
        real = os.path.join(real_parent, base)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if real != self.real and not real.startswith(self.real.rstrip(os.sep) + os.sep):
            raise self._leaves(entry, n, f"a symbolic link sends it to {real}")
        return self.root / norm

    def _leaves(self, rel: str, n: int, how: str) -> DataError:
        return DataError(
            f"{self.list_file}:{n}: path {rel!r} leaves the data root {self.root} ({how}); refused",
            path=self.list_file,
        )


def _nested_sequences(folder: Path) -> List[str]:
    """Paths (relative to ``folder``, with ``/``) of the folders under it that hold
    frames, at any depth (hidden folders skipped; links to folders followed, each folder
    once: the caller checks where they lead)."""
    found, seen = [], {os.path.realpath(folder)}
    for here, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(here, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        if Path(here) != folder and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            found.append(Path(here).relative_to(folder).as_posix())
    return found


def _clips_from_names(
    root: Path, list_file: Path, image_base: Path, mask_base: Path, skip_bad: bool, mask_mode: str = "auto"
) -> List[Clip]:
    """Clips of the sequences a list names, one a line. A sequence is a folder of frames
    at any depth under ``image_base`` ("bear", "category/clip"); a line naming a folder
    that holds no frames but folders of them (an MVPS category) stands for all of them."""
    clips = []
    seen = set()
    guard = RootGuard(root, list_file)
    image_rel, mask_rel = image_base.relative_to(root).as_posix(), mask_base.relative_to(root).as_posix()
    for n, line in _read_list(list_file):
        entry = line.split()[0]
        name = entry.strip("/")
        image_dir = guard.path(f"{image_rel}/{name}", n, entry)
        guard.path(f"{mask_rel}/{name}", n, entry)
        name = image_dir.relative_to(image_base).as_posix()
        if name in seen:
            continue
        seen.add(name)
        if not image_dir.is_dir():
            raise_or_warn(
                DataError(f"{list_file}:{n}: sequence {name!r} not found (no folder {image_dir})", path=list_file),
                skip_bad,
                3,
            )
            continue
        names = [name]
        if not list_files(image_dir, IMAGE_EXTENSIONS):
            nested = _nested_sequences(image_dir)
            if nested:
                names = [f"{name}/{sub}" for sub in nested if f"{name}/{sub}" not in seen]
                seen.update(names)
                for seq in names:  # a link inside the category must not lead out of the root
                    guard.path(f"{image_rel}/{seq}", n, entry)
                    guard.path(f"{mask_rel}/{seq}", n, entry)
        for seq in names:
            clip = _clip_from_folders(seq, image_base / seq, mask_base / seq, skip_bad, mask_mode)
            if clip is not None:
                clips.append(clip)
    return clips


def _frame_sort_key(path: Path):
    """Sort key putting frame files in time order: by trailing number, then by name."""
    m = re.search(r"(\d+)$", path.stem)
    return (int(m.group(1)) if m else -1, path.name)


# --------------------------------------------------------------------------- layouts


def scan_davis(root: PathLike, split: str = "train", skip_bad: bool = False, resolution: str = "480p") -> List[Clip]:
    """DAVIS-2016 layout (also what ``pdnet synth`` writes). See the module docstring."""
    root = Path(root)
    image_base = root / "JPEGImages" / resolution
    mask_base = root / "Annotations" / resolution
    pair_list = root / "ImageSets" / resolution / f"{split}.txt"
    if pair_list.is_file():
        return _clips_from_pairs(root, pair_list, skip_bad, "auto", _davis_sequence)
    names = _first_existing(
        [root / "ImageSets" / "2016" / f"{split}.txt", root / "ImageSets" / f"{split}.txt", pair_list],
        f"DAVIS split list for {split!r}",
    )
    return _clips_from_names(root, names, image_base, mask_base, skip_bad)


def _davis_sequence(image_rel: str) -> str:
    parts = Path(image_rel).parts
    return parts[-2] if len(parts) >= 2 else Path(image_rel).stem


def scan_mvps(root: PathLike, split: str = "train", skip_bad: bool = False) -> List[Clip]:
    """MVPS layout. See the module docstring."""
    root = Path(root)
    list_file = _first_existing([root / "ImageSets" / f"{split}.txt"], f"MVPS split list for {split!r}")
    return _clips_from_names(root, list_file, root / "Keyframes" / "480p", root / "Annotations" / "480p", skip_bad)


def _pphumanseg_sequence(image_rel: str) -> str:
    p = Path(image_rel)
    parts = list(p.parent.parts)[1:]  # drop the top folder ("images")
    stem = re.sub(r"[_\-.]?\d+$", "", p.stem)
    if stem:
        parts.append(stem)
    return "/".join(parts) if parts else p.stem


def _clips_from_pairs(root: Path, list_file: Path, skip_bad: bool, mask_mode: str, sequence_of) -> List[Clip]:
    """Clips from a list of "image mask" lines (paths relative to root, leading '/' allowed)."""
    groups: Dict[str, List[Tuple[Path, Path]]] = {}
    guard = RootGuard(root, list_file)
    for n, line in _read_list(list_file):
        fields = line.split()
        if len(fields) != 2:
            raise_or_warn(
                DataError(
                    f"{list_file}:{n}: expected 'image_path mask_path', got {line!r}"
                    + (" (a frame without its mask)" if len(fields) == 1 else ""),
                    path=list_file,
                ),
                skip_bad,
                3,
            )
            continue
        image, mask = (guard.path(f, n) for f in fields)
        groups.setdefault(sequence_of(fields[0].lstrip("/")), []).append((image, mask))
    if not groups:
        raise DataError(f"{list_file}: list names no frames", path=list_file)
    clips = []
    for name in sorted(groups):
        pairs = sorted(groups[name], key=lambda fm: _frame_sort_key(fm[0]))
        clips.append(Clip(name, [f for f, _ in pairs], [m for _, m in pairs], mask_mode))
    return clips


def scan_pphumanseg(
    root: PathLike, split: str = "train", skip_bad: bool = False, list_file: Optional[PathLike] = None
) -> List[Clip]:
    """PP-HumanSeg14K layout. See the module docstring."""
    root = Path(root)
    if list_file is None:
        list_file = _first_existing(
            [root / f"{split}.txt", root / f"{split}_new.txt"], f"PP-HumanSeg14K list for {split!r}"
        )
    return _clips_from_pairs(root, Path(list_file), skip_bad, "nonzero", _pphumanseg_sequence)


def _image_dataset_dirs(root: Path) -> List[Tuple[Path, Path, Path]]:
    """(dataset dir, image dir, mask dir) for root itself or each sub-folder of it."""
    def pairs_in(d: Path):
        for img, msk in IMAGE_FOLDER_PAIRS:
            if (d / img).is_dir() and (d / msk).is_dir():
                return d, d / img, d / msk
        return None

    own = pairs_in(root)
    if own:
        return [own]
    found = [p for p in (pairs_in(d) for d in sorted(root.iterdir()) if d.is_dir()) if p]
    return found


def scan_image_folders(root: PathLike, split: str = "train", skip_bad: bool = False) -> List[Clip]:
    """Image + mask folders (EG1800, SuperviselyPerson, COCO person). See the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise problem(root, "dataset folder not found")
    datasets = _image_dataset_dirs(root)
    if not datasets:
        names = ", ".join(f"{i}/+{m}/" for i, m in IMAGE_FOLDER_PAIRS)
        raise problem(root, f"no image + mask folders found (looked for {names}, here or one level down)")
    clips = []
    for ds_dir, image_dir, mask_dir in datasets:
        images = list_files(image_dir, IMAGE_EXTENSIONS)
        split_list = ds_dir / f"{split}.txt"
        if split_list.is_file():
            by_stem = {p.stem: p for p in images}
            chosen = []
            guard = RootGuard(image_dir, split_list)
            for n, line in _read_list(split_list):
                guard.path(line.split()[0], n)
                stem = Path(line.split()[0]).stem
                if stem not in by_stem:
                    raise_or_warn(
                        DataError(f"{split_list}:{n}: image {line!r} not found in {image_dir}", path=split_list),
                        skip_bad,
                        3,
                    )
                    continue
                chosen.append(by_stem[stem])
            images = chosen
        if not images:
            raise_or_warn(problem(image_dir, "no images"), skip_bad, 3)
            continue
        frames, masks = _pair_by_stem(images, mask_dir, skip_bad)
        prefix = ds_dir.name if ds_dir != root else root.name
        clips.extend(Clip(f"{prefix}/{f.stem}", [f], [m]) for f, m in zip(frames, masks))
    return clips


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
    if _image_dataset_dirs(root):
        return "images"
    raise problem(root, f"cannot tell the dataset layout (one of {', '.join(LAYOUTS)})")


# --------------------------------------------------------------------------- validation


def validate_clips(clips: List[Clip], level: str = "header", skip_bad: bool = False) -> List[Clip]:
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
            for f, m in zip(clip.frames, clip.masks):
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


def _check_pair(frame: Path, mask: Path, level: str, mask_mode: str) -> Optional[Tuple[int, int]]:
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
