"""pdnet.data: the readers of each layout (DAVIS, MVPS, PP-HumanSeg, image folders) and of
single files (masks; a frame and its mask as one RGBA buffer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import H, W, make_davis, square_frame, write_pair
from PIL import Image

from pdnet.data import (
    DataError,
    ImagePairDataset,
    VideoPairDataset,
    build_dataset,
    detect_layout,
    read_image,
    read_mask,
)
from pdnet.preprocess import normalize

# -------------------------------------------------------------------- layouts


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


# --------------------------------------------------------------- single files


def test_read_mask_modes(tmp_path):
    m = np.array([[0, 1, 128, 255]], np.uint8)
    Image.fromarray(m, mode="L").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[[0, 1, 128, 255]]]
    assert read_mask(tmp_path / "m.png", "nonzero").tolist() == [[[0, 255, 255, 255]]]
    with pytest.raises(ValueError, match="mode"):
        read_mask(tmp_path / "m.png", "bogus")


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
