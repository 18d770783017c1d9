"""``pdnet segment`` hardening: no data loss, truncated videos, one-line errors for every flag,
disk full and Ctrl-C without partial files."""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pdnet
from pdnet._device import parse_device
from pdnet.cli import main
from pdnet.inference import FrameSource, SourceError, save_model_checkpoint
from pdnet.inference.segment import check_outputs
from pdnet.inference.segmenter import parse_dtype
from pdnet.inference.video import OutputError, TruncatedVideoWarning, write_mask

pytest.importorskip("av")

N_FRAMES = 4
VIDEO_FRAMES = 20


def write_video(path, n=VIDEO_FRAMES, size=64, options=None):
    """n frames size x size, H.264 at 10 fps, written with PyAV (``options``: muxer options)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def truncate(src, dst, fraction):
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("hardening")
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(N_FRAMES):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=2, input_size=(64, 64))).eval()
    save_model_checkpoint(root / "tiny.pt", model)
    write_video(root / "clip.mp4", options={"movflags": "faststart"})  # the index first: a cut file still opens
    write_video(root / "clip.mkv")
    return root, model


def snapshot(folder):
    """{relative path: bytes} of every file under folder (hidden ones too)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def quick_load(assets, monkeypatch):
    """``pdnet segment`` gets a copy of the tiny model instead of reading and verifying tiny.pt on every run."""
    import copy

    from pdnet.inference import loading

    root, model = assets
    real = loading.load

    def load(path, *a, **k):
        return copy.deepcopy(model) if Path(path) == root / "tiny.pt" else real(path, *a, **k)

    monkeypatch.setattr(loading, "load", load)


