"""``pdnet segment`` hardening of its outputs: no data loss (outputs that are inputs, existing
masks), disk full and Ctrl-C without partial files, stale temporaries, file modes."""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from segment_helpers import one_line_error, segment, snapshot

import pdnet
from pdnet.inference import FrameSource, save_model_checkpoint
from pdnet.inference.segment import check_outputs
from pdnet.inference.video import OutputError, write_mask

pytest.importorskip("av")

# ------------------------------------------------------------------ data loss


def test_out_is_the_input_folder_is_refused(assets, tmp_path, capsys, monkeypatch):
    root, _ = assets
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in (root / "frames").iterdir():
        (frames / p.name).write_bytes(p.read_bytes())
    before = snapshot(frames)
    (tmp_path / "link").symlink_to(frames)
    monkeypatch.chdir(tmp_path)
    ck = str(root / "tiny.pt")
    for out in (str(frames), "frames", "./frames/", "link", str(tmp_path / "link" / ".." / "frames")):
        err = one_line_error(capsys, str(frames), "--checkpoint", ck, "--out", out)
        assert "is the input folder" in err and str(Path(out)) in err
        err = one_line_error(capsys, str(frames), "--checkpoint", ck, "--out", out, "--overwrite")
        assert "is the input folder" in err
    assert snapshot(frames) == before  # not a byte changed, nothing added


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(assets, tmp_path, capsys):
    root, _ = assets
    ck = str(root / "tiny.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "f1.png").symlink_to(root / "frames" / "f1.png")  # mask f1.png would land on input frame f1.png
    os.link(root / "frames" / "f2.png", out / "f2.png")  # a hard link: the same file
    before = snapshot(root / "frames")
    for extra in ([], ["--overwrite"]):
        err = one_line_error(capsys, str(root / "frames"), "--checkpoint", ck, "--out", str(out), *extra)
        assert "f1.png: this output would overwrite the input" in err
    (out / "f1.png").unlink()
    err = one_line_error(capsys, str(root / "frames"), "--checkpoint", ck, "--out", str(out), "--overwrite")
    assert "f2.png: this output would overwrite the input" in err
    # the input video named like an output video
    video = tmp_path / "v" / "overlay.mp4"
    video.parent.mkdir()
    video.write_bytes((root / "clip.mp4").read_bytes())
    err = one_line_error(capsys, str(video), "--checkpoint", ck, "--out", str(video.parent), "--overlay", "--overwrite")
    assert "overlay.mp4: this output would overwrite the input" in err
    # the checkpoint named like a mask
    (tmp_path / "v" / "00003.png").write_bytes((root / "tiny.pt").read_bytes())
    err = one_line_error(capsys, str(root / "clip.mp4"), "--checkpoint", str(tmp_path / "v" / "00003.png"),
                         "--out", str(tmp_path / "v"), "--overwrite")
    assert "00003.png: this output would overwrite the input" in err
    assert snapshot(root / "frames") == before


def test_rerun_into_existing_masks_needs_overwrite(assets, tmp_path, capsys, quick_load):
    root, _ = assets
    ck = str(root / "tiny.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # unrelated files do not matter
    argv = [str(root / "frames"), "--checkpoint", ck, "--out", str(out), "--overlay"]
    assert segment(capsys, *argv)[0] == 0
    first = snapshot(out)
    assert sorted(first) == ["f0.png", "f1.png", "f2.png", "f3.png", "notes.txt", "overlay.mp4"]
    err = one_line_error(capsys, *argv)
    assert f"{out / 'f0.png'}: already exists" in err and "--overwrite" in err
    assert snapshot(out) == first
    (out / "f0.png").unlink()
    err = one_line_error(capsys, *argv)  # the first file that would be overwritten
    assert f"{out / 'f1.png'}: already exists" in err
    assert segment(capsys, *argv, "--overwrite")[0] == 0
    assert sorted(snapshot(out)) == sorted(first) and snapshot(out)["notes.txt"] == b"mine"


def test_library_refuses_too(assets, tmp_path):
    root, model = assets
    with pytest.raises(OutputError, match="is the input folder"):
        pdnet.segment_video(model, root / "frames", root / "frames", device="cpu", progress=False)
    pdnet.segment_video(model, root / "frames", tmp_path, device="cpu", progress=False)
    with pytest.raises(OutputError, match="f0.png: already exists"):
        pdnet.segment_video(model, root / "frames", tmp_path, device="cpu", progress=False)
    src = FrameSource(root / "frames")
    assert [p.name for p in check_outputs(src, tmp_path, overwrite=True, overlay=True)] == \
        ["f0.png", "f1.png", "f2.png", "f3.png", "overlay.mp4"]


# --------------------------------------------- disk full, Ctrl-C, killed runs


def test_write_mask_disk_full_leaves_no_file(tmp_path, monkeypatch):
    from PIL import Image

    def full(self, fp, *a, **k):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "old.png").write_bytes(b"previous")
    monkeypatch.setattr(Image.Image, "save", full)
    mask = np.zeros((4, 5), np.uint8)
    with pytest.raises(OutputError, match=r"new\.png: cannot write the mask \(No space left on device\)"):
        write_mask(tmp_path / "new.png", mask)
    with pytest.raises(OutputError, match=r"old\.png: cannot write the mask"):
        write_mask(tmp_path / "old.png", mask)
    assert snapshot(tmp_path) == {"old.png": b"previous"}  # no temporary, no partial file, the old one intact


def test_disk_full_during_segmentation_is_one_line(assets, tmp_path, capsys, monkeypatch, quick_load):
    from PIL import Image

    root, _ = assets
    save = Image.Image.save
    calls = []

    def fill_up(self, fp, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            fp.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", fill_up)
    out = tmp_path / "out"
    out.mkdir()
    err = one_line_error(capsys, str(root / "frames"), "--checkpoint", str(root / "tiny.pt"), "--out", str(out),
                         "--overlay")
    assert f"{out / 'f2.png'}: cannot write the mask (No space left on device)" in err
    assert list(out.iterdir()) == []  # no 0-byte, partial or temporary file; the masks written before removed


def test_ctrl_c_is_interrupted_and_leaves_no_file(assets, tmp_path, capsys, monkeypatch, quick_load):
    from pdnet.inference import segmenter

    root, _ = assets
    predict = segmenter.VideoSegmenter.predict
    calls = []

    def interrupt(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predict(self, *a, **k)

    monkeypatch.setattr(segmenter.VideoSegmenter, "predict", interrupt)
    out = tmp_path / "a" / "out"
    rc, lines = segment(capsys, str(root / "clip.mp4"), "--checkpoint", str(root / "tiny.pt"), "--out", str(out),
                        "--overlay", "--composite", "blue")
    assert rc == 130 and lines == ["pdnet segment: interrupted"]
    assert snapshot(tmp_path) == {} and not (tmp_path / "a").exists()  # folders it created are gone too


def test_stale_temporaries_of_a_killed_run_are_removed(assets, tmp_path, capsys, quick_load):
    """``kill -9`` during a write leaves ``.<name>.<random>.tmp``; the next run into that
    folder removes the temporaries of its own outputs and nothing else."""
    root, _ = assets
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".f0.png.ab12_x9z.tmp", out / ".overlay.mp4.q1w2e3r4.mp4"]
    keep = [out / ".notes.txt.ab12cd34.tmp", out / ".f0.png.tmp", out / "f9.png"]
    for p in stale + keep:
        p.write_bytes(b"x" * 100)
    rc, _ = segment(capsys, str(root / "frames"), "--checkpoint", str(root / "tiny.pt"), "--out", str(out), "--overlay")
    assert rc == 0
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"x" * 100 for p in keep)
    # a video's masks: NNNNN.png, known or not in advance
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / ".00019.png.zzzzzzzz.tmp").write_bytes(b"x")
    rc, _ = segment(capsys, str(root / "clip.mkv"), "--checkpoint", str(root / "tiny.pt"), "--out", str(out2))
    assert rc == 0 and not (out2 / ".00019.png.zzzzzzzz.tmp").exists()


def test_outputs_get_the_usual_file_mode(assets, tmp_path, capsys, quick_load):
    """Atomic writes go through mkstemp (mode 0o600); the files put in place get the mode
    a plain open would give them (0o666 & ~umask), like any other output."""
    import stat

    root, model = assets
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        rc, _ = segment(capsys, str(root / "frames"), "--checkpoint", str(root / "tiny.pt"), "--out", str(out),
                        "--overlay")
        assert rc == 0
        ck = save_model_checkpoint(tmp_path / "m.pt", model)
    finally:
        os.umask(old)
    for p in [*out.iterdir(), ck]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
