"""pdnet.data: readers of each layout, augmentation, determinism, bad data."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pdnet.data import (
    DataError,
    DataWarning,
    ImagePairDataset,
    PairAugment,
    VideoPairDataset,
    build_dataset,
    detect_layout,
    make_loader,
    normalize_uint8,
    prepare_batch,
    read_image,
    read_mask,
    scan_davis,
)
from pdnet.data.augment import CropFlip, apply_crop_flip_resize, sample_crop_flip
from pdnet.preprocess import IMAGENET_STD, normalize

H, W = 40, 56
#: On the CPU a uint8 frame's mask is resized as the alpha channel of the frame's uint8
#: RGBA resize (pdnet.data.augment.augment_rgba): torch's kernel uses fixed-point (int16)
#: weights and rounds after each of its two passes, so the mask is a grey level within
#: one level of the float resize, plus the weights' quantisation (measured <= 0.001 level;
#: 1/64 allowed); it is at most one level from the rounded float resize.
MASK_LEVELS = 1.0 + 2**-6


# --------------------------------------------------------------------------- fixtures


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


@pytest.fixture
def davis(tmp_path):
    return make_davis(tmp_path / "davis")


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("pair_list", [False, True])
def test_davis_reader(tmp_path, pair_list):
    root = make_davis(tmp_path / "d", pair_list=pair_list)
    assert detect_layout(root) == "davis"
    ds = build_dataset("davis", root, "train", size=(H, W), augment=False)
    assert isinstance(ds, VideoPairDataset)
    assert len(ds) == 6 and ds.sequences == ["bear", "dog"] and ds.clip_start(1) == 3
    s = ds[4]  # dog, frame 1
    assert s["sequence"] == "dog" and s["frame"] == "00001" and s["index"] == 4
    assert s["size"].tolist() == [H, W]
    assert s["target"].shape == (3, H, W) and s["target"].dtype == torch.float32
    assert s["target_mask"].shape == (1, H, W)
    frame1 = read_image(root / "JPEGImages/480p/dog/00001.jpg")
    frame0 = read_image(root / "JPEGImages/480p/dog/00000.jpg")
    torch.testing.assert_close(s["target"], normalize(frame1), atol=1e-5, rtol=0)
    torch.testing.assert_close(s["reference"], normalize(frame0), atol=1e-5, rtol=0)  # first frame of the clip
    _, m1 = square_frame(1)
    _, m0 = square_frame(0)
    assert torch.equal(s["target_mask"][0], torch.from_numpy(m1 / 255.0).float())
    assert torch.equal(s["reference_mask"][0], torch.from_numpy(m0 / 255.0).float())


def test_mvps_reader(tmp_path):
    root = tmp_path / "MVPS"
    for seq in ("talk/clip1", "sing/clip2"):
        for t in range(2):
            name = f"{seq}/{t:04d}"
            write_pair(root / "Keyframes/480p" / f"{name}.jpg", root / "Annotations/480p" / f"{name}.png", t)
    (root / "ImageSets").mkdir()
    (root / "ImageSets/train.txt").write_text("talk/clip1\n")
    (root / "ImageSets/val.txt").write_text("sing/clip2\n")
    assert detect_layout(root) == "mvps"
    tr = build_dataset("mvps", root, "train", size=32)
    va = build_dataset("mvps", root, "val", size=32)
    assert tr.sequences == ["talk/clip1"] and va.sequences == ["sing/clip2"]
    assert tr.augment and not va.augment
    s = va[1]
    assert s["sequence"] == "sing/clip2" and s["frame"] == "0001" and s["target"].shape == (3, 32, 32)


def test_pphumanseg_reader(tmp_path):
    root = tmp_path / "PP"
    lines = []
    for vid, frames in (("vidA", (2, 10, 1)), ("vidB", (3,))):
        for t in frames:
            img, msk = f"images/train/{vid}_{t:03d}.jpg", f"annos/train/{vid}_{t:03d}.png"
            write_pair(root / img, root / msk, t % 4, mask_values=1, palette=(vid == "vidB"))
            lines.append(f"{img} {msk}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    assert detect_layout(root) == "pphumanseg"
    ds = build_dataset("pphumanseg", root, "train", size=(H, W), augment=False)
    assert ds.sequences == ["train/vidA", "train/vidB"]
    assert [f.stem for f in ds.clips[0].frames] == ["vidA_001", "vidA_002", "vidA_010"]  # time order
    s = ds[1]
    assert s["frame"] == "vidA_002"
    _, m = square_frame(2)
    assert torch.equal(s["target_mask"][0], torch.from_numpy(m / 255.0).float())  # 0/1 label map -> 0/1
    s = ds[3]  # palette mask, index 1 = person
    _, m = square_frame(3)
    assert torch.equal(s["target_mask"][0], torch.from_numpy(m / 255.0).float())


def test_image_folder_reader(tmp_path):
    root = tmp_path / "portraits"
    for t in range(3):
        write_pair(root / "EG1800/Images" / f"{t:05d}.png", root / "EG1800/Labels" / f"{t:05d}.png", t)
    for t in range(2):
        write_pair(root / "SuperviselyPerson/img" / f"p{t}.jpg", root / "SuperviselyPerson/mask" / f"p{t}.png", t)
    (root / "EG1800/train.txt").write_text("00000\n00002.png\n")
    assert detect_layout(root) == "images"
    ds = build_dataset("images", root, "train", size=(H, W), augment=False)
    assert isinstance(ds, ImagePairDataset)
    assert ds.sequences == ["EG1800/00000", "EG1800/00002", "SuperviselyPerson/p0", "SuperviselyPerson/p1"]
    s = ds[1]
    assert torch.equal(s["target"], s["reference"]) and torch.equal(s["target_mask"], s["reference_mask"])
    img, m = square_frame(2)
    torch.testing.assert_close(s["target"], normalize(torch.from_numpy(img).permute(2, 0, 1)), atol=1e-5, rtol=0)
    # augmented: the image is both frames, augmented independently
    aug = build_dataset("images", root / "EG1800", "train", size=(H, W), augment=True, seed=1)
    assert len(aug) == 2
    diff = [not torch.equal(aug[i]["target"], aug[i]["reference"]) for i in range(2)]
    assert any(diff)


def test_read_mask_modes(tmp_path):
    m = np.array([[0, 1, 128, 255]], np.uint8)
    Image.fromarray(m, mode="L").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[[0, 1, 128, 255]]]
    assert read_mask(tmp_path / "m.png", "nonzero").tolist() == [[[0, 255, 255, 255]]]
    with pytest.raises(ValueError, match="mode"):
        read_mask(tmp_path / "m.png", "bogus")


# --------------------------------------------------------------------------- augmentation


def test_normalize_uint8_matches_preprocess():
    x = torch.randint(0, 256, (2, 3, 17, 23), dtype=torch.uint8)
    torch.testing.assert_close(normalize_uint8(x), normalize(x), atol=2e-6, rtol=1e-6)
    with pytest.raises(ValueError):
        normalize_uint8(x.float())


def test_crop_flip_distribution():
    rng = np.random.default_rng(0)
    geoms = [sample_crop_flip(rng, 480, 854) for _ in range(2000)]
    dh = np.array([480 - g.height for g in geoms])
    dw = np.array([854 - g.width for g in geoms])
    assert dh.min() == 0 and dh.max() == 480 // 8 - 1 and dw.max() == 854 // 8 - 1
    assert all(g.top < 480 - g.height or g.top == 0 for g in geoms)  # top offset < cut
    assert all(g.top + g.height <= 480 and g.left + g.width <= 854 for g in geoms)
    flips = np.mean([g.flip for g in geoms])
    assert 0.45 < flips < 0.55
    tiny = sample_crop_flip(rng, 5, 7)  # sides under 8 px: no crop
    assert (tiny.height, tiny.width) == (5, 7)


def test_apply_crop_flip_resize_geometry():
    img = torch.arange(4 * 6, dtype=torch.uint8).view(1, 4, 6).expand(3, 4, 6).contiguous()
    mask = (img[:1] * 10).clamp(max=255)
    out, m = apply_crop_flip_resize(img, mask, CropFlip(1, 2, 3, 4, True), (3, 4), output="uint8")
    expect = img[:, 1:4, 2:6].flip(-1)
    assert torch.equal(out, expect)  # same size: crop + flip only, no resampling
    assert torch.equal(m, expect[:1] * 10)
    out, m = apply_crop_flip_resize(img, mask, CropFlip(1, 2, 3, 4, True), (3, 4), output="float")
    torch.testing.assert_close(out, normalize(expect), atol=2e-6, rtol=0)
    torch.testing.assert_close(m, expect[:1].float() * 10 / 255, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="output"):
        apply_crop_flip_resize(img, mask, None, (3, 4), output="half")


def _moving_square_clip(root, frames, start, step, box):
    """A DAVIS-layout clip "sq" of lossless (PNG) H x W frames: a flat background (20) and
    a flat square (red 230) of ``box`` (h, w) at ``start + t * step`` (y, x), its exact mask."""
    for t in range(frames):
        img = np.full((H, W, 3), 20, np.uint8)
        mask = np.zeros((H, W), np.uint8)
        y, x = start[0] + step[0] * t, start[1] + step[1] * t
        img[y : y + box[0], x : x + box[1]] = (230, 90, 40)
        mask[y : y + box[0], x : x + box[1]] = 255
        (root / "JPEGImages/480p/sq").mkdir(parents=True, exist_ok=True)
        (root / "Annotations/480p/sq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"JPEGImages/480p/sq/{t:05d}.png")
        Image.fromarray(mask).save(root / f"Annotations/480p/sq/{t:05d}.png")
    (root / "ImageSets").mkdir()
    (root / "ImageSets/train.txt").write_text("sq\n")
    return root


def test_alignment_after_augmentation(tmp_path):
    """A moving square's mask stays on the square after crop, flip and resize: with a
    flat background (20) and a flat square (red 230) in lossless frames, the red channel
    of every augmented frame is 20 + 210 * (its augmented mask), within one grey level."""
    root = _moving_square_clip(tmp_path / "sq", frames=4, start=(3, 2), step=(6, 11), box=(13, 9))
    ds = build_dataset("davis", root, "train", size=(64, 48), augment=True, output="uint8", seed=3)
    centres = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            for img, m in ((s["target"], s["target_mask"]), (s["reference"], s["reference_mask"])):
                alpha = (img[0].float() - 20.0) / 210.0
                m = m.float() / 255.0
                assert (alpha - m[0]).abs().max() <= 1.0 / 210 + 0.5 / 255 + 1e-6, (epoch, i)  # one grey level
                assert m.sum() > 10  # the square is (mostly) in view
            m = s["target_mask"][0].float()
            centres.append(float((m * torch.arange(48)[None, :]).sum() / m.sum()))
    # the geometry really varies (crops and flips move the square around)
    assert np.std(centres) > 3.0


def test_augmentation_determinism(davis):
    a = build_dataset("davis", davis, "train", size=32, seed=7)
    b = build_dataset("davis", davis, "train", size=32, seed=7)
    c = build_dataset("davis", davis, "train", size=32, seed=8)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["target"], sb["target"]) and torch.equal(sa["reference_mask"], sb["reference_mask"])
    assert any(not torch.equal(a[i]["target"], c[i]["target"]) for i in range(len(a)))
    s0 = a[2]
    a.set_epoch(1)
    assert a.epoch == 1
    assert any(not torch.equal(a[i]["target"], b[i]["target"]) for i in range(len(a)))
    a.set_epoch(0)
    assert torch.equal(a[2]["target"], s0["target"])  # a sample depends on (seed, epoch, index) only
    # the reference is augmented on its own: for the first frame, target != reference
    assert any(not torch.equal(a[i]["target"], a[i]["reference"]) for i in (0, 3))


def test_loader_determinism_across_workers(davis):
    ds = build_dataset("davis", davis, "train", size=24, seed=5)

    def run(workers):
        ds.set_epoch(2)
        loader = make_loader(ds, batch_size=2, workers=workers, seed=11, persistent_workers=False)
        return [(b["index"].tolist(), b["target"].clone(), b["reference_mask"].clone()) for b in loader]

    r0, r2 = run(0), run(2)
    assert [x[0] for x in r0] == [x[0] for x in r2]  # same seeded order
    for (_, t0, m0), (_, t2, m2) in zip(r0, r2, strict=True):
        assert torch.equal(t0, t2) and torch.equal(m0, m2)
    assert sorted(i for x in r0 for i in x[0]) == list(range(len(ds)))[: len(r0) * 2]


def test_uint8_output_and_prepare_batch(davis):
    f = build_dataset("davis", davis, "train", size=24, seed=2)
    u = build_dataset("davis", davis, "train", size=24, seed=2, output="uint8")
    loader = make_loader(u, batch_size=3, workers=0, shuffle=False)
    batch = next(iter(loader))
    assert batch["target"].dtype == torch.uint8 and batch["target_mask"].dtype == torch.uint8
    ready = prepare_batch(batch, "cpu")
    for i in range(3):
        s = f[i]
        torch.testing.assert_close(ready["target"][i], s["target"], atol=2e-6, rtol=0)
        torch.testing.assert_close(ready["reference"][i], s["reference"], atol=2e-6, rtol=0)
        assert (ready["target_mask"][i] - s["target_mask"]).abs().max() <= 0.5 / 255 + 1e-6
    assert ready["sequence"] == batch["sequence"]
    fb = prepare_batch(next(iter(make_loader(f, batch_size=3, workers=0, shuffle=False))))
    assert fb["target"].dtype == torch.float32  # float batches pass through


@pytest.mark.parametrize("augment", [True, False])
def test_raw_output_and_prepare_batch(davis, augment):
    """Workers decode only (output="raw"); prepare_batch does the pixels and, on the CPU,
    gives exactly the output="float" samples."""
    f = build_dataset("davis", davis, "train", size=(24, 20), seed=4, augment=augment)
    r = build_dataset("davis", davis, "train", size=(24, 20), seed=4, augment=augment, output="raw")
    f.set_epoch(3)
    r.set_epoch(3)
    s = r[4]
    assert s["target"].dtype == torch.uint8 and s["target"].shape == (3, H, W)  # the decoded frame
    assert s["target_crop"].shape == (5,) and s["out_size"].tolist() == [24, 20]
    if not augment:
        assert s["target_crop"].tolist() == [0, 0, H, W, 0]
    batch = next(iter(make_loader(r, batch_size=6, workers=0, shuffle=False)))
    ready = prepare_batch(batch, "cpu")
    for i in range(6):
        e = f[i]
        for k in ("target", "target_mask", "reference", "reference_mask"):
            assert torch.equal(ready[k][i], e[k]), (i, k)
    assert ready["sequence"] == [f[i]["sequence"] for i in range(6)]
    with pytest.raises(ValueError, match="output must be one of"):
        build_dataset("davis", davis, "train", output="jpeg")


def test_raw_output_mixed_frame_sizes(tmp_path):
    root = tmp_path / "imgs"
    for t, (h, w) in enumerate([(H, W), (W, H), (30, 30)]):
        img = np.random.default_rng(t).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 3:12] = 255
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "mask").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"img/{t}.png")
        Image.fromarray(mask).save(root / f"mask/{t}.png")
    f = build_dataset("images", root, "train", size=16, seed=1)
    r = build_dataset("images", root, "train", size=16, seed=1, output="raw")
    batch = next(iter(make_loader(r, batch_size=3, workers=0, shuffle=False)))
    assert batch["target"].shape == (3, 3, W, W)  # padded to the largest frame
    ready = prepare_batch(batch)
    for i in range(3):
        assert torch.equal(ready["target"][i], f[i]["target"])
        assert torch.equal(ready["target_mask"][i], f[i]["target_mask"])


def test_float_resize_path_matches_uint8():
    """The device path (float resize, used where uint8 resize does not exist) agrees with
    the CPU uint8 path within one grey level, for the image and (since the CPU path resizes
    the mask as the alpha channel of the uint8 resize, see MASK_LEVELS) for the mask."""
    img = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    mask = (torch.rand(1, 37, 53) > 0.5).to(torch.uint8) * 255
    geom = CropFlip(2, 5, 33, 47, True)
    a, ma = apply_crop_flip_resize(img, mask, geom, (40, 30))
    b, mb = apply_crop_flip_resize(img.float(), mask, geom, (40, 30))
    assert (a - b).abs().max() <= 1.0 / 255 / min(IMAGENET_STD) + 1e-5
    assert (ma - mb).abs().max() <= MASK_LEVELS / 255
    assert not torch.equal(ma, mb)  # the CPU mask really is the uint8 one (a grey level)
    assert ((ma * 255) - (ma * 255).round()).abs().max() < 1e-4
    with pytest.raises(ValueError, match="output"):
        apply_crop_flip_resize(img, mask, geom, (40, 30), output="raw")  # raw is a dataset format only


def test_pair_augment_eval_resizes_only():
    img, m = square_frame(0)
    aug = PairAugment((H * 2, W * 2), train=False, output="uint8")
    out, mo = aug(torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(m)[None])
    assert out.shape == (3, H * 2, W * 2) and out.dtype == torch.uint8 and mo.dtype == torch.uint8
    ref_img, ref_m = PairAugment((H * 2, W * 2), train=False)(
        torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(m)[None]
    )
    assert 0.0 <= ref_m.min() and ref_m.max() <= 1.0
    assert (mo.float() / 255 - ref_m).abs().max() <= 0.5 / 255 + 1e-6  # the same mask, rounded
    torch.testing.assert_close(normalize(out), ref_img)
    with pytest.raises(ValueError, match="output"):
        PairAugment(8, output="int")
    with pytest.raises(ValueError, match="Generator"):
        PairAugment(8, train=True)(out, None, None)
    with pytest.raises(ValueError, match="size"):
        PairAugment((0, 4))


# --------------------------------------------------------------------------- bad data


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


@pytest.mark.parametrize("size", [(40, 30), (17, 61), (33, 47)])
def test_resize_commutes_with_flip(size):
    """apply_crop_flip_resize flips after resizing (the smaller copy); that equals the
    release's flip-then-resize: up to float rounding for float frames, within one grey
    level for uint8 frames (fixed-point weights; the mask, resized with them as alpha,
    within MASK_LEVELS), for images and masks."""
    g = torch.Generator().manual_seed(sum(size))
    img = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=g)
    img_hwc = img.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # decoded-frame layout
    mask = torch.randint(0, 256, (1, 37, 53), dtype=torch.uint8, generator=g)
    geom = CropFlip(2, 5, 33, 47, True)
    crop = (slice(None), slice(2, 35), slice(5, 52))
    for frame in (img, img_hwc, img.float()):
        out, m = apply_crop_flip_resize(frame, mask, geom, size, output="uint8")
        pre = F.interpolate(frame[crop].flip(-1)[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        assert (out.float() - pre).abs().max() <= 1.0
        pre_m = F.interpolate(mask[crop].flip(-1)[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        _, mf = apply_crop_flip_resize(frame, mask, geom, size, output="float")
        if frame.dtype == torch.uint8:  # CPU: the mask is the alpha of the uint8 resize
            assert (m.float() - pre_m).abs().max() <= MASK_LEVELS
            assert (m.float() - pre_m.round()).abs().max() <= 1
            assert torch.equal(mf, m.float() * (1.0 / 255))
        else:  # float frames (the device path): the mask is resized in float
            assert (m.float() - pre_m).abs().max() <= 0.5 + 1e-3
            torch.testing.assert_close(mf, pre_m / 255, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- RGBA path and packed batches


@pytest.mark.parametrize("seed", range(6))
def test_rgba_resize_equals_separate_resizes(seed):
    """augment_rgba (frame and mask resized together, the mask as alpha) gives exactly the
    uint8 resize of the image alone, and the mask within MASK_LEVELS of a float resize
    (at most one level from its rounding), for down- and upscaling, with and without
    crop and flip."""
    from pdnet.data.augment import augment_rgba, pack_rgba

    g = torch.Generator().manual_seed(seed)
    h, w = 30 + 7 * seed, 70 - 5 * seed
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, 256, (1, h, w), dtype=torch.uint8, generator=g)
    if seed % 2:
        mask = (mask > 127).to(torch.uint8) * 255  # binary, as stored masks mostly are
    rng = np.random.default_rng(seed)
    for size in ((24, 24), (h * 2 - 3, w + 11), (h, w)):
        for geom in (None, sample_crop_flip(rng, h, w), CropFlip(1, 2, h - 3, w - 5, True)):
            out = augment_rgba(pack_rgba(img, mask), geom, size)
            assert out.shape == (*size, 4) and out.dtype == torch.uint8 and out.is_contiguous()
            g_ = geom or CropFlip(0, 0, h, w, False)
            crop = (slice(None), slice(g_.top, g_.top + g_.height), slice(g_.left, g_.left + g_.width))
            x = img[crop][None].contiguous(memory_format=torch.channels_last)
            ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
            ref_m = F.interpolate(mask[crop][None].float(), size=size, mode="bilinear", align_corners=False)[0]
            if g_.flip:
                ref, ref_m = ref.flip(-1), ref_m.flip(-1)
            assert torch.equal(out.permute(2, 0, 1)[:3], ref), (size, geom)
            alpha = out.permute(2, 0, 1)[3:].float()
            assert (alpha - ref_m).abs().max() <= MASK_LEVELS, (size, geom)
            assert (alpha - ref_m.round()).abs().max() <= 1, (size, geom)


@pytest.mark.parametrize("output", ["uint8", "float"])
def test_alignment_after_augmentation_outputs(tmp_path, output):
    """The alignment check of test_alignment_after_augmentation for both augmented formats
    of the RGBA path, from JPEG-free frames: mask and square stay together."""
    root = _moving_square_clip(tmp_path / "sq", frames=3, start=(5, 4), step=(7, 12), box=(11, 15))
    ds = build_dataset("davis", root, "train", size=(50, 70), augment=True, output=output, seed=1)
    for epoch in range(6):
        ds.set_epoch(epoch)
        batch = prepare_batch(next(iter(make_loader(ds, batch_size=3, workers=0, shuffle=False))))
        for frame in ("target", "reference"):
            red = batch[frame][:, 0] * IMAGENET_STD[0] + 0.485  # back to [0, 1]
            alpha = (red * 255 - 20) / 210
            assert (alpha - batch[f"{frame}_mask"][:, 0]).abs().max() <= 1.0 / 210 + 1.5 / 255, (epoch, frame)


def test_read_rgba(tmp_path):
    """read_rgba = read_image + read_mask as one buffer, for a JPEG frame (Pillow decodes
    it: same pixels as torchvision), PNG and grey frames (read_image path), palette and
    label-map masks; a size mismatch and a bad file name the file."""
    from pdnet.data.io import read_rgba

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    rgb[10:30] = (200, 30, 90)
    m = np.zeros((H, W), np.uint8)
    m[5:20, 7:33] = 255
    Image.fromarray(rgb).save(tmp_path / "f.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "f.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.jpg", quality=90)
    Image.fromarray(m).save(tmp_path / "m.png")
    pal = Image.fromarray((m > 0).astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    Image.fromarray((m > 0).astype(np.uint8)).save(tmp_path / "l01.png")
    for frame in ("f.jpg", "f.png", "g.jpg"):
        for mask, mode in (("m.png", "auto"), ("p.png", "auto"), ("l01.png", "nonzero")):
            out = read_rgba(tmp_path / frame, tmp_path / mask, mode)
            assert out.shape == (H, W, 4) and out.dtype == torch.uint8
            assert torch.equal(out.permute(2, 0, 1)[:3], read_image(tmp_path / frame)), (frame, mask)
            assert torch.equal(out.permute(2, 0, 1)[3:], read_mask(tmp_path / mask, mode)), (frame, mask)
    Image.new("L", (W + 4, H), 0).save(tmp_path / "big.png")
    for frame in ("f.jpg", "f.png"):
        with pytest.raises(DataError, match=r"big\.png: mask is 60x40 \(WxH\) but its frame .*" + frame):
            read_rgba(tmp_path / frame, tmp_path / "big.png")
    (tmp_path / "t.jpg").write_bytes((tmp_path / "f.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match=r"t\.jpg: truncated JPEG"):
        read_rgba(tmp_path / "t.jpg", tmp_path / "m.png")


def test_jpeg_decoders_agree(tmp_path):
    """The RGBA path decodes JPEGs with Pillow, read_image with torchvision: both are
    libjpeg-turbo and must give the same pixels (4:2:0 and 4:4:4 chroma, odd sizes)."""
    from pdnet.data.io import read_rgba

    rng = np.random.default_rng(3)
    for i, (h, w, sub) in enumerate(((37, 53, 2), (48, 80, 0), (481, 854, 2))):
        img = np.clip(rng.normal(128, 60, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.jpg", quality=85, subsampling=sub)
        Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / f"{i}.png")
        out = read_rgba(tmp_path / f"{i}.jpg", tmp_path / f"{i}.png")
        assert torch.equal(out.permute(2, 0, 1)[:3], read_image(tmp_path / f"{i}.jpg")), (h, w, sub)


@pytest.mark.parametrize("output", ["uint8", "float", "raw"])
def test_packed_batches(davis, output):
    """collate_pairs packs the four pixel entries into one buffer (a PairBatch): batches
    from worker processes equal in-process ones (and stacked samples), small tensors
    travel by value, prepare_batch of the packed buffer equals the per-entry path."""
    import pickle

    from pdnet.data.collate import collate_pairs
    from pdnet.data.transport import PIXEL_KEYS, PairBatch

    ds = build_dataset("davis", davis, "train", size=(24, 20), seed=3, output=output)
    ds.set_epoch(1)
    samples = [ds[i] for i in range(3)]
    batch = collate_pairs(samples)
    assert isinstance(batch, PairBatch) and batch.intact()
    assert batch.layout == ("planes" if output == "float" else "rgba")
    for k in PIXEL_KEYS:
        assert torch.equal(batch[k], torch.stack([s[k] for s in samples])), k
    assert batch["index"].tolist() == [0, 1, 2] and batch["sequence"] == ["bear"] * 3
    back = pickle.loads(pickle.dumps(batch))  # plain pickle (tensors by value)
    assert isinstance(back, PairBatch) and back.intact()
    ready = prepare_batch(batch)
    loose = prepare_batch(dict(batch))  # a plain dict: per-entry path
    for k in PIXEL_KEYS:
        assert ready[k].dtype == torch.float32 and ready[k].is_contiguous(), k
        assert torch.equal(ready[k], loose[k]) and torch.equal(prepare_batch(back)[k], ready[k]), k
    # an entry replaced: the buffer is no longer used
    changed = batch.__copy__()
    changed["target"] = changed["target"].clone()
    assert not changed.intact() and torch.equal(prepare_batch(changed)["target"], ready["target"])

    def run(workers):
        loader = make_loader(ds, batch_size=3, workers=workers, seed=4, persistent_workers=False)
        return list(loader)

    b0, b2 = run(0), run(2)
    assert len(b0) == len(b2) == 2
    for x, y in zip(b0, b2, strict=True):
        assert isinstance(y, PairBatch) and y.intact()
        assert y["size"].dtype == torch.int64 and y["index"].tolist() == x["index"].tolist()
        for k in PIXEL_KEYS:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.cuda
@pytest.mark.parametrize("output", ["uint8", "raw"])
def test_packed_batches_cuda(davis, output):
    """On a GPU: the packed buffer is pinned once (DataLoader pin_memory) and moved once;
    the result matches the CPU one (float resize there for raw: within one grey level)."""
    from pdnet.data.collate import collate_pairs
    from pdnet.data.transport import PIXEL_KEYS

    ds = build_dataset("davis", davis, "train", size=(24, 20), seed=3, output=output)
    batch = collate_pairs([ds[i] for i in range(3)])
    pinned = batch.pin_memory()
    assert pinned.intact() and pinned.pixels.is_pinned()
    cpu = prepare_batch(batch, "cpu")
    gpu = prepare_batch(pinned, "cuda")
    tol = 2e-6 if output == "uint8" else 1.0 / 255 / min(IMAGENET_STD) + 1e-5
    for k in PIXEL_KEYS:
        assert gpu[k].device.type == "cuda" and gpu[k].is_contiguous()
        assert (gpu[k].cpu() - cpu[k]).abs().max() <= (tol if "mask" not in k else MASK_LEVELS / 255), k
    loader = make_loader(ds, batch_size=3, workers=2, pin_memory=True, persistent_workers=False)
    for b in loader:
        assert b.intact() and b.pixels.is_pinned()


def test_tune_worker_malloc_only_in_workers():
    from pdnet.data.datasets import tune_worker_malloc

    assert tune_worker_malloc() is False  # the main process keeps its allocator settings


class _MallocProbe(torch.utils.data.Dataset):
    """Each sample: how often this process asked glibc to keep freed memory."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import pdnet._malloc

        return torch.tensor(pdnet._malloc.calls)


