"""ONNX export (pdnet.deploy.export_onnx, ``pdnet export``): each graph run by ONNX Runtime
equals pdnet in float32 (batch 1 and 3), names, shapes, domains, export.json, the
command line's errors, the overwrite rule and the atomic write.

One real export per module (module-scoped fixture, about 10 s on 2 cores); the tests that
need a second export run it with the module's graphs in place of torch.onnx's (the
pipeline around it, checks, self-test and files, is the real one) or are marked slow.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import pdnet  # noqa: E402
from pdnet import cli  # noqa: E402
from pdnet.deploy import export as export_module  # noqa: E402
from pdnet.deploy.export import GRAPH_FILES, SelfTestError, export_onnx  # noqa: E402
from pdnet.inference import save_model_checkpoint  # noqa: E402
from pdnet.model import ReferenceState  # noqa: E402
from pdnet.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

SIZE = (64, 96)
TOLERANCE = 1e-4  # max|onnx - pdnet| / max|pdnet|, float32
OUTPUT_FILES = (*GRAPH_FILES.values(), "export.json")


def tiny_model(parts: int, size=SIZE, seed: int = 0) -> pdnet.PDNet:
    """A resnet18 PDNet whose BatchNorms have non-trivial statistics and affine parameters.

    The statistics stay near a trained network's (mean in +-0.2, variance 0.5..2, gamma
    0.9..1.1, beta in +-0.05): with gains far above 1 the random network's logits reach
    hundreds and its attention is nearly one-hot, so that any two float32 computations
    of it (PDNet, FastPDNet, ONNX Runtime) can differ by 1e-4 of the logits on some inputs.
    """
    torch.manual_seed(seed)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=parts, input_size=size)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.2 + 0.9)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.1 - 0.05)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, folder, export_onnx's result): the module's one real export (parts 3, 64x96)."""
    model = tiny_model(parts=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("onnx") / "export"
    result = export_onnx(model, out)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "export_onnx changed the model"
    assert not model.training
    return model, out, result


_SESSIONS: dict[Path, "ort.InferenceSession"] = {}


def session(path: Path):
    """An ONNX Runtime session of ``path`` (one per file of the module's export)."""
    if path not in _SESSIONS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        _SESSIONS[path] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def relative(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    return float(np.abs(got - want).max() / np.abs(want).max())


def frames(batch: int, seed: int, size=SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- the graphs
@pytest.mark.parametrize("batch", [1, 3])
def test_graphs_equal_pdnet(exported, batch):
    model, out, _ = exported
    target, reference = frames(batch, 10 + batch), frames(batch, 20 + batch)
    H, W = SIZE
    with torch.no_grad():
        state = model.encode_reference(reference)
        want_logits = model(target, reference)
        want_step = model(target, ReferenceState(state.keys, state.values, SIZE))
        want_stride4 = model(target, ReferenceState(state.keys, state.values, SIZE), size=(H // 4, W // 4))
    (logits,) = session(out / "pdnet.onnx").run(None, {"target": target.numpy(), "reference": reference.numpy()})
    assert relative(logits, want_logits) <= TOLERANCE
    keys, values = session(out / "encode_reference.onnx").run(["keys", "values"], {"reference": reference.numpy()})
    assert relative(keys, state.keys) <= TOLERANCE and relative(values, state.values) <= TOLERANCE
    feeds = {"target": target.numpy(), "keys": state.keys.numpy(), "values": state.values.numpy()}
    logits, stride4 = session(out / "step.onnx").run(["logits", "logits_stride4"], feeds)
    assert relative(logits, want_step) <= TOLERANCE and relative(stride4, want_stride4) <= TOLERANCE
    # the frames of a batch are independent: the first frame alone gives the first row
    (first,) = session(out / "pdnet.onnx").run(None, {"target": target[:1].numpy(), "reference": reference[:1].numpy()})
    assert relative(first, want_logits[:1]) <= TOLERANCE


def test_step_with_a_repeated_batch1_state(exported):
    """step.onnx's keys share the batch axis: a cached batch-1 state is repeated by the caller."""
    model, out, _ = exported
    target, reference = frames(3, 31), frames(1, 32)
    with torch.no_grad():
        state = model.encode_reference(reference)
        want = model(target, state)  # PDNet broadcasts a batch-1 state
    keys, values = (np.repeat(t.numpy(), 3, axis=0) for t in (state.keys, state.values))
    (logits, _) = session(out / "step.onnx").run(None, {"target": target.numpy(), "keys": keys, "values": values})
    assert relative(logits, want) <= TOLERANCE


def test_names_shapes_and_batch_axis(exported):
    model, out, _ = exported
    H, W = SIZE
    p, d, n = model.config.parts, model.config.attention_dim, (H // 16) * (W // 16)
    expected = {
        "pdnet.onnx": ({"target": [3, H, W], "reference": [3, H, W]}, {"logits": [1, H, W]}),
        "encode_reference.onnx": ({"reference": [3, H, W]}, {"keys": [p, n, d], "values": [p, n, d]}),
        "step.onnx": (
            {"target": [3, H, W], "keys": [p, n, d], "values": [p, n, d]},
            {"logits": [1, H, W], "logits_stride4": [1, H // 4, W // 4]},
        ),
    }
    for name, (inputs, outputs) in expected.items():
        s = session(out / name)
        for got, want in ((s.get_inputs(), inputs), (s.get_outputs(), outputs)):
            assert [a.name for a in got] == list(want), name
            for a in got:
                assert a.shape == ["batch", *want[a.name]], (name, a.name, a.shape)
                assert a.type == "tensor(float)"


def test_checker_and_standard_domains(exported):
    _, out, _ = exported
    for name in GRAPH_FILES.values():
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}, name
        local = {f.domain for f in model.functions}
        nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
        outside = {(n.domain, n.op_type) for n in nodes if n.domain not in ("", "ai.onnx") and n.domain not in local}
        assert not outside, f"{name}: nodes outside the default ONNX domain: {outside}"
        assert not any(a.type == onnx.AttributeProto.GRAPH for n in nodes for a in n.attribute)  # no subgraphs
        ops = {n.op_type for n in nodes}
        assert "Conv" in ops and "BatchNormalization" not in ops, name  # the folded inference form
        assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
        assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["pdnet_graph"] == name.removesuffix(".onnx") and props["input_size"] == "64x96"
    assert {"MatMul", "Softmax"} <= {n.op_type for n in onnx.load(str(out / "step.onnx")).graph.node}
    # pdnet.onnx is encode_reference's nodes feeding step's: the shared weights are stored once
    assert (out / "pdnet.onnx").stat().st_size < 1.01 * (out / "step.onnx").stat().st_size


def test_export_json(exported):
    model, out, result = exported
    meta = json.loads((out / "export.json").read_text())
    assert meta["format"] == "pdnet-onnx" and meta["format_version"] == 1
    assert meta["pdnet_version"] == pdnet.__version__ and meta["torch_version"] == torch.__version__
    assert meta["onnx_opset"] == 18 and meta["input_size"] == list(SIZE)
    assert meta["model_config"] == model.config.to_dict()
    assert meta["normalisation"]["mean"] == list(IMAGENET_MEAN) and meta["normalisation"]["std"] == list(IMAGENET_STD)
    assert "half-pixel" in meta["normalisation"]["input"]
    assert meta["output"]["probability"] == "sigmoid(logits)" and "logits" in meta["output"]
    assert meta["state"] == ["keys", "values"] and meta["checkpoint"] is None
    assert set(meta["graphs"]) == set(GRAPH_FILES)
    for graph, info in meta["graphs"].items():
        assert info["file"] == GRAPH_FILES[graph]
        s = session(out / info["file"])
        for listed, actual in ((info["inputs"], s.get_inputs()), (info["outputs"], s.get_outputs())):
            assert [(v["name"], v["shape"], v["dtype"]) for v in listed] == [
                (a.name, a.shape, "float32") for a in actual
            ]
    assert set(meta["self_test"]) == set(GRAPH_FILES)
    assert all(0 <= e <= TOLERANCE for e in meta["self_test"].values())
    assert meta["self_test"] == result["self_test"]
    assert result["files"] == {g: str(out / f) for g, f in GRAPH_FILES.items()}
    assert result["sizes"] == {g: (out / f).stat().st_size for g, f in GRAPH_FILES.items()}
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temporary file left


# ------------------------------------------------------------------------- errors and files
@pytest.mark.parametrize("size", [(100, 100), (64, 0), (-32, 64), 48, (64,), "64", (64.5, 64), (True, 64)])
def test_bad_input_size(tmp_path, size):
    with pytest.raises(ValueError, match="export_onnx: input_size") as info:
        export_onnx(tiny_model(1, (64, 64)), tmp_path / "x", input_size=size)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_bad_model_and_opset(tmp_path):
    with pytest.raises(TypeError, match="pdnet.PDNet or a checkpoint path"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match="opset must be an integer in 18"):
        export_onnx(tiny_model(1, (64, 64)), tmp_path, opset=11)
    with pytest.raises(ValueError, match="backbone= and parts= apply to a checkpoint path"):
        export_onnx(tiny_model(1, (64, 64)), tmp_path, backbone="resnet18")


def reuse_exported_graphs(monkeypatch, folder: Path, fail_at: str | None = None, change=None):
    """export_onnx's torch.onnx step replaced by the module's exported graphs (loaded from
    ``folder``): raises KeyboardInterrupt at graph ``fail_at``; ``change(graph, proto)``
    may alter a graph."""
    def export_graph(module, args, input_names, output_names, opset):
        graph = {"reference": "encode_reference", "target": "pdnet" if "reference" in input_names else "step"}
        graph = graph[input_names[0]]
        if graph == fail_at:
            raise KeyboardInterrupt
        proto = onnx.load(str(folder / GRAPH_FILES[graph]))
        if change is not None:
            change(graph, proto)
        return proto

    monkeypatch.setattr(export_module, "_export_graph", export_graph)


def test_overwrite_rule(exported, tmp_path):
    model, _, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "step.onnx").write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"already holds step\.onnx \(overwrite=True replaces them\)") as info:
        export_onnx(model, out)
    assert "\n" not in str(info.value) and (out / "step.onnx").read_bytes() == b"old"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        export_onnx(model, tmp_path / "file")
    # replacing an export: tests/deploy/test_export.py::test_cli_writes_the_export


def test_interrupted_export_leaves_no_file(exported, tmp_path, monkeypatch):
    """Interrupted at the last graph: the two graphs written so far (temporary files) are
    removed, and an earlier export in the folder stays whole."""
    model, folder, _ = exported
    reuse_exported_graphs(monkeypatch, folder, fail_at="step")
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    for name in OUTPUT_FILES:
        (old / name).write_bytes(b"previous " + name.encode())
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, old, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == sorted(OUTPUT_FILES)
    assert all((old / name).read_bytes() == b"previous " + name.encode() for name in OUTPUT_FILES)


_TERMINATED = """
import os, signal, sys
import onnx, torch
from pdnet.deploy import export as export_module
from pdnet.inference import load

folder, out = sys.argv[1], sys.argv[2]

def export_graph(module, args, input_names, output_names, opset):
    if input_names[0] == "target":  # step, after encode_reference was written
        os.kill(os.getpid(), signal.SIGTERM)
    return onnx.load(os.path.join(folder, "encode_reference.onnx"))

export_module._export_graph = export_graph
export_module.export_onnx(load(sys.argv[3]), out)
"""


@pytest.mark.slow  # a subprocess
def test_sigterm_leaves_no_file(exported, checkpoint, tmp_path):
    """SIGTERM during an export: exit code 143, and its temporary files are removed."""
    import subprocess
    import sys

    _, folder, _ = exported
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", _TERMINATED, str(folder), str(out), str(checkpoint)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 143, res.stderr
    assert list(out.iterdir()) == []


def test_self_test_catches_a_wrong_graph(exported, tmp_path, monkeypatch):
    """A graph that differs from pdnet (one weight of the head changed) fails the self-test
    with its numbers, and nothing is written."""
    model, folder, _ = exported

    def perturb(graph, proto):
        if graph == "step":  # the head's weights 1% larger: the logits change by about 1%
            (init,) = [t for t in proto.graph.initializer if t.name == "fast.head.weight"]
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * np.float32(1.01), init.name))

    reuse_exported_graphs(monkeypatch, folder, change=perturb)
    with pytest.raises(SelfTestError, match=r"step\.onnx output logits: [0-9.e-]+") as info:
        export_onnx(model, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []
    # without the self-test the same graphs are written
    result = export_onnx(model, tmp_path / "unchecked", check=False)
    assert result["self_test"] is None
    assert json.loads((tmp_path / "unchecked" / "export.json").read_text())["self_test"] is None


def test_self_test_float64_rule(exported, tmp_path, monkeypatch):
    """Outputs beyond the float32 bound are judged against float64: ONNX Runtime's error
    there must be within the bound or FLOAT32_ERROR_FACTOR x FastPDNet's float32 error."""
    model, folder, _ = exported
    reuse_exported_graphs(monkeypatch, folder)
    monkeypatch.setattr(export_module, "SELF_TEST_TOLERANCE", 1e-12)  # every output goes to float64
    monkeypatch.setattr(export_module, "FLOAT32_ERROR_FACTOR", 1e6)
    result = export_onnx(model, tmp_path / "lenient")
    float64 = json.loads((tmp_path / "lenient" / "export.json").read_text())["self_test_float64"]
    assert float64 == result["self_test_float64"]
    assert {g: set(outs) for g, outs in float64.items()} == {
        "pdnet": {"logits"}, "encode_reference": {"keys", "values"}, "step": {"logits", "logits_stride4"}
    }
    for outs in float64.values():
        for e in outs.values():
            assert 0 < e["onnx"] < TOLERANCE and 0 < e["pytorch_float32"] < TOLERANCE
    monkeypatch.setattr(export_module, "FLOAT32_ERROR_FACTOR", 0)
    with pytest.raises(SelfTestError, match=r"pdnet\.onnx output logits: .* of pdnet float32, .* of pdnet float64 "
                                            r"\(PyTorch's float32 FastPDNet: [0-9.e-]+\)") as info:
        export_onnx(model, tmp_path / "strict")
    assert "\n" not in str(info.value) and list((tmp_path / "strict").iterdir()) == []
    # within the float32 bound, no float64 run
    assert json.loads((folder / "export.json").read_text())["self_test_float64"] is None


def test_missing_onnx_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    with pytest.raises(ImportError, match=r'onnxscript: pip install -e "\.\[deploy\]"'):
        export_onnx(tiny_model(1, (64, 64)), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_missing_onnx_package(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"")
    code, err = run_cli(capsys, str(ckpt), "--out", str(tmp_path / "y"))
    assert code == 2
    assert err == 'pdnet export: error: --format onnx needs the package(s) onnxruntime: pip install -e ".[deploy]"'
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    code, err = run_cli(capsys, str(ckpt), "--out", str(tmp_path / "y"), "--no-check")  # onnxruntime not needed
    assert code == 2 and err.endswith("needs the package(s) onnx, onnxscript: pip install -e \".[deploy]\"")


# ------------------------------------------------------------------------- command line
def run_cli(capsys, *args):
    code = cli.main(["export", *args])
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture(scope="module")
def checkpoint(exported, tmp_path_factory):
    return save_model_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", exported[0])


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "--format: expected one of onnx, got 'tflite'"),
    (["--input-size", "100x100"], "--input-size: expected N or HxW with multiples of 32"),
    (["--parts", "0"], "--parts: expected a positive integer, got '0'"),
    (["--opset", "9"], "--opset: expected 18.."),
    (["--backbone", "resnet9"], "--backbone: expected one of resnet18"),
    (["--backbone", "resnet50"], "does not fit this PDNet (resnet50, p=3): missing keys"),
])
def test_cli_bad_values(checkpoint, tmp_path, capsys, args, message):
    code, err = run_cli(capsys, str(checkpoint), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and "\n" not in err and err.startswith("pdnet export: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_cli_bad_paths(checkpoint, tmp_path, capsys):
    code, err = run_cli(capsys, str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out"))
    assert code == 2 and err == f"pdnet export: error: checkpoint {tmp_path / 'missing.pt'} does not exist"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code, err = run_cli(capsys, str(tmp_path / "bad.pt"), "--out", str(tmp_path / "out"))
    assert code == 2 and "\n" not in err and "bad.pt" in err
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, str(checkpoint), "--out", str(tmp_path / "file"))
    assert code == 2 and err == f"pdnet export: error: --out {tmp_path / 'file'} exists and is not a directory"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "export.json").write_text("{}")
    code, err = run_cli(capsys, str(checkpoint), "--out", str(tmp_path / "out"))
    assert code == 2 and err == (
        f"pdnet export: error: --out {tmp_path / 'out'} already holds export.json: pass --overwrite to replace them"
    )
    assert not (tmp_path / "out" / "pdnet.onnx").exists()


def test_cli_writes_the_export(exported, checkpoint, tmp_path, capsys, monkeypatch):
    """The command on a saved checkpoint, over an earlier export with --overwrite (the
    module's graphs stand in for torch.onnx's: the rest is the real pipeline)."""
    _, folder, _ = exported
    reuse_exported_graphs(monkeypatch, folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    for name in OUTPUT_FILES:
        (out / name).write_bytes(b"previous")
    assert cli.main(["export", str(checkpoint), "--format", "onnx", "--out", str(out), "--overwrite"]) == 0
    text = capsys.readouterr().out
    assert "PDNet resnet18, p=3, input 64x96" in text and "wrote pdnet.onnx" in text and "self-test passed" in text
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, "notes.txt"])
    assert (out / "notes.txt").read_text() == "kept"
    assert all((out / name).read_bytes() == (folder / name).read_bytes() for name in GRAPH_FILES.values())
    meta = json.loads((out / "export.json").read_text())
    assert meta["checkpoint"] == str(checkpoint) and meta["input_size"] == list(SIZE)
    assert all(0 <= e <= TOLERANCE for e in meta["self_test"].values())


@pytest.mark.slow
def test_cli_end_to_end_one_part(tmp_path, capsys):
    """The real command, parts 1, at an input size other than the checkpoint's; then the
    graphs at batch 1 and 3 against pdnet."""
    model = tiny_model(parts=1, size=(64, 96), seed=3)
    ckpt = save_model_checkpoint(tmp_path / "one.pt", model)
    out = tmp_path / "out"
    assert cli.main(["export", str(ckpt), "--out", str(out), "--input-size", "64"]) == 0
    assert "self-test passed" in capsys.readouterr().out
    meta = json.loads((out / "export.json").read_text())
    assert meta["input_size"] == [64, 64] and meta["model_config"]["parts"] == 1
    for batch in (1, 3):
        target, reference = frames(batch, 40 + batch, (64, 64)), frames(batch, 50 + batch, (64, 64))
        with torch.no_grad():
            state = model.encode_reference(reference)
            want = model(target, reference)
        (logits,) = session(out / "pdnet.onnx").run(None, {"target": target.numpy(), "reference": reference.numpy()})
        assert relative(logits, want) <= TOLERANCE
        keys, values = session(out / "encode_reference.onnx").run(None, {"reference": reference.numpy()})
        assert keys.shape == (batch, 1, 16, 32) and relative(keys, state.keys) <= TOLERANCE
        logits, _ = session(out / "step.onnx").run(None, {"target": target.numpy(), "keys": keys, "values": values})
        assert relative(logits, want) <= TOLERANCE
