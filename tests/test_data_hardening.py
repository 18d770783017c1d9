"""Hardening of the data pipeline, the evaluation reader and ``pdnet synth`` / ``pdnet evaluate``:
one mask reader (training == evaluation), MVPS nested sequences, list files that try to
leave the data root, worker errors naming the file, and every CLI flag given a bad value."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdnet.data import DataError, DataWarning, build_dataset, decode_mask, make_loader, read_mask, read_rgba
from pdnet.evaluation import evaluate, evaluate_arrays
from pdnet.evaluation.io import read_mask as eval_read_mask

H, W = 24, 32


def _box(t: int = 0) -> np.ndarray:
    """bool [H, W]: a box that moves with t."""
    m = np.zeros((H, W), bool)
    m[4 + t : 14 + t, 6 + 2 * t : 20 + 2 * t] = True
    return m


def _save(path: Path, im: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _frame(path: Path, t: int = 0) -> Path:
    rng = np.random.default_rng(t)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    return _save(path, Image.fromarray(img))


# --------------------------------------------------------------------------- 1. one mask reader


def mask_files(d: Path):
    """{name: (file, expected 0..255 array, warns)} for every rule of decode_mask."""
    box = _box()
    soft = np.where(box, 200, 0).astype(np.uint8)
    soft[0, :4] = (1, 2, 100, 255)
    photo = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    pal = Image.fromarray(box.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    pal2 = Image.fromarray(np.where(box, 3, 0).astype(np.uint8), mode="P")
    pal2.putpalette([0, 0, 0] * 256)  # index 3, whatever its colour, is a person
    b255 = (box * 255).astype(np.uint8)
    cases = {
        "grey_0_255": (Image.fromarray(b255), b255, False),
        "grey_0_1": (Image.fromarray(box.astype(np.uint8)), b255, False),
        "grey_all_1": (Image.fromarray(np.ones((H, W), np.uint8)), np.full((H, W), 255, np.uint8), False),
        "grey_empty": (Image.fromarray(np.zeros((H, W), np.uint8)), np.zeros((H, W), np.uint8), False),
        "grey_soft": (Image.fromarray(soft), soft, False),
        "grey_max_2": (Image.fromarray(box.astype(np.uint8) * 2), box.astype(np.uint8) * 2, True),
        "grey_alpha": (Image.fromarray(np.stack([box * 1, box * 0 + 77], -1).astype(np.uint8), mode="LA"), b255, False),
        "palette": (pal, b255, False),
        "palette_index3_black": (pal2, b255, False),
        "bits": (Image.fromarray(box).convert("1"), b255, False),
        "rgb_grey_0_1": (Image.fromarray(np.repeat(box[..., None], 3, -1).astype(np.uint8)), b255, False),
        "rgb_grey_soft": (Image.fromarray(np.repeat(soft[..., None], 3, -1)), soft, False),
        "rgb_colour": (Image.fromarray(np.stack([box * 128, box * 0, box * 0], -1).astype(np.uint8)), b255, False),
        "rgba_colour": (
            Image.fromarray(np.stack([box * 0, box * 60, box * 0, box * 0 + 5], -1).astype(np.uint8)), b255, False
        ),
        "rgb_photo": (Image.fromarray(photo), np.where(photo.max(-1) > 0, 255, 0).astype(np.uint8), True),
        "i16_0_1": (Image.fromarray(box.astype(np.uint16)), b255, False),
        "i16_0_255": (Image.fromarray(b255.astype(np.uint16)), b255, False),
    }
    return {k: (_save(d / f"{k}.png", im), want, warns) for k, (im, want, warns) in cases.items()}


def _read_quietly(fn, path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(path)
    return out, [w for w in rec if issubclass(w.category, DataWarning)]


def test_mask_rules(tmp_path):
    """Every documented rule, through the training reader, the RGBA fast path (alpha) and
    the evaluation reader: the same 0..255 values, and a DataWarning naming the file
    exactly when its values fit no rule."""
    frame = _frame(tmp_path / "f.jpg")
    for name, (path, want, warns) in mask_files(tmp_path).items():
        train, w1 = _read_quietly(read_mask, path)
        rgba, w2 = _read_quietly(lambda p: read_rgba(frame, p), path)
        ev, w3 = _read_quietly(eval_read_mask, path)
        assert train.shape == (1, H, W) and train.dtype == torch.uint8
        assert np.array_equal(train[0].numpy(), want), name
        assert np.array_equal(rgba[..., 3].numpy(), want), name
        assert isinstance(ev, np.ndarray) and np.array_equal(ev, want), name
        for rec in (w1, w2, w3):
            assert len(rec) == int(warns), (name, [str(w.message) for w in rec])
            if warns:
                assert str(rec[0].message).startswith(str(path)) and "fit no mask rule" in str(rec[0].message)


def test_mask_values_no_mask_can_hold(tmp_path):
    path = _save(tmp_path / "deep.png", Image.fromarray(np.full((H, W), 300, np.uint16)))
    with pytest.raises(DataError, match=r"deep\.png: unsupported PNG mode .* values 300\.\.300"):
        read_mask(path)
    _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (W, H)))
    with pytest.raises(DataError, match=r"cmyk\.jpg: unsupported JPEG mode 'CMYK'"):
        decode_mask(tmp_path / "cmyk.jpg")
    # "nonzero" (label maps) reads any non-zero value as a person, whatever the file
    assert read_mask(path, "nonzero").unique().tolist() == [255]


def _davis(root: Path, masks, seq="s"):
    for t, m in enumerate(masks):
        _frame(root / "JPEGImages/480p" / seq / f"{t:05d}.jpg", t)
        _save(root / "Annotations/480p" / seq / f"{t:05d}.png", m)
    (root / "ImageSets/2016").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/2016/train.txt").write_text(seq + "\n")
    return root


def test_training_targets_of_01_and_rgb_masks(tmp_path):
    """DAVIS-layout masks stored as 0/1 and as colour (128, 0, 0) train as 0/1 targets (not
    1/255 or 38/255), and evaluate agrees: their J&F against 0/255 ground truth is 1."""
    box = [_box(t) for t in range(3)]
    kinds = {
        "01": [Image.fromarray(b.astype(np.uint8)) for b in box],
        "rgb": [Image.fromarray(np.stack([b * 128, b * 0, b * 0], -1).astype(np.uint8)) for b in box],
    }
    for kind, masks in kinds.items():
        ds = build_dataset("davis", _davis(tmp_path / kind, masks), "train", size=(H, W), augment=False)
        for t in range(3):
            s = ds[t]
            assert torch.equal(s["target_mask"][0], torch.from_numpy(box[t]).float()), (kind, t)
        gt = tmp_path / "gt" / "s"
        for t, b in enumerate(box):
            _save(gt / f"{t:05d}.png", Image.fromarray((b * 255).astype(np.uint8)))
        r = evaluate(tmp_path / kind / "Annotations/480p", tmp_path / "gt")
        assert r.JF == 1.0, kind


def test_stray_value_in_01_sequence_changes_only_its_frame(tmp_path):
    """A single pixel of value 2 in one frame of a 0/1 prediction sequence: decided per
    file, only that frame is read differently (and warned about); before, the whole
    sequence switched to the 0..255 reading and scored 0."""
    box = [_box(t) for t in range(4)]
    for t, b in enumerate(box):
        _save(tmp_path / "gt/s" / f"{t:05d}.png", Image.fromarray((b * 255).astype(np.uint8)))
        p = b.astype(np.uint8)
        if t == 2:
            p[0, 0] = 2
        _save(tmp_path / "pred/s" / f"{t:05d}.png", Image.fromarray(p))
    stray = tmp_path / "pred/s/00002.png"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = evaluate(tmp_path / "pred", tmp_path / "gt", workers=1)
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    assert len(msgs) == 1 and msgs[0].startswith(str(stray)), msgs
    j = r.sequences["s"].j_frames
    assert j.tolist() == [1.0, 1.0, 0.0, 1.0]
    code, err = _cli(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    assert code == 0 and err.strip().splitlines()[-1].startswith(f"pdnet evaluate: warning: {stray}: "), err
    # in memory, the same rule per frame
    pred = np.stack([b.astype(np.uint8) for b in box])
    pred[2, 0, 0] = 2
    gt = np.stack([b * 255 for b in box]).astype(np.uint8)
    ja = evaluate_arrays({"s": (pred, gt)}).sequences["s"].j_frames
    assert ja.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_mask_rules_at_frame_sizes(tmp_path):
    """At real frame sizes the reader first looks at a 1-in-16x16 subsample; whatever it
    sees, the rules give the same answer as on a full scan (small person, 0/1, soft)."""
    h, w = 120, 200
    frame = tmp_path / "f.jpg"
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(frame)
    big = np.zeros((h, w), np.uint8)
    big[20:90, 30:150] = 255
    tiny = np.zeros((h, w), np.uint8)
    tiny[33:35, 41:43] = 255  # between the subsample's pixels
    cases = {"big": (big, big, 0), "tiny": (tiny, tiny, 0), "big01": (big // 255, big, 0),
             "tiny01": (tiny // 255, tiny, 0), "faint": (big // 255 * 9, big // 255 * 9, 1)}
    for name, (stored, want, warns) in cases.items():
        path = _save(tmp_path / f"{name}.png", Image.fromarray(stored))
        for fn in (lambda p: read_mask(p)[0].numpy(), lambda p: read_rgba(frame, p)[..., 3].numpy(), eval_read_mask):
            got, rec = _read_quietly(fn, path)
            assert np.array_equal(got, want) and len(rec) == warns, name


# --------------------------------------------------------------------------- 2. MVPS nested sequences


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


# --------------------------------------------------------------------------- 3. untrusted list files


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


# --------------------------------------------------------------------------- 4. errors from workers


def test_corrupt_jpeg_in_worker_is_a_one_line_data_error(tmp_path):
    """A JPEG corrupted after the dataset was built (validate="header" saw a good file)
    fails in the DataLoader worker; the main process gets a DataError whose message is
    the worker's one line naming the file (no worker traceback) and whose path is set."""
    root = _davis(tmp_path / "d", [Image.fromarray((_box(t) * 255).astype(np.uint8)) for t in range(3)])
    ds = build_dataset("davis", root, "train", size=16, validate="header")
    bad = root / "JPEGImages/480p/s/00001.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:3] + bytes(range(256)) * 2 + data[-2:])
    loader = make_loader(ds, batch_size=1, workers=1, shuffle=False, persistent_workers=False, drop_last=False)
    with pytest.raises(DataError) as ei:
        list(loader)
    msg = str(ei.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg and "Traceback" not in msg, msg
    assert ei.value.path == str(bad)
    # in the main process nothing changes: the same message and path
    with pytest.raises(DataError) as direct:
        ds[1]
    assert str(direct.value) == msg and direct.value.path == str(bad)


# --------------------------------------------------------------------------- 5. synth --force


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_force_replaces_the_previous_set(tmp_path, capsys):
    """--force deletes exactly the previous synth output (by its synth.json), so seed 0
    with 3 clips then seed 1 with 2 clips equals a fresh seed-1 run byte for byte; a
    folder that is not synth output is refused and left alone."""
    from pdnet.cli import main

    common = ["--frames", "2", "--size", "16x24", "--workers", "1", "--quiet"]
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["synth", str(out), "--seed", "0", "--clips", "3", *common]) == 0
    assert len(list((out / "JPEGImages/480p").iterdir())) == 3
    (out / "notes.txt").write_text("mine")  # not synth's: kept
    assert main(["synth", str(out), "--seed", "1", "--clips", "2", "--force", *common]) == 0
    assert main(["synth", str(fresh), "--seed", "1", "--clips", "2", *common]) == 0
    got = _tree(out)
    assert got.pop("notes.txt") == b"mine"
    assert got == _tree(fresh)
    assert not (out / "JPEGImages/480p/clip0002").exists()
    # an interrupted run (manifest still "in_progress") is removable too
    meta = json.loads((out / "synth.json").read_text())
    meta["in_progress"] = True
    del meta["sequences"]
    (out / "synth.json").write_text(json.dumps(meta))
    assert main(["synth", str(out), "--seed", "1", "--clips", "2", "--force", *common]) == 0
    assert _tree(out) == {**_tree(fresh), "notes.txt": b"mine"}
    capsys.readouterr()
    # not synth output (no manifest, or a foreign one): refused, nothing deleted
    other = tmp_path / "other"
    _davis(other, [Image.fromarray((_box() * 255).astype(np.uint8))])
    before = _tree(other)
    for manifest in (None, '{"generator": "someone else", "clips": 1, "frames": 1}', "not json"):
        if manifest is not None:
            (other / "synth.json").write_text(manifest)
            before = _tree(other)
        assert main(["synth", str(other), "--clips", "1", "--force", *common]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refusing to delete" in err and str(other) in err, err
        assert _tree(other) == before


# --------------------------------------------------------------------------- 6. every flag, bad values


def _cli(argv):
    """``pdnet.cli.main(argv)`` in-process: (exit code, stderr text)."""
    import contextlib
    import io

    from pdnet.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's (one-line) errors
            code = exc.code
    return code, err.getvalue()


@pytest.fixture(scope="module")
def flag_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    (d / "afile").write_text("x")
    (d / "full").mkdir()
    (d / "full/x.txt").write_text("x")
    (d / "dir.json").mkdir()
    for root in ("gt", "pred"):
        for t in range(3):
            _save(d / root / "s" / f"{t}.png", Image.fromarray((_box(t) * 255).astype(np.uint8)))
    return d


SYNTH_BAD = [
    ([], "required: OUT"),
    (["{d}/new", "--seed", "-1"], "--seed -1"),
    (["{d}/new", "--seed", "abc"], "'abc'"),
    (["{d}/afile/x"], "{d}/afile is not a folder"),
    (["{d}/afile"], "{d}/afile: exists and is not a folder"),
    (["{d}/full"], "{d}/full: folder is not empty"),
    (["{d}/full", "--force"], "refusing to delete"),
    (["{d}/new", "--clips", "0"], "--clips 0"),
    (["{d}/new", "--clips", "-2"], "--clips -2"),
    (["{d}/new", "--clips", "two"], "'two'"),
    (["{d}/new", "--frames", "0"], "--frames 0"),
    (["{d}/new", "--frames", "1.5"], "'1.5'"),
    (["{d}/new", "--size", "8x8"], "'8x8'"),
    (["{d}/new", "--size", "abc"], "'abc'"),
    (["{d}/new", "--size", "5000x64"], "'5000x64'"),
    (["{d}/new", "--size", "16x16x16"], "'16x16x16'"),
    (["{d}/new", "--size", "-32"], "'-32'"),
    (["{d}/new", "--val", "1"], "--val 1.0"),
    (["{d}/new", "--val", "-0.1"], "--val -0.1"),
    (["{d}/new", "--val", "nan"], "--val nan"),
    (["{d}/new", "--val", "half"], "'half'"),
    (["{d}/new", "--quality", "0"], "--quality 0"),
    (["{d}/new", "--quality", "101"], "--quality 101"),
    (["{d}/new", "--quality", "high"], "'high'"),
    (["{d}/new", "--workers", "0"], "--workers 0"),
    (["{d}/new", "--workers", "many"], "'many'"),
    (["{d}/new", "--force=yes"], "--force"),
    (["{d}/new", "--quiet=1"], "--quiet"),
]
EVAL_BAD = [
    (["--gt", "{d}/gt"], "--pred"),
    (["--pred", "{d}/pred"], "--gt"),
    (["--pred", "{d}/nope", "--gt", "{d}/gt"], "{d}/nope does not exist"),
    (["--pred", "{d}/pred", "--gt", "{d}/nope"], "{d}/nope does not exist"),
    (["--pred", "{d}/afile", "--gt", "{d}/gt"], "{d}/afile is not a folder"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--protocol", "bogus"], "'bogus'"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--out", "{d}/r.txt"], "{d}/r.txt"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--out", "{d}/afile/r.json"], "{d}/afile is not a folder"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--out", "{d}/dir.json"], "{d}/dir.json: is a folder"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", ""], "--sequences ''"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", " , "], "--sequences ' , '"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", "yak"], "sequence yak"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", "../gt"], "sequence ../gt"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--device", "bogus"], "--device bogus"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--device", "meta"], "--device meta"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--device", "cuda:99"], "--device cuda:99"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--missing-as-empty=1"], "--missing-as-empty"),
]


