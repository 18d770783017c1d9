"""``pdnet segment`` / ``segment_video`` end to end on a tiny synthetic clip (CPU, PyAV)."""
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pdnet
from pdnet.cli import main
from pdnet.inference import FrameSource, SourceError, VideoWriter, save_model_checkpoint
from pdnet.inference.video import background, parse_colour

pytest.importorskip("av")

H, W, N = 96, 128, 8  # frame size deliberately not a multiple of 32 in width/height ratio to the input


def astronaut_clip():
    """8 frames [H, W, 3] uint8: the astronaut's person pixels moving over a striped background."""
    from PIL import Image
    from skimage import data

    img = np.asarray(Image.fromarray(data.astronaut()).resize((W, H), Image.BILINEAR))
    with resources.files("pdnet.assets").joinpath("astronaut_mask.png").open("rb") as f:
        mask = np.asarray(Image.open(f).convert("L").resize((W, H), Image.NEAREST)) >= 128
    yy, xx = np.mgrid[:H, :W]
    bg = np.stack([(xx * 2) % 256, (yy * 3) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    frames = []
    for i in range(N):
        m = np.roll(mask, 2 * i, axis=1)[..., None]
        frames.append(np.where(m, np.roll(img, 2 * i, axis=1), bg).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    frames = astronaut_clip()
    writer = VideoWriter(root / "clip.mp4", 10, (H, W))
    for f in frames:
        writer.write(f)
    writer.close()
    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=5, input_size=(64, 64))).eval()
    save_model_checkpoint(root / "small.pt", model, {"note": "random test model"})
    return root, frames, model


def expected_masks(model, frames):
    """round(255 * p) by the release protocol written out with the plain PDNet (reference path)."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    x = pdnet.preprocess.normalize(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
    with torch.no_grad():
        p = torch.sigmoid(model(x, x[:1].expand_as(x), size=(H, W)))[:, 0]
    return torch.round(p * 255).to(torch.uint8).numpy(), p.numpy()


def read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def decode(path):
    return [f for _, f in FrameSource(path)]


def test_cli_segment_video_end_to_end(workdir, capsys):
    root, _, model = workdir
    out = root / "out"
    rc = main(["segment", str(root / "clip.mp4"), "--checkpoint", str(root / "small.pt"), "--out", str(out),
               "--overlay", "--composite", "green", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "8 frames (128x96)" in printed and "fast path" in printed
    decoded = decode(root / "clip.mp4")  # what the command saw (H.264 is lossy)
    assert len(decoded) == N
    want, probs = expected_masks(model, decoded)
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(N)]
    got = np.stack([read_png(out / n) for n in names])
    assert got.shape == (N, H, W)
    # fast path vs reference path differ by float rounding: a value on a .5 boundary may move by one level
    assert np.abs(got.astype(int) - want).max() <= 1
    assert (got == want).mean() > 0.99
    assert got.std() > 0  # not a constant image

    overlay, composite = decode(out / "overlay.mp4"), decode(out / "composite.mp4")
    assert len(overlay) == len(composite) == N and overlay[0].shape == composite[0].shape == (H, W, 3)
    frames = np.stack(decoded).astype(float)
    p = probs[..., None]
    green = np.array(parse_colour("green"), dtype=float)
    want_comp = frames * p + green * (1 - p)
    err = np.abs(np.stack(composite).astype(float) - want_comp).mean()
    assert err < 4.0, err  # H.264 at crf 18
    assert np.abs(frames - want_comp).mean() > 4 * err  # the background really was replaced
    want_over = frames * (1 - 0.5 * p) + np.array([0, 255, 0.0]) * 0.5 * p
    assert np.abs(np.stack(overlay).astype(float) - want_over).mean() < 4.0


def test_segment_video_folder_batched(workdir, tmp_path):
    from PIL import Image

    root, frames, model = workdir
    src = tmp_path / "frames"
    src.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"f_{i:02d}.png")
    (src / "notes.txt").write_text("not a frame")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "bg.png")
    summary = pdnet.segment_video(model, src, tmp_path / "out", batch_size=3, device="cpu", progress=False,
                                  composite=tmp_path / "bg.png")
    assert summary["frames"] == N and summary["size"] == (H, W) and summary["batch_size"] == 3
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == [f"f_{i:02d}.png" for i in range(N)]
    got = np.stack([read_png(tmp_path / "out" / n) for n in names])
    want, _ = expected_masks(model, frames)  # PNG frames: lossless
    assert np.abs(got.astype(int) - want).max() <= 1 and (got == want).mean() > 0.99
    assert len(decode(tmp_path / "out" / "composite.mp4")) == N


def test_cli_errors_are_one_line(workdir, tmp_path, capsys):
    root, _, model = workdir
    clip, ck = str(root / "clip.mp4"), str(root / "small.pt")

    def run(*argv):
        rc = main(["segment", *argv, "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) >= 1 and "Traceback" not in err
        return err

    assert "missing.pt" in run(clip, "--checkpoint", str(tmp_path / "missing.pt"))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    err = run(str(tmp_path / "broken.mp4"), "--checkpoint", ck)
    assert "broken.mp4" in err and "cannot read video" in err
    assert "no such file" in run(str(tmp_path / "nothing.mov"), "--checkpoint", ck)
    (tmp_path / "empty").mkdir()
    assert "holds no frames" in run(str(tmp_path / "empty"), "--checkpoint", ck)
    sd = pdnet.to_release_state_dict(model)
    del sd["ipda.part_v_conv.4.weight"]
    torch.save({"model": sd}, tmp_path / "release_bad.pth")
    err = run(clip, "--checkpoint", str(tmp_path / "release_bad.pth"))
    assert "release_bad.pth" in err and "missing keys (1): ipda.part_v_conv.4.weight" in err
    assert "neither an existing image file nor a colour" in run(clip, "--checkpoint", ck, "--composite", "mauve-ish")


def test_folder_with_mixed_sizes_names_the_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(SourceError, match=r"b\.png: frame is 40x32 but the first frame of the folder is 32x32"):
        list(FrameSource(tmp_path))


def test_background_specs(tmp_path):
    assert parse_colour("#00ff80") == (0, 255, 128) and parse_colour("1,2,3") == (1, 2, 3)
    assert parse_colour("1,2,300") is None and parse_colour("nope") is None
    bg = background("white", (5, 7))
    assert bg.shape == (3, 5, 7) and bg.dtype == torch.uint8 and int(bg.min()) == 255
    from PIL import Image

    Image.fromarray(np.full((10, 20, 3), 40, np.uint8)).save(tmp_path / "bg.jpg")
    img = background(tmp_path / "bg.jpg", (5, 7))
    assert img.shape == (3, 5, 7) and abs(int(img.float().mean()) - 40) <= 2
