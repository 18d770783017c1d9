"""What list files name: MVPS nested sequences (a category stands for its clips) in the data
sets, the evaluation and the trainer; list paths that try to leave the data root are refused."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from data_hardening_helpers import _box, _davis, _frame, _save
from PIL import Image

from pdnet.data import DataError, build_dataset
from pdnet.evaluation import evaluate

# ------------------------------------------------------ MVPS nested sequences


MVPS_SEQS = ("cat0/clip0", "cat0/clip1", "cat1/clip0")


def make_mvps(root: Path, frames: int = 4) -> Path:
    """A tiny MVPS tree: Keyframes/480p/<category>/<clip>/*.jpg, Annotations/480p/... (0/255)."""
    for s in MVPS_SEQS:
        for t in range(frames):
            _frame(root / "Keyframes/480p" / s / f"{t:04d}.jpg", t)
            _save(root / "Annotations/480p" / s / f"{t:04d}.png", Image.fromarray((_box(t) * 255).astype(np.uint8)))
    (root / "ImageSets").mkdir(parents=True)
    (root / "ImageSets/train.txt").write_text("cat0\ncat1/clip0\n")  # a category stands for its clips
    (root / "ImageSets/val.txt").write_text("cat1/clip0\n")
    return root


def test_mvps_dataset_nested(tmp_path):
    root = make_mvps(tmp_path / "MVPS")
    ds = build_dataset("auto", root, "train", size=16)
    assert ds.sequences == list(MVPS_SEQS) and len(ds) == 12
    s = ds[5]
    assert s["sequence"] == "cat0/clip1" and s["frame"] == "0001"
    assert build_dataset("mvps", root, "val", size=16).sequences == ["cat1/clip0"]


def test_evaluate_mvps_nested(tmp_path, capsys):
    """``pdnet evaluate --protocol mvps`` on the MVPS layout: sequences are the folders
    holding frames, at any depth, named by their relative path; predictions mirror them."""
    from pdnet.cli import main

    root = make_mvps(tmp_path / "MVPS", frames=5)
    gt = root / "Annotations/480p"
    pred = tmp_path / "pred"
    for s in MVPS_SEQS:
        for t in range(5):
            _save(pred / s / f"{t:04d}.png", Image.fromarray((_box(t) * 255).astype(np.uint8)))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--protocol", "mvps", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert list(d["sequences"]) == list(MVPS_SEQS) and d["overall"]["J&F"] == 1.0
    assert d["sequences"]["cat1/clip0"]["frames"] == 3
    assert list(evaluate(pred, gt, sequences=["cat0"]).sequences) == ["cat0/clip0", "cat0/clip1"]
    capsys.readouterr()
    for f in (pred / "cat1/clip0").iterdir():
        f.unlink()
    (pred / "cat1/clip0").rmdir()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cat1/clip0" in err and str(pred / "cat1/clip0") in err


@pytest.mark.slow
def test_train_on_mvps(tmp_path):
    """The trainer reads the nested MVPS layout (training and validation)."""
    from pdnet.train import Trainer, load_config

    root = make_mvps(tmp_path / "MVPS", frames=3)
    sets = ["model.backbone=resnet18", "model.parts=2", "model.imagenet=null", "data.size=32", "data.workers=0",
            "train.batch_size=2", "train.epochs=1", "train.amp=off", "train.semantic_features=null",
            "log.every=1", "log.checkpoint_every=1000", "log.val_every=1", "log.val_clips=1",
            "log.tensorboard=false", "log.progress=false"]
    cfg = load_config(None, sets)
    cfg["data"]["video"] = [{"kind": "mvps", "root": str(root)}]
    t = Trainer(cfg, tmp_path / "run", device="cpu")
    assert t.video.loader.dataset.sequences == list(MVPS_SEQS)
    t.fit(1)
    assert [c.name for ds in t.val for c in ds.clips] == ["cat1/clip0"]


# ------------------------------------------------------- untrusted list files


def _outside(tmp_path: Path) -> Path:
    """A folder outside the data root holding a frame, a mask and a sequence of them."""
    out = tmp_path / "secret"
    _frame(out / "x.jpg")
    _save(out / "x.png", Image.fromarray((_box() * 255).astype(np.uint8)))
    _frame(out / "seq/0000.jpg")
    _save(out / "seq/0000.png", Image.fromarray((_box() * 255).astype(np.uint8)))
    return out


def _assert_refused(fn, list_file: Path, line: int, value: str):
    for skip_bad in (False, True):  # refused even when bad items may be skipped
        with pytest.raises(DataError) as ei:
            fn(skip_bad)
        msg = str(ei.value)
        assert msg.startswith(f"{list_file}:{line}: ") and repr(value) in msg and "leaves the data root" in msg, msg


def test_list_paths_leaving_the_root_are_refused(tmp_path):
    _outside(tmp_path)
    root = tmp_path / "data"
    # DAVIS pair list (ImageSets/480p): ../ in the image or in the mask field
    for field in (0, 1):
        _davis(root, [Image.fromarray((_box() * 255).astype(np.uint8))], seq="s")
        pair = ["/JPEGImages/480p/s/00000.jpg", "/Annotations/480p/s/00000.png"]
        pair[field] = "/../secret/x.jpg" if field == 0 else "JPEGImages/../../secret/x.png"
        lst = root / "ImageSets/480p/train.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        first = "/JPEGImages/480p/s/00000.jpg /Annotations/480p/s/00000.png"
        lst.write_text(f"# comment\n{first}\n" + " ".join(pair) + "\n")
        _assert_refused(lambda skip: build_dataset("davis", root, "train", skip_bad=skip), lst, 3, pair[field])
        lst.unlink()
    # DAVIS sequence list (ImageSets/2016)
    lst = root / "ImageSets/2016/train.txt"
    lst.write_text("s\n../../../secret/seq\n")
    _assert_refused(lambda skip: build_dataset("davis", root, "train", skip_bad=skip), lst, 2, "../../../secret/seq")
    # MVPS sequence list
    mv = make_mvps(tmp_path / "MVPS")
    lst = mv / "ImageSets/train.txt"
    lst.write_text("cat0/clip0\ncat0/../../../../secret/seq\n")
    _assert_refused(
        lambda skip: build_dataset("mvps", mv, "train", skip_bad=skip), lst, 2, "cat0/../../../../secret/seq"
    )
    # PP-HumanSeg "image mask" list
    pp = tmp_path / "pp"
    _frame(pp / "images/a_0001.jpg")
    _save(pp / "annotations/a_0001.png", Image.fromarray(_box().astype(np.uint8)))
    lst = pp / "train.txt"
    lst.write_text("images/a_0001.jpg annotations/a_0001.png\n../secret/x.jpg ../secret/x.png\n")
    _assert_refused(lambda skip: build_dataset("pphumanseg", pp, "train", skip_bad=skip), lst, 2, "../secret/x.jpg")
    # image-folder split list
    im = tmp_path / "EG1800"
    _frame(im / "Images/00001.jpg")
    _save(im / "Labels/00001.png", Image.fromarray((_box() * 255).astype(np.uint8)))
    lst = im / "train.txt"
    lst.write_text("00001.jpg\n../../secret/x.jpg\n")
    _assert_refused(lambda skip: build_dataset("images", im, "train", skip_bad=skip), lst, 2, "../../secret/x.jpg")


def test_list_paths_through_symlinks_leaving_the_root_are_refused(tmp_path):
    secret = _outside(tmp_path)
    root = tmp_path / "data"
    _davis(root, [Image.fromarray((_box() * 255).astype(np.uint8))], seq="s")
    # a linked sequence folder pointing outside, named by a sequence list
    os.symlink(secret / "seq", root / "JPEGImages/480p/evil")
    lst = root / "ImageSets/2016/train.txt"
    lst.write_text("s\nevil\n")
    _assert_refused(lambda skip: build_dataset("davis", root, "train", skip_bad=skip), lst, 2, "evil")
    # a linked frame file pointing outside, named by a pair list
    os.symlink(secret / "x.jpg", root / "JPEGImages/480p/s/link.jpg")
    lst = root / "ImageSets/480p/train.txt"
    lst.parent.mkdir(parents=True)
    lst.write_text("/JPEGImages/480p/s/link.jpg /Annotations/480p/s/00000.png\n")
    _assert_refused(
        lambda skip: build_dataset("davis", root, "train", skip_bad=skip), lst, 1, "/JPEGImages/480p/s/link.jpg"
    )
    # a link inside an MVPS category named by the list
    mv = make_mvps(tmp_path / "MVPS")
    os.symlink(secret, mv / "Keyframes/480p/cat0/evil")
    mv_list = mv / "ImageSets/train.txt"
    _assert_refused(lambda skip: build_dataset("mvps", mv, "train", skip_bad=skip), mv_list, 1, "cat0")
    # links that stay inside, and a data root that is itself a link, are fine
    lst.write_text("/JPEGImages/480p/s/00000.jpg /Annotations/480p/s/00000.png\n")
    os.symlink(root, tmp_path / "alias")
    assert build_dataset("davis", tmp_path / "alias", "train", size=16).sequences == ["s"]
