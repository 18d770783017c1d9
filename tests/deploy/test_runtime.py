"""pdnet.deploy.runtime.OnnxSegmenter: the exported graphs run with ONNX Runtime and numpy.

The engine's protocol (resize, normalisation, reference state, upsampling, sigmoid) is
checked fast on a hand-written toy export (onnx_helpers.toy_export) against the same
function in PyTorch with the torch engine's preprocessing; the slow tests export a tiny
PDNet with pdnet.deploy.export_onnx and compare masks with VideoSegmenter's.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).parent))
from onnx_helpers import INPUT_SIZE, clip, real_export, toy_export, toy_reference  # noqa: E402

from pdnet.deploy.runtime import (  # noqa: E402
    OnnxFolderError,
    OnnxSegmenter,
    bilinear_taps,
    interpolation_matrix,
    providers_for_device,
    resize_bilinear,
    sigmoid,
    to_uint8,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_export(tmp_path_factory.mktemp("toy") / "export")


@pytest.fixture(scope="module")
def toy_seg(toy):
    return OnnxSegmenter(toy, threads=1)


# ---------------------------------------------------------------------------- numpy resizing
SIZES = [  # (input H, W) -> (output H, W): up, down, mixed, 1-pixel sides, identity
    ((7, 5), (13, 17)),
    ((64, 48), (13, 9)),
    ((72, 100), (64, 64)),
    ((16, 16), (72, 100)),
    ((1, 1), (5, 3)),
    ((5, 3), (1, 1)),
    ((1, 9), (4, 1)),
    ((9, 1), (2, 6)),
    ((11, 11), (11, 11)),
    ((3, 640), (5, 7)),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("src,dst", SIZES, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b in SIZES])
def test_resize_matches_torch_interpolate(src, dst, align_corners):
    rng = np.random.default_rng(sum(src) + sum(dst))
    x = rng.standard_normal((2, 3, *src)).astype(np.float32)
    ours = resize_bilinear(x, dst, align_corners=align_corners)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=align_corners,
                        antialias=False).numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    # the same resize on channels-last axes
    hwc = resize_bilinear(x.transpose(0, 2, 3, 1), dst, align_corners=align_corners, axes=(1, 2))
    np.testing.assert_allclose(hwc.transpose(0, 3, 1, 2), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolation_matrix_is_the_taps(align_corners):
    for n_in, n_out in ((5, 9), (9, 5), (1, 4), (4, 1), (6, 6)):
        m = interpolation_matrix(n_in, n_out, align_corners)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # each output a convex combination
        eye = np.eye(n_in, dtype=np.float32)
        np.testing.assert_allclose(resize_bilinear(eye[None], (n_out, n_in), align_corners=align_corners)[0], m,
                                   atol=1e-7)
        lo, hi, frac = bilinear_taps(n_in, n_out, align_corners)
        assert lo.min() >= 0 and hi.max() <= n_in - 1 and np.all(hi - lo <= 1) and np.all((0 <= frac) & (frac <= 1))
    with pytest.raises(ValueError, match="sizes must be positive, got 0 -> 3"):
        bilinear_taps(0, 3, False)


def test_preprocess_matches_the_torch_engine(toy_seg):
    from pdnet.inference.segmenter import as_frame_batch, preprocess

    for frames in (clip(3, (72, 100)), clip(2, (40, 30)), clip(1, INPUT_SIZE), clip(2, (64, 90))):
        ref = preprocess(as_frame_batch(frames), INPUT_SIZE).numpy()
        ours = toy_seg.preprocess(frames)
        assert ours.shape == ref.shape and ours.dtype == np.float32 and ours.flags.c_contiguous
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1.5e-6)  # |x| <= 2.7 after normalising: a few ulp
        as_float = frames.astype(np.float64) / 255.0  # float frames in [0, 1]: the same input
        np.testing.assert_allclose(toy_seg.preprocess(as_float), ref, rtol=0, atol=1.5e-6)


def test_sigmoid_is_stable_and_matches_torch():
    x = np.array([-1e4, -100.0, -88.8, -20.0, -1.0, 0.0, 1e-8, 3.0, 50.0, 100.0, 1e4, np.inf, -np.inf], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow anywhere (underflow is exact 0)
        p = sigmoid(x)
    assert p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-30)
    probs = np.random.default_rng(0).random((2, 1, 5, 7), dtype=np.float32)
    probs[0, 0, 0, :3] = (0.5 / 255, 1.5 / 255, 254.5 / 255)  # rounding ties
    from pdnet.inference.segmenter import to_uint8 as torch_to_uint8

    np.testing.assert_array_equal(to_uint8(probs), torch_to_uint8(torch.from_numpy(probs)).numpy())


# ---------------------------------------------------------------------------- the protocol on the toy export
#: |p_onnx - p_torch| on the toy export: its network runs in float32 in ONNX Runtime and in float64 in
#: toy_reference, about 1e-5 on logits of up to +-30, 3e-6 on probabilities; any error in the protocol (resize
#: convention, normalisation, reference state, upsampling) moves them by more than 1e-3
TOY_ATOL = 2e-5
def test_toy_predict_and_step_match_torch(toy_seg):
    frames = clip(4, (72, 100))
    expected = toy_reference(frames, frames[:1])  # [4, 1, 72, 100]
    assert expected.min() < 0.05 and expected.max() > 0.95  # the sigmoid's whole range is exercised
    state = toy_seg.encode_reference(frames[0])
    assert state["keys"].shape == (1, 1, 16, 3) and tuple(state["frame_size"]) == (72, 100)
    batched = toy_seg.predict(frames, state)  # a batch-1 state repeated to 4
    assert batched.shape == (4, 1, 72, 100) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, expected, rtol=0, atol=TOY_ATOL)
    again = toy_seg.predict(frames[1:], state)  # another batch size: another repetition
    np.testing.assert_allclose(again, expected[1:], rtol=0, atol=TOY_ATOL)
    toy_seg.reset()
    streamed = np.stack([toy_seg.step(f) for f in frames])  # the first frame becomes the reference
    toy_seg.reset()
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=TOY_ATOL)
    as_float = toy_seg.predict(frames.astype(np.float32) / 255, state)
    np.testing.assert_allclose(as_float, expected, rtol=0, atol=TOY_ATOL)
    per_frame = {k: np.repeat(v, 4, axis=0) if k != "frame_size" else v for k, v in state.items()}
    np.testing.assert_allclose(toy_seg.predict(frames, per_frame), expected, rtol=0, atol=TOY_ATOL)


def test_toy_frame_at_the_input_size(toy_seg):
    frames = clip(2, INPUT_SIZE)
    got = toy_seg.predict(frames, toy_seg.encode_reference(frames[0]))
    np.testing.assert_allclose(got, toy_reference(frames, frames[:1]), rtol=0, atol=TOY_ATOL)


def test_runs_without_torch(toy, tmp_path):
    """The engine imports numpy and onnxruntime only: it segments where `import torch` fails."""
    frames = clip(3, (72, 100))
    np.save(tmp_path / "frames.npy", frames)
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "torchvision", "cv2", "PIL"):
            sys.modules[name] = None  # `import name` raises ImportError
        import numpy as np
        from pdnet.deploy import OnnxSegmenter
        frames = np.load({str(tmp_path / "frames.npy")!r})
        seg = OnnxSegmenter({str(toy)!r}, threads=1)
        probs = np.stack([seg.step(f) for f in frames])
        np.save({str(tmp_path / "probs.npy")!r}, probs)
        loaded = sorted(m.split(".")[0] for m in sys.modules if sys.modules[m] is not None)
        print(" ".join(sorted(set(loaded) & {{"torch", "torchvision", "cv2", "PIL", "pdnet"}})))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pdnet"]  # none of torch, torchvision, cv2, PIL
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), toy_reference(frames, frames[:1]), atol=TOY_ATOL)


# ---------------------------------------------------------------------------- bad input: one-line errors
def one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg and msg, msg
    return msg


FRAMES_BAD = [
    (np.zeros((72, 100), np.uint8), ValueError, "must be [H, W, 3] or [B, H, W, 3] RGB, got shape (72, 100)"),
    (np.zeros((72, 100, 4), np.uint8), ValueError, "got shape (72, 100, 4)"),
    (np.zeros((1, 1, 72, 100, 3), np.uint8), ValueError, "got shape (1, 1, 72, 100, 3)"),
    (np.zeros((0, 72, 100, 3), np.uint8), ValueError, "must be non-empty, got shape (0, 72, 100, 3)"),
    (np.zeros((72, 100, 3), np.int32), TypeError, "must be uint8 (0..255) or floating point (0..1), got int32"),
    (np.zeros((72, 100, 3), bool), TypeError, "got bool"),
    (torch.zeros(3, 72, 100), TypeError, "must be a numpy array [H, W, 3] or [B, H, W, 3] RGB, got Tensor"),
    ([[0, 0, 0]], TypeError, "got list"),
]


@pytest.mark.parametrize("frames,exc,expected", FRAMES_BAD, ids=[e for _, _, e in FRAMES_BAD])
def test_bad_frames(toy_seg, frames, exc, expected):
    state = toy_seg.encode_reference(clip(1)[0])
    with pytest.raises(exc) as info:
        toy_seg.predict(frames, state)
    assert expected in one_line(info) and one_line(info).startswith("predict: ")
    with pytest.raises(exc) as info:
        toy_seg.encode_reference(frames)
    assert expected in one_line(info)


def test_bad_states(toy_seg):
    frames = clip(3, (72, 100))
    state = toy_seg.encode_reference(frames[0])
    cases = [
        (clip(2, (40, 30)), state, ValueError, "frames are 40x30 but the reference frame was 72x100"),
        (frames, {**state, "keys": np.repeat(state["keys"], 2, 0), "values": np.repeat(state["values"], 2, 0)},
         ValueError, "state['keys'] has batch 2, the frames 3"),
        (frames, {**state, "keys": state["keys"][:, :, :5]}, ValueError,
         "state['keys'] has shape (1, 1, 5, 3), this export expects [1 or B, 1, 16, 3]"),
        (frames, {**state, "values": state["values"].astype(np.float64)}, TypeError,
         "state['values'] must be a float32 numpy array, got float64"),
        (frames, {"keys": state["keys"]}, ValueError, "the state has no 'values'"),
        (frames, [state["keys"], state["values"]], TypeError, "state must be the dict of encode_reference, got list"),
    ]
    for frames_, state_, exc, expected in cases:
        with pytest.raises(exc) as info:
            toy_seg.predict(frames_, state_)
        assert expected in one_line(info)
    with pytest.raises(ValueError, match="encode_reference takes one frame, got a batch of 3"):
        toy_seg.encode_reference(frames)
    toy_seg.reset()
    with pytest.raises(RuntimeError, match="no reference frame; call set_reference"):
        toy_seg.predict(frames)


def test_bad_options(toy):
    with pytest.raises(ValueError) as info:
        OnnxSegmenter(toy, threads=0)
    assert "threads must be a positive integer, got 0" in one_line(info)
    with pytest.raises(ValueError) as info:
        OnnxSegmenter(toy, providers=["NoSuchExecutionProvider"])
    assert "providers ['NoSuchExecutionProvider'] not available in this onnxruntime" in one_line(info)
    with pytest.raises(ValueError) as info:
        providers_for_device("tpu", name="--device")
    assert "--device tpu: not a device this engine runs on" in one_line(info)
    assert providers_for_device("cpu") == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError) as info:
            providers_for_device("cuda:1")
        assert "cuda:1: this onnxruntime has no CUDAExecutionProvider" in one_line(info)
        assert OnnxSegmenter(toy).providers == ["CPUExecutionProvider"]
    else:
        assert providers_for_device("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})


def _variant(toy: Path, folder: Path, edit=None, skip=()) -> Path:
    """A copy of the toy export (graphs linked) with export.json changed by ``edit(meta)``."""
    folder.mkdir()
    for f in toy.iterdir():
        if f.name != "export.json" and f.name not in skip:
            (folder / f.name).symlink_to(f)
    meta = json.loads((toy / "export.json").read_text())
    if edit is not None:
        edit(meta)
    (folder / "export.json").write_text(json.dumps(meta))
    return folder


def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split(".")
        d = meta
        for p in parents:
            d = d[p]
        d[last] = value
    return edit


FOLDERS_BAD = [
    # (variant: edit of export.json, files left out; expected exception, substring)
    ({"edit": _set("format", "tflite")}, OnnxFolderError, "export.json: format 'tflite', expected 'pdnet-onnx'"),
    ({"edit": _set("format_version", 2)}, OnnxFolderError, "format_version 2; this engine reads version 1"),
    ({"edit": _set("input_size", [64])}, OnnxFolderError, "input_size must be [H, W] with positive integers"),
    ({"edit": _set("input_size", [96, 96])}, OnnxFolderError,
     "encode_reference.onnx: input reference is 64x64, {folder}/export.json says input_size 96x96"),
    ({"edit": _set("normalisation.std", [0.2, 0.2, 0])}, OnnxFolderError, "normalisation.std must be positive"),
    ({"edit": _set("normalisation.mean", [0.5])}, OnnxFolderError, "normalisation.mean must be 3 numbers"),
    ({"edit": _set("graphs.step", None)}, OnnxFolderError, "graphs.step with its file name is missing"),
    ({"skip": ("step.onnx",)}, FileNotFoundError, "step.onnx: missing (graph 'step' of {folder}/export.json)"),
    ({"edit": _set("graphs.encode_reference.outputs", [{"name": "k"}, {"name": "v"}])}, OnnxFolderError,
     "encode_reference.onnx: outputs ['keys', 'values'] do not match {folder}/export.json's "
     "graphs.encode_reference.outputs ['k', 'v']"),
    ({"edit": _set("graphs.step.file", "encode_reference.onnx")}, OnnxFolderError,
     "inputs ['reference'] do not match"),
    ({"edit": _set("state", ["keys", "memory"])}, OnnxFolderError,
     "export.json: state ['keys', 'memory']: memory is not both an output of encode_reference and an input of step"),
]


@pytest.mark.parametrize("variant,exc,expected", FOLDERS_BAD, ids=[e[:40] for _, _, e in FOLDERS_BAD])
def test_bad_folders(toy, tmp_path, variant, exc, expected):
    folder = _variant(toy, tmp_path / "export", **variant)
    with pytest.raises(exc) as info:
        OnnxSegmenter(folder)
    assert expected.format(folder=folder) in one_line(info)


def test_missing_and_damaged_folders(toy, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        OnnxSegmenter(tmp_path / "nothing")
    assert f"{tmp_path / 'nothing'}: no such folder" in one_line(info)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OnnxFolderError) as info:
        OnnxSegmenter(tmp_path / "afile")
    assert "afile: not a folder" in one_line(info)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        OnnxSegmenter(tmp_path / "empty")
    assert f"{tmp_path / 'empty' / 'export.json'}: missing" in one_line(info)
    broken = _variant(toy, tmp_path / "broken")
    (broken / "export.json").write_text('{"format": "pdnet-onnx",')
    with pytest.raises(OnnxFolderError) as info:
        OnnxSegmenter(broken)
    assert "export.json: cannot be read as JSON" in one_line(info)
    damaged = _variant(toy, tmp_path / "damaged", skip=("step.onnx",))
    (damaged / "step.onnx").write_bytes(b"\x08\x07 not a protobuf" * 10)
    with pytest.raises(OnnxFolderError) as info:
        OnnxSegmenter(damaged)
    assert f"{damaged / 'step.onnx'}: ONNX Runtime cannot load it" in one_line(info)


# ---------------------------------------------------------------------------- a real export (slow)
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxscript")
    return real_export(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_masks_match_video_segmenter(exported, batch):
    """Masks within 1/255 of the torch engine's (float32, CPU) on frames of another size.

    Probabilities: the export's graphs match pdnet to 1e-4 * max|logits| (the export's
    self-test bound; in practice about 1e-6 relative here), and sigmoid' <= 1/4, so
    |p_onnx - p_torch| <= 1e-4 * max|logits| / 4 + 1e-6 (the numpy resizes' rounding).
    """
    from pdnet.inference import VideoSegmenter

    folder, model, _ = exported
    frames = clip(4, (72, 100))
    torch_seg = VideoSegmenter(model, device="cpu", dtype="float32")
    state = torch_seg.encode_reference(frames[0])
    expected = torch.cat([torch_seg.predict(frames[i:i + batch], state) for i in range(0, 4, batch)]).numpy()
    p = np.clip(expected.astype(np.float64), 1e-12, 1 - 1e-12)
    max_logit = np.abs(np.log(p / (1 - p))).max()
    assert max_logit > 3 and (to_uint8(expected).max() - to_uint8(expected).min()) > 100  # a real range of masks

    seg = OnnxSegmenter(folder, threads=2)
    if batch == 1:
        got = np.stack([seg.step(f) for f in frames])
    else:
        ostate = seg.encode_reference(frames[0])
        got = np.concatenate([seg.predict(frames[i:i + batch], ostate) for i in range(0, 4, batch)])
    assert got.shape == expected.shape == (4, 1, 72, 100)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max_logit / 4 + 1e-6)
    diff = np.abs(to_uint8(got).astype(int) - to_uint8(expected).astype(int))
    assert diff.max() <= 1, diff.max()
    np.testing.assert_allclose(seg.encode_reference(frames[0])["keys"], state.keys.numpy(), rtol=0,
                               atol=1e-4 * float(state.keys.abs().max()))
