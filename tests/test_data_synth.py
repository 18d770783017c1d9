"""pdnet synth: fake-motion clips, exact masks, byte-determinism, the CLI."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdnet.cli import main as cli_main
from pdnet.data import build_dataset
from pdnet.data.synth import ClipRenderer, Figure, smooth_track, split_of, synthesize

SIZE = (48, 80)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_smooth_track_is_smooth_and_bounded():
    rng = np.random.default_rng(0)
    x = smooth_track(rng, 200, (3,), 8, -1.0, 1.0)
    assert x.shape == (200, 3)
    assert np.abs(x).max() < 1.5  # Catmull-Rom overshoots the knot range only a little
    step = np.abs(np.diff(x, axis=0)).max()
    accel = np.abs(np.diff(x, 2, axis=0)).max()
    # knots 8 frames apart: per-frame steps ~ 2/8, second differences ~ 2/8^2 (i.i.d.
    # values in [-1, 1] would give steps and second differences up to 2 and 4)
    assert step < 0.5 and accel < 0.25


def _features(seed, n, frames=6):
    """Clip indices of seed ``seed`` covering: a figure, a cut-out, two people, text, out of frame."""
    want = {"figure", "cutout", "two", "text", "out"}
    picked = []
    for idx in range(n):
        r = ClipRenderer(seed, idx, frames, SIZE)
        got = set()
        kinds = [p.kind for p in r.people]
        got |= {"figure"} if "figure" in kinds else set()
        got |= {"cutout"} if set(kinds) & {"astronaut", "camera"} else set()
        got |= {"two"} if len(kinds) == 2 else set()
        got |= {"text"} if r.subtitle is not None else set()
        got |= {"out"} if any(p.out_of_frame for p in r.people) else set()
        if got & want:
            picked.append(idx)
            want -= got
        if not want:
            return picked
    raise AssertionError(f"seed {seed}: no clip with {want} among {n}")


def test_masks_match_what_was_drawn():
    """Rendered with flat debug colours (same random draws, so the same geometry), the
    person pixels are exactly the mask, and the textured render has the same mask."""
    for idx in _features(seed=1, n=40):
        textured = ClipRenderer(1, idx, 6, SIZE)
        flat = ClipRenderer(1, idx, 6, SIZE, flat=True)
        for t in range(6):
            img, mask = textured.frame(t)
            fimg, fmask = flat.frame(t)
            assert img.shape == (*SIZE, 3) and img.dtype == np.uint8 and mask.dtype == bool
            person = (fimg[..., 0] == 255) & (fimg[..., 1] == 0) & (fimg[..., 2] == 0)
            assert np.array_equal(person, fmask), (idx, t)
            assert np.array_equal(mask, fmask), (idx, t)
            if flat.subtitle is not None:
                fill, edge = flat.subtitle.at(t)
                text = (fill | edge).numpy()
                assert not (mask & text).any()  # text in front of the person is not person
                assert ((fimg[..., 1] == 255) == text).all()
            if t == 0:
                assert mask.any()


def test_out_of_frame_person_leaves_and_returns():
    seed, idx = 2, None
    for i in range(60):
        r = ClipRenderer(seed, i, 9, SIZE, flat=True)
        if len(r.people) == 1 and r.people[0].out_of_frame and r.subtitle is None:
            idx = i
            break
    assert idx is not None
    areas = [r.frame(t)[1].sum() for t in range(9)]
    assert areas[4] < 0.8 * areas[0] and areas[4] < 0.8 * areas[8]  # about half of it out at mid-clip
    assert areas[4] > 0  # but not all


def test_figure_parts_move_independently():
    """Arms move on their own: the figure's silhouette changes much more in the arm
    region than the torso moves, and head, torso and arm tracks differ."""
    rng = np.random.default_rng(0)
    fig = Figure(rng, 12, (96, 96), cx=48.0, height=70.0, flat=True)
    assert not np.allclose(fig.shoulder[0], fig.shoulder[1])
    assert np.ptp(fig.shoulder[0]) > 3 * np.ptp(fig.torso_angle)  # fast arms, slow torso
    masks = [fig.render(t)[1] for t in range(12)]
    changed = np.mean([(masks[t] ^ masks[t + 1]).sum() for t in range(11)])
    assert changed > 20
    rgb, alpha = fig.render(0)
    assert rgb.shape == (96, 96, 3)
    assert (rgb[alpha] == np.array([255.0, 0.0, 0.0], np.float32)).all()  # flat colour on every figure pixel
    assert (rgb[~alpha] == 0).all()


def test_renderer_determinism():
    a = ClipRenderer(5, 3, 4, SIZE)
    b = ClipRenderer(5, 3, 4, SIZE)
    c = ClipRenderer(6, 3, 4, SIZE)
    fa = [a.frame(t) for t in range(4)]
    fb = [b.frame(t) for t in range(4)]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(fa, fb, strict=True))
    assert any(not np.array_equal(x[0], c.frame(t)[0]) for t, x in enumerate(fa))
    # the clip moves
    assert any(not np.array_equal(fa[0][0], f[0]) for f in fa[1:])


def test_synthesize_writes_davis_layout_deterministically(tmp_path):
    kw = dict(clips=3, frames=3, size=SIZE, seed=4, progress=False)
    a = synthesize(tmp_path / "a", **kw)
    b = synthesize(tmp_path / "b", workers=2, **kw)  # worker processes: same bytes
    c = synthesize(tmp_path / "c", **{**kw, "seed": 5})
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    assert (a / "ImageSets/480p/train.txt").read_text().splitlines()[0] == (
        "/JPEGImages/480p/clip0000/00000.jpg /Annotations/480p/clip0000/00000.png"
    )
    assert (a / "ImageSets/2016/val.txt").read_text() == "clip0002\n"
    # masks on disk: 0/255, the renderer's masks; frames: close to the renderer's (JPEG)
    r = ClipRenderer(4, 1, 3, SIZE)
    for t in range(3):
        img, mask = r.frame(t)
        m = np.asarray(Image.open(a / f"Annotations/480p/clip0001/{t:05d}.png"))
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        assert np.array_equal(m == 255, mask)
        jpg = np.asarray(Image.open(a / f"JPEGImages/480p/clip0001/{t:05d}.jpg")).astype(np.float32)
        assert jpg.shape == (*SIZE, 3) and np.abs(jpg - img).mean() < 8.0
    # readable by the DAVIS reader
    ds = build_dataset("davis", a, "train", size=32)
    assert ds.sequences == ["clip0000", "clip0001"] and len(ds) == 6
    assert ds[4]["target"].shape == (3, 32, 32)
    val = build_dataset("auto", a, "val", size=32)
    assert val.sequences == ["clip0002"] and not val.augment


def test_split_of():
    assert [split_of(i, 10, 0.2) for i in range(10)] == ["train"] * 8 + ["val"] * 2
    assert [split_of(i, 2, 0.2) for i in range(2)] == ["train", "val"]  # at least one val clip
    assert [split_of(i, 1, 0.5) for i in range(1)] == ["train"]
    assert [split_of(i, 3, 0.0) for i in range(3)] == ["train"] * 3


def test_cli(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["--clips", "2", "--frames", "2", "--size", "32x48", "--seed", "1", "--quiet"]
    assert cli_main(["synth", str(out), *args]) == 0
    assert "wrote 2 clips x 2 frames (32x48)" in capsys.readouterr().out
    assert len(list((out / "JPEGImages/480p").iterdir())) == 2
    assert cli_main(["synth", str(out), "--clips", "1", "--frames", "1", "--size", "32x48", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["synth", str(tmp_path / "x"), "--size", "8x4000"])
    assert e.value.code == 2
    assert "size must be HxW" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path / "y"), "--clips", "0", "--quiet"]) == 2