@pytest.mark.parametrize(
    "command,args,needle", [("synth", a, n) for a, n in SYNTH_BAD] + [("evaluate", a, n) for a, n in EVAL_BAD]
)
def test_bad_flag_values_are_one_line_errors(flag_dirs, command, args, needle):
    d = str(flag_dirs)
    code, err = _cli([command, *(a.replace("{d}", d) for a in args)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"pdnet {command}: error: ") and needle.replace("{d}", d) in lines[0], lines[0]
    assert not (flag_dirs / "new").exists()


def test_good_flags_still_work(flag_dirs):
    code, err = _cli(["evaluate", "--pred", str(flag_dirs / "pred"), "--gt", str(flag_dirs / "gt"), "--device", "cpu",
                      "--sequences", "s", "--protocol", "mvps", "--out", str(flag_dirs / "new_out/r.csv")])
    assert code == 0, err
    assert (flag_dirs / "new_out/r.csv").is_file()


def test_evaluate_linked_sequence_folders(tmp_path):
    """Sequence folders may be symbolic links (followed, each folder once: no loop)."""
    for t in range(2):
        _save(tmp_path / "store/bear" / f"{t}.png", Image.fromarray((_box(t) * 255).astype(np.uint8)))
    for root in ("gt", "pred"):
        (tmp_path / root).mkdir()
        os.symlink(tmp_path / "store/bear", tmp_path / root / "bear")
    os.symlink(tmp_path / "gt", tmp_path / "store/bear/loop")  # a cycle
    assert list(evaluate(tmp_path / "pred", tmp_path / "gt").sequences) == ["bear"]
