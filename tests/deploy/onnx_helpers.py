"""Helpers of the ONNX Runtime engine tests (tests/deploy/test_runtime.py, test_segment_onnx.py).

* :func:`toy_export`: an export folder in the ``pdnet-onnx`` format whose two graphs are
  small hand-written functions (built with onnx.helper, written in well under a second),
  with :func:`toy_reference` computing the same segmentation in PyTorch with the torch
  engine's preprocessing: the engine's protocol checked without exporting a network;
* :func:`tiny_model` / :func:`real_export`: a tiny PDNet and its export by
  :func:`pdnet.deploy.export_onnx`, made once per test process (it takes tens of
  seconds, so the tests that use it are marked slow);
* :func:`clip`: a short synthetic RGB clip at a size other than the input size.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INPUT_SIZE = (64, 64)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOY_GAIN = 4.0  # the toy step's logits span about -6..6: the sigmoid's whole range matters


def clip(n: int = 4, size: tuple[int, int] = (72, 100), seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3] RGB: a moving bright disc on a textured background."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        base = rng.integers(0, 90, (h, w, 3)).astype(np.float64) + 40 * np.sin(xx / 7.0)[..., None]
        disc = (yy - h / 2) ** 2 + (xx - w / 3 - 6 * i) ** 2 < (min(h, w) / 4) ** 2
        base[disc] += np.array([150, 120, 90])
        frames.append(np.clip(base, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _toy_weights() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((1, 3, 4, 4)) * TOY_GAIN / 4).astype(np.float32)  # [1, 3, 4, 4]


def toy_export(folder: Path, input_size: tuple[int, int] = INPUT_SIZE) -> Path:
    """Write a toy export to ``folder`` (created): encode_reference.onnx, step.onnx, export.json.

    encode_reference: keys = the reference's 16x16 average pools as tokens [B, 1, N, 3],
    values = 2 * keys. step: logits_stride4 = conv4x4/4(target) + mean(keys) - mean(values) / 4
    [B, 1, H/4, W/4]; logits = its align_corners resize to H x W.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = input_size
    n = (h // 16) * (w // 16)
    folder.mkdir(parents=True, exist_ok=True)
    img = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, h, w])  # noqa: E731
    tok = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, n, 3])  # noqa: E731
    opset = [helper.make_opsetid("", 18)]

    enc = helper.make_graph(
        [
            helper.make_node("AveragePool", ["reference"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
            helper.make_node("Reshape", ["pooled", "shape3"], ["flat"]),  # [B, 3, N]
            helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),  # [B, N, 3]
            helper.make_node("Unsqueeze", ["tokens", "axis1"], ["keys"]),  # [B, 1, N, 3]
            helper.make_node("Mul", ["keys", "two"], ["values"]),
        ],
        "encode_reference",
        [img("reference")],
        [tok("keys"), tok("values")],
        initializer=[
            numpy_helper.from_array(np.array([0, 3, n], np.int64), "shape3"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    step = helper.make_graph(
        [
            helper.make_node("Conv", ["target", "weight"], ["conv"], strides=[4, 4]),  # [B, 1, H/4, W/4]
            helper.make_node("ReduceMean", ["keys", "axes"], ["kmean"], keepdims=1),  # [B, 1, 1, 1]
            helper.make_node("ReduceMean", ["values", "axes"], ["vmean"], keepdims=1),
            helper.make_node("Mul", ["vmean", "quarter"], ["vq"]),
            helper.make_node("Sub", ["kmean", "vq"], ["bias"]),
            helper.make_node("Add", ["conv", "bias"], ["logits_stride4"]),
            helper.make_node("Shape", ["target"], ["tshape"]),
            helper.make_node("Slice", ["tshape", "zero", "one"], ["bdim"]),
            helper.make_node("Concat", ["bdim", "chw"], ["sizes"], axis=0),
            helper.make_node("Resize", ["logits_stride4", "", "", "sizes"], ["logits"], mode="linear",
                             coordinate_transformation_mode="align_corners"),
        ],
        "step",
        [img("target"), tok("keys"), tok("values")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, h, w]),
         helper.make_tensor_value_info("logits_stride4", TensorProto.FLOAT, ["batch", 1, h // 4, w // 4])],
        initializer=[
            numpy_helper.from_array(_toy_weights(), "weight"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array(0.25, np.float32), "quarter"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([1, h, w], np.int64), "chw"),
        ],
    )
    graphs = {}
    for name, graph in (("encode_reference", enc), ("step", step)):
        model = helper.make_model(graph, opset_imports=opset, producer_name="pdnet-tests")
        model.ir_version = 9
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, folder / f"{name}.onnx")
        graphs[name] = {
            "file": f"{name}.onnx",
            "inputs": [{"name": i.name, "shape": _shape(i), "dtype": "float32"} for i in graph.input],
            "outputs": [{"name": o.name, "shape": _shape(o), "dtype": "float32"} for o in graph.output],
        }
    meta = {
        "format": "pdnet-onnx", "format_version": 1, "input_size": [h, w],
        "model_config": {"backbone": "toy", "parts": 1},
        "normalisation": {"mean": list(MEAN), "std": list(STD)},
        "graphs": graphs, "state": ["keys", "values"],
    }
    (folder / "export.json").write_text(json.dumps(meta, indent=1))
    return folder


def _shape(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def toy_reference(frames: np.ndarray, reference: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """The toy export's probabilities [B, 1, H, W], computed with PyTorch and the torch
    engine's preprocessing and upsampling (float64 network, so only the engine's own
    float32 rounding differs)."""
    import torch
    import torch.nn.functional as F

    from pdnet.inference.segmenter import as_frame_batch, preprocess

    x_r = preprocess(as_frame_batch(reference), input_size).double()  # [1, 3, h, w]
    x_t = preprocess(as_frame_batch(frames), input_size).double()  # [B, 3, h, w]
    keys = F.avg_pool2d(x_r, 16).flatten(2).transpose(1, 2)[:, None]  # [1, 1, N, 3]
    bias = keys.mean() - (2 * keys).mean() / 4
    l4 = F.conv2d(x_t, torch.from_numpy(_toy_weights()).double(), stride=4) + bias  # [B, 1, h/4, w/4]
    logits = F.interpolate(l4, size=frames.shape[-3:-1], mode="bilinear", align_corners=True)
    return torch.sigmoid(logits).float().numpy()


def tiny_model():
    """A PDNet (resnet18, 3 parts, input 64x64) with random BatchNorm statistics and a head
    scaled so that its logits span several units."""
    import torch

    import pdnet

    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=3, input_size=INPUT_SIZE)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        model.head.weight.mul_(20.0)
    return model


_EXPORTS: dict[str, tuple] = {}


def real_export(tmp_path_factory) -> tuple:
    """(export folder, model, checkpoint path) of :func:`tiny_model`, exported once per test process."""
    if "tiny" not in _EXPORTS:
        from pdnet.deploy import export_onnx
        from pdnet.inference import save_model_checkpoint

        root = tmp_path_factory.mktemp("onnx_export")
        model = tiny_model()
        export_onnx(model, root / "export", check=False)
        save_model_checkpoint(root / "tiny.pt", model)
        _EXPORTS["tiny"] = (root / "export", model, root / "tiny.pt")
    return _EXPORTS["tiny"]