def segment(capsys, *argv):
    """Run ``pdnet segment`` in-process (on the CPU unless argv names a device): (exit code, stderr lines)."""
    device = [] if "--device" in argv else ["--device", "cpu"]
    rc = main(["segment", *argv, *device, "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines()


def one_line_error(capsys, *argv):
    rc, lines = segment(capsys, *argv)
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("pdnet segment: error: "), lines
    return lines[0]


# ---------------------------------------------------------------------------------------- 1. data loss
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


# ------------------------------------------------------------------------------------ 2. truncated videos
def good_frames(path):
    """The number of frames a video decodes to before it ends (early)."""
    with pytest.warns(TruncatedVideoWarning):
        return len(list(FrameSource(path, allow_truncated=True)))


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv"])
def test_truncated_video_is_an_error_naming_the_last_good_frame(assets, tmp_path, capsys, quick_load, name):
    root, _ = assets
    cut = truncate(root / name, tmp_path / f"cut{Path(name).suffix}", 0.6)
    good = good_frames(cut)
    assert 0 < good < VIDEO_FRAMES
    out = tmp_path / "out"
    err = one_line_error(capsys, str(cut), "--checkpoint", str(root / "tiny.pt"), "--out", str(out))
    assert str(cut) in err and f"last good frame {good - 1}" in err and f"{good} of {VIDEO_FRAMES} frames" in err
    assert "--allow-truncated" in err
    assert not out.exists()  # the masks of the good frames were removed with the folder this run created


def test_allow_truncated_keeps_the_decoded_frames_with_a_warning(assets, tmp_path, capsys, quick_load):
    root, _ = assets
    cut = truncate(root / "clip.mkv", tmp_path / "cut.mkv", 0.6)
    good = good_frames(cut)
    out = tmp_path / "out"
    rc, lines = segment(capsys, str(cut), "--checkpoint", str(root / "tiny.pt"), "--out", str(out),
                        "--allow-truncated")
    assert rc == 0 and len(lines) == 1 and lines[0].startswith(f"pdnet segment: warning: {cut}: the video ends early")
    assert f"last good frame {good - 1}" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(good)]


@pytest.mark.parametrize("options,suffix", [({"movflags": "faststart"}, ".mp4"), ({}, ".mkv"), ({}, ".avi"),
                                            ({"movflags": "frag_keyframe+empty_moov"}, ".mp4"), ({}, ".mov")])
def test_complete_videos_pass_the_frame_count_check(tmp_path, options, suffix):
    path = tmp_path / f"v{suffix}"
    write_video(path, n=7, size=32, options=options)
    src = FrameSource(path)
    assert src.num_frames == 7 and src.count_rule
    assert len(list(src)) == 7 and src.truncated is None


def test_frame_count_from_the_duration_when_the_header_has_none(tmp_path):
    """Fragmented mp4 and Matroska files give no frame count: duration x rate is the rule."""
    frag = tmp_path / "frag.mp4"
    write_video(frag, options={"movflags": "frag_keyframe+empty_moov"})
    for path in (frag,):
        src = FrameSource(truncate(path, tmp_path / "cut.mp4", 0.6))
        assert src.num_frames == VIDEO_FRAMES and "duration" in src.count_rule
        with pytest.raises(SourceError, match=r"cut\.mp4: the video ends early \(\d+ of 20 frames decoded, "
                                              r"the stream's duration 2\.000 s x 10 fps; last good frame \d+\)"):
            list(src)


def test_mpeg_ts_is_not_checked(tmp_path):
    """MPEG-TS records no length: its duration comes from the data present, so it is not checked."""
    path = tmp_path / "v.ts"
    write_video(path, n=10, size=32)
    cut = FrameSource(truncate(path, tmp_path / "cut.ts", 0.5))
    assert cut.num_frames is None and cut.count_rule is None
    assert 0 < len(list(cut)) < 10


# -------------------------------------------------------------------------------- 3. disk full, Ctrl-C
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


# ------------------------------------------------------------------------------- 4. every flag, swept
@pytest.fixture(scope="module")
def bad_inputs(assets):
    from PIL import Image

    root, _ = assets
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty").mkdir()
    (bad / "unreadable").mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(bad / "unreadable" / "a.png")
    (bad / "unreadable" / "b.png").write_bytes(b"not a png at all")
    (bad / "sizes").mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(bad / "sizes" / "a.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(bad / "sizes" / "b.png")
    (bad / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (bad / "afile").write_text("x")
    (bad / "garbage.pt").write_bytes(b"not a checkpoint")
    return bad


SWEEP = [
    # (overrides of the default argv, expected substring of the one-line error)
    ({"--fps": "-1"}, "--fps: expected a finite frame rate in (0, 1000], got '-1'"),
    ({"--fps": "0"}, "got '0'"),
    ({"--fps": "nan"}, "got 'nan'"),
    ({"--fps": "inf"}, "got 'inf'"),
    ({"--fps": "1e9"}, "got '1e9'"),
    ({"--fps": "fast"}, "--fps: expected a number of frames per second, got 'fast'"),
    ({"--batch-size": "0"}, "--batch-size: expected a positive integer, got '0'"),
    ({"--batch-size": "-4"}, "got '-4'"),
    ({"--batch-size": "2.5"}, "got '2.5'"),
    ({"--parts": "0"}, "--parts: expected a positive integer, got '0'"),
    ({"--parts": "-1"}, "got '-1'"),
    ({"--parts": "five"}, "got 'five'"),
    ({"--input-size": "33"}, "--input-size: expected N or HxW with multiples of 32 in 32..8192, got '33'"),
    ({"--input-size": "0"}, "got '0'"),
    ({"--input-size": "-64"}, "got '-64'"),
    ({"--input-size": "64x"}, "got '64x'"),
    ({"--input-size": "64x64x64"}, "got '64x64x64'"),
    ({"--input-size": "big"}, "--input-size: expected N or HxW, got 'big'"),
    ({"--input-size": "16384"}, "got '16384'"),
    ({"--backbone": "resnet9"}, "--backbone: expected one of resnet18, resnet34, resnet50, resnet101, got 'resnet9'"),
    ({"--dtype": "int8"}, "--dtype: expected one of auto, float32, bfloat16, float16, got 'int8'"),
    ({"--device": "bogus"}, "--device bogus: not a device this engine runs on; expected auto, cpu, cuda or cuda:N"),
    ({"--device": "meta"}, "--device meta: not a device"),
    ({"--device": "cpu:1"}, "--device cpu:1: not a device"),
    ({"--device": "cuda:x"}, "--device cuda:x: not a device"),
    ({"--device": ""}, "--device: empty value ''"),
    ({"--composite": "mauve-ish"}, "'mauve-ish' is neither an existing image file nor a colour"),
    ({"--composite": "300,0,0"}, "'300,0,0' is neither"),
    ({"--composite": "#12345"}, "'#12345' is neither"),
    ({"--composite": "{bad}/garbage.png"}, "garbage.png: cannot read the background image"),
    ({"--composite": "{bad}/missing.jpg"}, "missing.jpg: no such background image file"),
    ({"--composite": ""}, "--composite: empty value ''"),
    ({"input": "{bad}/missing"}, "missing: no such file or directory"),
    ({"input": "{bad}/empty"}, "empty: folder holds no frames"),
    ({"input": "{bad}/unreadable"}, "b.png: cannot read image"),
    ({"input": "{bad}/sizes"}, "b.png: frame is 50x40 but the first frame of the folder is 48x40"),
    ({"input": "{bad}/afile"}, "afile: cannot read video"),
    ({"input": ""}, "INPUT: empty value ''"),
    ({"--checkpoint": "{bad}/missing.pt"}, "checkpoint {bad}/missing.pt does not exist"),
    ({"--checkpoint": "{bad}"}, "is a directory, not a file"),
    ({"--out": "{bad}/afile"}, "afile: the output folder is an existing file"),
    ({"--out": "{bad}/afile/sub"}, "cannot create the output folder: {bad}/afile is a file"),
    ({"--out": "{frames}"}, "is the input folder"),
    ({"--out": ""}, "--out: empty value ''"),
]


@pytest.mark.parametrize("overrides,expected", SWEEP,
                         ids=[" ".join(f"{k}={v}" for k, v in o.items()) for o, _ in SWEEP])
def test_every_flag_bad_value_is_one_line_before_loading(assets, bad_inputs, tmp_path, capsys, monkeypatch,
                                                        overrides, expected):
    from pdnet.inference import loading

    root, _ = assets

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load", no_load)
    fill = {"bad": str(bad_inputs), "frames": str(root / "frames")}
    args = {"input": str(root / "frames"), "--checkpoint": str(root / "tiny.pt"), "--out": str(tmp_path / "out")}
    args.update({k: v.format(**fill) for k, v in overrides.items()})
    argv = [args.pop("input")] + [x for kv in args.items() for x in kv]
    err = one_line_error(capsys, *argv)
    assert expected.format(**fill) in err
    assert not (tmp_path / "out").exists()


def test_device_cuda_without_cuda(assets, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    root, _ = assets
    rc = main(["segment", str(root / "frames"), "--checkpoint", str(root / "tiny.pt"), "--out", str(tmp_path / "o"),
               "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--device cuda: CUDA is not available on this machine" in err[0]


def test_damaged_checkpoint_is_one_line(assets, bad_inputs, tmp_path, capsys):
    root, _ = assets
    err = one_line_error(capsys, str(root / "frames"), "--checkpoint", str(bad_inputs / "garbage.pt"),
                         "--out", str(tmp_path / "out"))
    assert "garbage.pt" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--fps"], "argument --fps: expected one argument"),
    (["--batch-size"], "argument --batch-size: expected one argument"),
])
def test_argparse_errors_are_one_line(assets, tmp_path, capsys, argv, expected):
    root, _ = assets
    with pytest.raises(SystemExit) as e:
        main(["segment", str(root / "frames"), "--checkpoint", str(root / "tiny.pt"), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("pdnet segment: error: ") and expected in err[0]


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    with pytest.raises(ValueError, match=r"bfloat16 is not supported by cuda \(Old GPU\)"):
        parse_dtype("bfloat16", torch.device("cuda"))
    assert parse_dtype("auto", torch.device("cuda")) == torch.float16
    assert parse_dtype("float16", torch.device("cpu")) == torch.float16
    assert parse_device("cpu") == torch.device("cpu")


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
