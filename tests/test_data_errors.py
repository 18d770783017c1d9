"""pdnet.data on bad data: frames without masks, size mismatches, unreadable or truncated files,
missing sequences, lists and folders; errors naming the file, in the main process and from
DataLoader workers, or warnings and skipping with skip_bad."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from data_hardening_helpers import _box, _davis
from data_helpers import H, W, make_davis
from PIL import Image

from pdnet.data import DataError, DataWarning, build_dataset, make_loader, scan_davis


def _check_skip(fn, match):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    assert any(issubclass(w.category, DataWarning) and match in str(w.message) for w in caught), [
        str(w.message) for w in caught
    ]
    return out


def test_frame_without_mask(davis):
    missing = davis / "Annotations/480p/dog/00001.png"
    missing.unlink()
    frame = davis / "JPEGImages/480p/dog/00001.jpg"
    with pytest.raises(DataError, match="00001.jpg: frame has no mask") as ei:
        build_dataset("davis", davis, "train")
    assert str(frame) in str(ei.value)
    ds = _check_skip(lambda: build_dataset("davis", davis, "train", size=16, skip_bad=True), str(frame))
    assert len(ds) == 5


def test_size_mismatch(davis):
    mask = davis / "Annotations/480p/bear/00002.png"
    Image.new("L", (W + 4, H), 0).save(mask)
    with pytest.raises(DataError, match="mask is 60x40") as ei:
        build_dataset("davis", davis, "train")
    assert str(mask) in str(ei.value)
    ds = _check_skip(lambda: build_dataset("davis", davis, "train", size=16, skip_bad=True), str(mask))
    assert len(ds) == 5
    # not validated up front: the worker-side check names the file too
    ds = build_dataset("davis", davis, "train", size=16, validate="none")
    with pytest.raises(DataError, match="00002.png: mask is 60x40"):
        ds[2]


@pytest.mark.parametrize(
    "kind,corrupt,expect",
    [
        ("jpg", lambda b: b[: len(b) // 2], "truncated JPEG"),
        ("png", lambda b: b[: len(b) - 20], "truncated PNG"),
        ("jpg", lambda b: b"not an image at all" * 4, "not an image"),
        ("jpg", lambda b: b"", "empty file"),
    ],
)
def test_unreadable_or_truncated(davis, kind, corrupt, expect):
    path = davis / ("JPEGImages/480p/dog/00002.jpg" if kind == "jpg" else "Annotations/480p/dog/00002.png")
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=expect) as ei:
        build_dataset("davis", davis, "train")  # found in the main process, before training
    assert str(path) in str(ei.value) and ei.value.path == str(path)
    ds = _check_skip(lambda: build_dataset("davis", davis, "train", size=16, skip_bad=True), str(path))
    assert len(ds) == 5


def test_truncated_file_in_worker(davis):
    """Without validation, a bad file surfaces from the DataLoader worker as a DataError
    naming the file (or, with skip_bad, as a warning and the next sample)."""
    path = davis / "JPEGImages/480p/dog/00002.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = build_dataset("davis", davis, "train", size=16, validate="none")
    loader = make_loader(ds, batch_size=1, workers=1, shuffle=False, persistent_workers=False, drop_last=False)
    with pytest.raises(DataError, match="00002.jpg: truncated JPEG"):
        list(loader)
    ds = build_dataset("davis", davis, "train", size=16, validate="none", skip_bad=True)
    s = _check_skip(lambda: ds[5], str(path))
    assert s["index"] == 0  # wrapped around to the next sample
    assert ds[3]["frame"] == "00000"


def test_bad_reference_skips_clip(davis):
    path = davis / "JPEGImages/480p/bear/00000.jpg"
    path.write_bytes(b"garbage")
    ds = build_dataset("davis", davis, "train", size=16, validate="none", skip_bad=True)
    s = _check_skip(lambda: ds[1], str(path))
    assert s["sequence"] == "dog" and s["index"] == 3


def test_validate_full_decodes(davis):
    path = davis / "Annotations/480p/dog/00002.png"
    data = bytearray(path.read_bytes())
    i = data.find(b"IDAT")
    n = int.from_bytes(data[i - 4 : i], "big")  # IDAT payload length
    assert n > 8
    data[i + 6 : i + 4 + n] = b"\x13" * (n - 2)  # corrupt the compressed pixels; header and IEND intact
    path.write_bytes(bytes(data))
    build_dataset("davis", davis, "train", validate="header")  # the cheap check cannot see it
    with pytest.raises(DataError, match="00002.png: cannot decode mask"):
        build_dataset("davis", davis, "train", validate="full")


def test_empty_sequence(davis):
    for f in (davis / "JPEGImages/480p/dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="empty sequence 'dog'") as ei:
        build_dataset("davis", davis, "train")
    assert str(davis / "JPEGImages/480p/dog") in str(ei.value)
    ds = _check_skip(lambda: build_dataset("davis", davis, "train", skip_bad=True), "empty sequence")
    assert ds.sequences == ["bear"]


def test_list_names_missing_sequence(davis):
    lst = davis / "ImageSets/2016/train.txt"
    lst.write_text("bear\ncat\ndog\n")
    with pytest.raises(DataError, match=r"train.txt:2: sequence 'cat' not found") as ei:
        build_dataset("davis", davis, "train")
    assert str(lst) in str(ei.value)
    ds = _check_skip(lambda: build_dataset("davis", davis, "train", skip_bad=True), "'cat' not found")
    assert ds.sequences == ["bear", "dog"]


def test_pair_list_problems(tmp_path):
    root = make_davis(tmp_path / "d", pair_list=True)
    lst = root / "ImageSets/480p/train.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(lines[:2] + [lines[2].split()[0]] + lines[3:]) + "\n")
    with pytest.raises(DataError, match="train.txt:3: .*a frame without its mask"):
        scan_davis(root, "train")
    lst.write_text("\n".join(lines + ["/JPEGImages/480p/cat/00000.jpg /Annotations/480p/cat/00000.png"]) + "\n")
    with pytest.raises(DataError, match="cat/00000.jpg: file not found"):
        build_dataset("davis", root, "train")


def test_missing_lists_and_folders(tmp_path, davis):
    with pytest.raises(DataError, match="DAVIS split list for 'val' not found"):
        build_dataset("davis", davis, "val")
    with pytest.raises(DataError, match="dataset folder not found"):
        build_dataset("davis", tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        build_dataset("auto", tmp_path / "empty", "train")
    with pytest.raises(DataError, match="no image \\+ mask folders"):
        build_dataset("images", tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="kind must be"):
        build_dataset("kinetics", davis, "train")
    assert issubclass(DataError, ValueError)


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
