"""The image layout: image + mask folders matched by file stem (EG1800,
SuperviselyPerson, COCO person; see :mod:`pdnet.data.layouts`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, PathLike, problem, raise_or_warn
from ..io import IMAGE_EXTENSIONS, list_files
from .clips import Clip, RootGuard, pair_by_stem, read_list

#: (image folder, mask folder) names of the image datasets the release trains on
IMAGE_FOLDER_PAIRS = (("Images", "Labels"), ("img", "mask"), ("images", "masks"), ("image", "mask"))


def image_dataset_dirs(root: Path) -> list[tuple[Path, Path, Path]]:
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


def scan_image_folders(root: PathLike, split: str = "train", skip_bad: bool = False) -> list[Clip]:
    """Image + mask folders (EG1800, SuperviselyPerson, COCO person). See :mod:`pdnet.data.layouts`."""
    root = Path(root)
    if not root.is_dir():
        raise problem(root, "dataset folder not found")
    datasets = image_dataset_dirs(root)
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
            for n, line in read_list(split_list):
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
        frames, masks = pair_by_stem(images, mask_dir, skip_bad)
        prefix = ds_dir.name if ds_dir != root else root.name
        clips.extend(Clip(f"{prefix}/{f.stem}", [f], [m]) for f, m in zip(frames, masks, strict=True))
    return clips

