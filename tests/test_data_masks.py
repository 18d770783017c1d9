"""One mask reader (training == evaluation): every rule of decode_mask through the training
reader, the RGBA fast path and the evaluation reader, per file, at any frame size."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_hardening_helpers import H, W, _box, _cli, _davis, _frame, _save
from PIL import Image

from pdnet.data import DataError, DataWarning, build_dataset, decode_mask, read_mask, read_rgba
from pdnet.evaluation import evaluate, evaluate_arrays
from pdnet.evaluation.io import read_mask as eval_read_mask


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