@pytest.fixture
def count_malloc_tuning(monkeypatch):
    """pdnet._malloc.keep_freed_memory counting its calls in ``pdnet._malloc.calls`` (the
    loader's worker processes are forked: they inherit the counter and the stand-in)."""
    import pdnet._malloc

    monkeypatch.setattr(pdnet._malloc, "calls", 0, raising=False)

    def counting(*args, **kwargs):
        pdnet._malloc.calls += 1
        return True

    monkeypatch.setattr(pdnet._malloc, "keep_freed_memory", counting)
    return pdnet._malloc


@pytest.mark.parametrize("keep", [False, True])
def test_worker_malloc_tuning_is_opt_in(davis, count_malloc_tuning, keep):
    """Reading samples, in this process or in loader workers, leaves malloc alone unless
    make_loader(keep_freed_memory=True) asks for it, and then only in the workers."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs forked workers, which inherit the counting stand-in")
    ds = build_dataset("davis", davis, "train", size=16)
    for i in range(len(ds)):
        ds[i]
    assert count_malloc_tuning.calls == 0
    loader = make_loader(_MallocProbe(), batch_size=1, workers=1, shuffle=False, persistent_workers=False,
                         keep_freed_memory=keep)
    loader.multiprocessing_context = "fork"
    assert [int(b) for b in loader] == [int(keep)] * 2
    assert count_malloc_tuning.calls == 0
