"""``pdnet segment --engine onnxruntime --onnx DIR`` and ``segment_video`` with an OnnxSegmenter.

Fast: the command on the toy export (tests/deploy/onnx_helpers.py) against the same
function in PyTorch, and every option error. Slow: a tiny PDNet exported with
pdnet.deploy.export_onnx, whose masks must be within 1/255 of ``--engine torch``'s.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("av")

sys.path.insert(0, str(Path(__file__).parent))
from onnx_helpers import clip, real_export, toy_export, toy_reference  # noqa: E402
from segment_helpers import one_line_error, segment, write_video  # noqa: E402

import pdnet  # noqa: E402
from pdnet.deploy.runtime import OnnxSegmenter, to_uint8  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(root with frames/ (4 PNG frames 72x100) and a placeholder checkpoint file, the toy export, the frames)."""
    root = tmp_path_factory.mktemp("segment_onnx")
    frames = clip(4, (72, 100))
    (root / "frames").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(root / "frames" / f"f{i}.png")
    (root / "tiny.pt").write_bytes(b"never read: the options are refused first")
    (root / "not_an_export").mkdir()
    return root, toy_export(root / "toy"), frames


def masks(folder: Path, names) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / n)) for n in names])


@pytest.mark.parametrize("batch", [1, 3])
def test_cli_onnxruntime_on_the_toy_export(inputs, tmp_path, capsys, batch):
    root, toy, frames = inputs
    rc, err = segment(capsys, str(root / "frames"), "--engine", "onnxruntime", "--onnx", str(toy),
                      "--out", str(tmp_path / "out"), "--batch-size", str(batch), "--overlay",
                      "--dtype", "float32", "--input-size", "64")  # the export's own size and precision: accepted
    assert rc == 0, err
    expected = to_uint8(toy_reference(frames, frames[:1]))[:, 0]  # [4, 72, 100]
    got = masks(tmp_path / "out", [f"f{i}.png" for i in range(4)])
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (tmp_path / "out" / "overlay.mp4").stat().st_size > 0
    assert {p.name for p in toy.iterdir()} == {"export.json", "encode_reference.onnx", "step.onnx"}


def test_segment_video_takes_an_onnx_segmenter(inputs, tmp_path):
    root, toy, frames = inputs
    seg = OnnxSegmenter(toy, threads=1)
    summary = pdnet.segment_video(seg, root / "frames", tmp_path / "out", batch_size=2, composite="blue",
                                  progress=False)
    assert summary["frames"] == 4 and summary["size"] == (72, 100) and summary["batch_size"] == 2
    assert summary["device"] == "onnxruntime (CPUExecutionProvider)" and summary["dtype"] == "float32"
    expected = to_uint8(toy_reference(frames, frames[:1]))[:, 0]
    got = masks(tmp_path / "out", [f"f{i}.png" for i in range(4)])
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert summary["composite"] == str(tmp_path / "out" / "composite.mp4")


OPTION_ERRORS = [
    # (argv after INPUT and --out, expected substring of the one-line error); {toy}, {root} filled in
    (["--checkpoint", "{root}/tiny.pt", "--onnx", "{toy}"],
     "--onnx: only with --engine onnxruntime (the torch engine runs --checkpoint)"),
    ([], "--checkpoint FILE is required (or --engine onnxruntime --onnx DIR)"),
    (["--engine", "onnxruntime"], "--engine onnxruntime: --onnx DIR is required"),
    (["--engine", "tensorrt", "--onnx", "{toy}"], "--engine: expected one of torch, onnxruntime, got 'tensorrt'"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--checkpoint", "{root}/tiny.pt"],
     "--checkpoint: not an option of --engine onnxruntime (the weights are in the --onnx export)"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--dtype", "bfloat16"],
     "--dtype bfloat16: not an option of --engine onnxruntime (ONNX Runtime runs the export in float32)"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--dtype", "float16"], "--dtype float16: not an option"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--reference-path"], "--reference-path: not an option"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--backbone", "resnet50"], "--backbone: not an option"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--parts", "2"], "--parts: not an option"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--input-size", "96"],
     "--input-size 96x96: the export {toy} runs at 64x64 (fixed when exported: pdnet export --input-size)"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--input-size", "64x96"], "--input-size 64x96: the export"),
    (["--engine", "onnxruntime", "--onnx", "{root}/missing"], "--onnx: {root}/missing: no such folder"),
    (["--engine", "onnxruntime", "--onnx", "{root}/not_an_export"],
     "--onnx: {root}/not_an_export/export.json: missing"),
    (["--engine", "onnxruntime", "--onnx", ""], "--onnx: empty value ''"),
    (["--engine", "onnxruntime", "--onnx", "{toy}", "--device", "tpu"],
     "--device tpu: not a device this engine runs on"),
]


@pytest.mark.parametrize("argv,expected", OPTION_ERRORS, ids=[e[:48] for _, e in OPTION_ERRORS])
def test_option_errors_are_one_line(inputs, tmp_path, capsys, argv, expected):
    root, toy, _ = inputs
    fill = {"toy": str(toy), "root": str(root)}
    err = one_line_error(capsys, str(root / "frames"), "--out", str(tmp_path / "out"),
                         *(a.format(**fill) for a in argv))
    assert expected.format(**fill) in err
    assert not (tmp_path / "out").exists()


def test_cuda_device_without_a_cuda_onnxruntime(inputs, tmp_path, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    root, toy, _ = inputs
    err = one_line_error(capsys, str(root / "frames"), "--out", str(tmp_path / "out"), "--engine", "onnxruntime",
                         "--onnx", str(toy), "--device", "cuda")
    assert "--device cuda: this onnxruntime has no CUDAExecutionProvider" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- a real export (slow)
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxscript")
    return real_export(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("source,batch", [("frames", 1), ("frames", 3), ("video", 2)])
def test_cli_onnxruntime_matches_torch_engine(inputs, exported, tmp_path, capsys, source, batch):
    """The same command with either engine: masks within 1/255 (the export's float32 graphs
    against the torch engine's float32 fast path; see test_runtime.test_masks_match_video_segmenter)."""
    root, _, _ = inputs
    folder, _, checkpoint = exported
    if source == "video":
        src = tmp_path / "clip.mp4"
        write_video(src, n=5, size=80)
        names = [f"{i:05d}.png" for i in range(5)]
    else:
        src = root / "frames"
        names = [f"f{i}.png" for i in range(4)]
    rc, err = segment(capsys, str(src), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "torch"),
                      "--batch-size", str(batch), "--dtype", "float32")
    assert rc == 0, err
    rc, err = segment(capsys, str(src), "--engine", "onnxruntime", "--onnx", str(folder),
                      "--out", str(tmp_path / "onnx"), "--batch-size", str(batch), "--overlay")
    assert rc == 0, err
    a, b = masks(tmp_path / "torch", names), masks(tmp_path / "onnx", names)
    assert a.max() - a.min() > 100  # masks with a real range
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
