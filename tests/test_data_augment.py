"""pdnet.data augmentation: crop, flip and resize of frame and mask (uint8, float and RGBA
paths), masks staying on what they mark, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import MASK_LEVELS, H, W, square_frame
from PIL import Image

from pdnet.data import PairAugment, build_dataset, make_loader, normalize_uint8, prepare_batch
from pdnet.data.augment import CropFlip, apply_crop_flip_resize, sample_crop_flip
from pdnet.preprocess import IMAGENET_STD, normalize

# ------------------------------------------------------ geometry and resizing


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


# -------------------------------------------------- alignment and determinism


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
