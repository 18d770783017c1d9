"""``pdnet segment`` hardening: every flag given a bad value is a one-line error before the
model is loaded; devices and dtypes a machine lacks."""
import numpy as np
import pytest
import torch
from segment_helpers import one_line_error

from pdnet._device import parse_device
from pdnet.cli import main
from pdnet.inference.segmenter import parse_dtype

pytest.importorskip("av")

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
