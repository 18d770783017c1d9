"""ONNX export of PDNet: three self-contained graphs and ``export.json`` (``pdnet export``).

:func:`export_onnx` writes, for a fixed input size H x W and a dynamic batch axis:

* ``pdnet.onnx``: (target, reference) -> logits, the whole model, ``model(target, reference)``
  (the two graphs below joined: encode_reference's keys and values feed step);
* ``encode_reference.onnx``: reference -> (keys, values), the per-clip state
  (:class:`pdnet.model.ReferenceState`'s tensors);
* ``step.onnx``: (target, keys, values) -> (logits, logits_stride4), one target frame
  against a cached state; ``logits_stride4`` is the head's output before the final
  upsample, so that an engine can upsample straight to the frame size (as
  :class:`pdnet.inference.VideoSegmenter` does with ``size=``);
* ``export.json``: the format, versions, opset, input size, model configuration,
  normalisation, every graph's inputs and outputs, and the self-test's numbers.

The graphs are the inference form (:class:`pdnet.inference.fused.FastPDNet`: BatchNorm
folded, the parts' convolutions grouped) with the hot-path ops on their pure-PyTorch
reference backend, exported by ``torch.onnx.export(..., dynamo=True)``: every node is a
standard ONNX operator of the default domain (Conv, MatMul, Softmax, Resize, ...).
Each file is written under a temporary name, checked, run by ONNX Runtime against
pdnet in float32 (in float64 too where the float32 bound fails: see :func:`export_onnx`),
and only then moved into place; ``export.json`` comes last, so a folder without it is an
incomplete export.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._fs import temporary_beside
from ..inference.checkpoint import deferred_signals
from ..model import PDNet
from ..model.layers import upsample
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "pdnet-onnx"
FORMAT_VERSION = 1
#: graph name -> file name (export.json lists the graphs in this order)
GRAPH_FILES: dict[str, str] = {
    "pdnet": "pdnet.onnx",
    "encode_reference": "encode_reference.onnx",
    "step": "step.onnx",
}
EXPORT_JSON = "export.json"
#: the names of the state tensors, ReferenceState's fields, in step.onnx's input order
STATE_NAMES = ("keys", "values")
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the torch.onnx dynamo exporter's lowest
#: the self-test's bound on max|onnx - pdnet| / max|pdnet| per output, float32
SELF_TEST_TOLERANCE = 1e-4
#: where the float32 bound fails, ONNX Runtime's error against pdnet in float64 may be up to
#: this multiple of PyTorch's own float32 error there (FastPDNet, the exported computation)
FLOAT32_ERROR_FACTOR = 2
#: the batch of the example inputs that the graphs are traced with (not 0 or 1, which
#: torch.export would specialise) and of the self-test's inputs
EXAMPLE_BATCH = 2
BATCH_AXIS = "batch"

INPUT_DESCRIPTION = (
    "RGB float32 in [0,1] (uint8/255), resized to input_size bilinear (half-pixel centres, no antialiasing), "
    "then (x - mean) / std"
)
OUTPUT_DESCRIPTION = {
    "logits": "Tensor[batch, 1, H, W] float32: the person logit of every pixel of the target at the input size",
    "logits_stride4": (
        "step.onnx only: Tensor[batch, 1, H/4, W/4] float32, the head's logits before the final upsample; "
        "logits = bilinear resize with align_corners=True of logits_stride4 to H x W, so an engine may "
        "resize it straight to the frame size instead"
    ),
    "probability": "sigmoid(logits)",
}


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises SystemExit(143) inside the block (main thread, default handler only),
    so that the export's ``finally`` removes its temporary files as it does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class SelfTestError(RuntimeError):
    """ONNX Runtime's output differs from pdnet's beyond the self-test's tolerance."""


# ---------------------------------------------------------------------------------- graphs
class _EncodeGraph(nn.Module):
    """encode_reference.onnx: reference -> (keys, values) [B, p, N, d]."""

    def __init__(self, fast: nn.Module) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.fast.encode_reference(reference)
        return tuple(getattr(state, name) for name in STATE_NAMES)


class _StepGraph(nn.Module):
    """step.onnx: (target, keys, values) -> logits [B, 1, H, W], logits_stride4 [B, 1, H/4, W/4]."""

    def __init__(self, fast: nn.Module) -> None:
        super().__init__()
        self.fast = fast

    def forward(
        self, target: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = target.shape[-2:]
        # size = the head's own (stride-4) size: FastPDNet returns the head's output as it is
        stride4 = self.fast(target, keys, values, size=(H // 4, W // 4))  # [B, 1, H/4, W/4]
        return upsample(stride4, (H, W)), stride4  # the same resize FastPDNet.forward ends with


# ---------------------------------------------------------------------------------- checks
def check_input_size(size: Any) -> tuple[int, int]:
    """``N`` or ``(H, W)``, positive multiples of 32 -> (H, W); else a one-line ValueError."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        if isinstance(size, (str, bytes)):
            raise TypeError
        h, w = (int(s) for s in size)
        ok = all(int(s) == s and not isinstance(s, bool) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"export_onnx: input_size must be N or (H, W), got {size!r}") from None
    if not ok or h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ValueError(
            f"export_onnx: input_size must be positive multiples of 32, got {size[0]}x{size[1]}"
        )
    return h, w


def opset_range() -> tuple[int, int]:
    """The opsets :func:`export_onnx` accepts: the exporter's lowest to the installed onnx's latest."""
    import onnx

    return MIN_OPSET, onnx.defs.onnx_opset_version()


def _check_opset(opset: Any) -> int:
    low, high = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ValueError(f"export_onnx: opset must be an integer in {low}..{high}, got {opset!r}")
    return opset


def _import_onnx(check: bool) -> None:
    names = ["onnx", "onnxscript"] + (["onnxruntime"] if check else [])
    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"ONNX export needs the package(s) {', '.join(missing)}: pip install -e \".[deploy]\""
        )


def existing_outputs(out_dir: Path) -> list[str]:
    """The export's file names that ``out_dir`` holds already."""
    return [name for name in (*GRAPH_FILES.values(), EXPORT_JSON) if (out_dir / name).exists()]


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` may be written: not a file, and without the export's files unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"export_onnx: output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and not overwrite:
        found = existing_outputs(out_dir)
        if found:
            raise FileExistsError(
                f"export_onnx: {out_dir} already holds {', '.join(found)} (overwrite=True replaces them)"
            )


def _resolve_model(model: Any, backbone: str | None, parts: int | None) -> tuple[PDNet, str | None]:
    if isinstance(model, PDNet):
        if backbone is not None or parts is not None:
            raise ValueError("export_onnx: backbone= and parts= apply to a checkpoint path, not to a PDNet")
        return model, None
    if isinstance(model, (str, os.PathLike)):
        from ..inference.loading import load

        return load(model, device="cpu", backbone=backbone, parts=parts), str(model)
    raise TypeError(f"export_onnx: model must be a pdnet.PDNet or a checkpoint path, got {type(model).__name__}")


# ---------------------------------------------------------------------------------- export
def _value_infos(values) -> list[dict[str, Any]]:
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        out.append({"name": v.name, "shape": shape, "dtype": dtype})
    return out


def _export_graph(module: nn.Module, args: tuple, input_names, output_names, opset: int):
    """``module`` traced at ``args`` -> onnx.ModelProto, batch axis dynamic on every input."""
    batch = torch.export.Dim(BATCH_AXIS)
    dynamic_shapes = tuple({0: batch} for _ in args)
    with warnings.catch_warnings(), torch.no_grad():
        # one Dim shared by several inputs: torch warns that the name is used once (it is, on all)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            module, args, None, input_names=list(input_names), output_names=list(output_names),
            opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, optimize=True,
            external_data=False, verbose=False,
        )
    proto = program.model_proto
    got = {o.domain: o.version for o in proto.opset_import}
    if set(got) - {"", "ai.onnx"} or got.get("", got.get("ai.onnx")) != opset:
        raise RuntimeError(f"export_onnx: torch.onnx.export produced opsets {got}, not the default domain at {opset}")
    return proto


def _compose_pair(encode, step):
    """pdnet.onnx from the two exported graphs: encode_reference's nodes feed step's
    ``keys`` and ``values``; inputs ``target``, ``reference``, output ``logits``.

    This is ``model(target, reference)`` as FastPDNet computes it (encode_reference, then
    forward), without tracing the network a third time (about half of the export's time);
    the weights both graphs hold (same name, same bytes) are stored once, and
    encode_reference's other names get the prefix ``reference/``."""
    import onnx

    merged = onnx.ModelProto()
    merged.CopyFrom(step)
    g, enc = merged.graph, encode.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in enc.node for a in n.attribute):
        raise RuntimeError("export_onnx: encode_reference graph has subgraphs, which _compose_pair does not rename")
    if encode.functions or step.functions:
        raise RuntimeError("export_onnx: the exported graphs define ONNX functions, which _compose_pair does not merge")
    own = {t.name: t.SerializeToString() for t in g.initializer}
    shared = {t.name for t in enc.initializer if own.get(t.name) == t.SerializeToString()}
    kept = {"", *(i.name for i in enc.input), *STATE_NAMES, *shared}

    def rename(name: str) -> str:
        return name if name in kept else f"reference/{name}"

    nodes = []
    for node in enc.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.name = f"reference/{node.name}"
        n.input[:] = [rename(x) for x in node.input]
        n.output[:] = [rename(x) for x in node.output]
        nodes.append(n)
    step_nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes + step_nodes)  # encode's nodes first: a topological order
    for t in enc.initializer:
        if t.name not in shared:
            c = g.initializer.add()
            c.CopyFrom(t)
            c.name = rename(t.name)
    for v in enc.value_info:
        c = g.value_info.add()
        c.CopyFrom(v)
        c.name = rename(v.name)
    for v in enc.output:  # keys, values: now values inside the graph
        g.value_info.add().CopyFrom(v)
    inputs = [i for i in g.input if i.name not in STATE_NAMES]
    del g.input[:]
    g.input.extend([inputs[0], *enc.input])  # target, reference
    outputs = [o for o in g.output if o.name == "logits"]
    del g.output[:]
    g.output.extend(outputs)
    g.name = "pdnet"
    return merged


def _write_temporary(data: bytes, final: Path) -> Path:
    fd, tmp = temporary_beside(final)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _relative_error(got, want) -> float:
    import numpy as np

    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = max(float(np.abs(want).max()), float(np.finfo(np.float32).tiny))
    return float(np.abs(got - want).max() / scale)


def _within_float32_error(errors: Mapping[str, float]) -> bool:
    """ONNX Runtime's relative error against float64 is within the tolerance or within
    FLOAT32_ERROR_FACTOR x PyTorch's float32 error of the same computation."""
    return errors["onnx"] <= max(SELF_TEST_TOLERANCE, FLOAT32_ERROR_FACTOR * errors["pytorch_float32"])


def _pdnet_outputs(model: PDNet, graphs, target, reference, state_tensors, size) -> dict[str, dict[str, torch.Tensor]]:
    """What ``graphs`` must compute, by the unfused PDNet (step's from ``state_tensors``)."""
    from ..model import ReferenceState

    H, W = size
    out: dict[str, dict[str, torch.Tensor]] = {}
    if "pdnet" in graphs:
        out["pdnet"] = {"logits": model(target, reference)}
    if "encode_reference" in graphs:
        state = model.encode_reference(reference)
        out["encode_reference"] = {name: getattr(state, name) for name in STATE_NAMES}
    if "step" in graphs:
        # at the head's own size PDNet returns the head's output; upsampled, it is model(target, state)
        stride4 = model(target, ReferenceState(*state_tensors, size), size=(H // 4, W // 4))
        out["step"] = {"logits": upsample(stride4, size), "logits_stride4": stride4}
    return out


def _fast_outputs(fast: nn.Module, graphs, target, reference, state_tensors) -> dict[str, dict[str, torch.Tensor]]:
    """The same by FastPDNet, the exported computation, in PyTorch."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    if "pdnet" in graphs:
        state = fast.encode_reference(reference)
        out["pdnet"] = {"logits": fast(target, state.keys, state.values)}
    if "encode_reference" in graphs:
        out["encode_reference"] = dict(zip(STATE_NAMES, _EncodeGraph(fast)(reference), strict=True))
    if "step" in graphs:
        out["step"] = dict(zip(("logits", "logits_stride4"), _StepGraph(fast)(target, *state_tensors), strict=True))
    return out


@torch.no_grad()
def _self_test(model: PDNet, fast: nn.Module, files: Mapping[str, Path], size: tuple[int, int]):
    """Every graph run by ONNX Runtime (CPU) on random inputs of batch EXAMPLE_BATCH.

    Returns:
        (errors, float64): errors {graph: {output: max|onnx - pdnet| / max|pdnet|}} against
        ``model`` in float32; float64 {graph: {output: {"onnx": e, "pytorch_float32": e}}}
        for the outputs whose error is above SELF_TEST_TOLERANCE: the relative errors of
        ONNX Runtime and of FastPDNet in float32 (the exported computation in PyTorch)
        against ``model`` in float64 (None when every error is within the tolerance).
    """
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(20240518)
    target = torch.randn(EXAMPLE_BATCH, 3, *size, generator=gen)
    reference = torch.randn(EXAMPLE_BATCH, 3, *size, generator=gen)
    state = model.encode_reference(reference)
    state_tensors = tuple(getattr(state, name) for name in STATE_NAMES)
    expected = _pdnet_outputs(model, ("pdnet", "step"), target, reference, state_tensors, size)
    expected["encode_reference"] = dict(zip(STATE_NAMES, state_tensors, strict=True))
    feeds = {
        "pdnet": {"target": target, "reference": reference},
        "encode_reference": {"reference": reference},
        "step": {"target": target, **dict(zip(STATE_NAMES, state_tensors, strict=True))},
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between runs
    got: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, float]] = {}
    for graph, path in files.items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        got[graph] = dict(zip(names, session.run(names, {k: v.numpy() for k, v in feeds[graph].items()}), strict=True))
        errors[graph] = {n: _relative_error(g, expected[graph][n].numpy()) for n, g in got[graph].items()}
        del session
    failed = {g for g, outs in errors.items() if not all(e <= SELF_TEST_TOLERANCE for e in outs.values())}
    if not failed:
        return errors, None
    # an ill-conditioned network (large activations, nearly one-hot attention): float32
    # computations of it differ among themselves; ONNX Runtime's error against float64 is
    # judged as PyTorch's own float32 error of the same computation (FastPDNet)
    model64 = copy.deepcopy(model).double()
    exact = _pdnet_outputs(
        model64, failed, target.double(), reference.double(), tuple(t.double() for t in state_tensors), size
    )
    del model64
    fast32 = _fast_outputs(fast, failed, target, reference, state_tensors)
    float64: dict[str, dict[str, dict[str, float]]] = {}
    for graph in failed:
        for name, e in errors[graph].items():
            if not e <= SELF_TEST_TOLERANCE:
                want = exact[graph][name].numpy()
                float64.setdefault(graph, {})[name] = {
                    "onnx": _relative_error(got[graph][name], want),
                    "pytorch_float32": _relative_error(fast32[graph][name].numpy(), want),
                }
    return errors, {g: float64[g] for g in GRAPH_FILES if g in float64}


def export_onnx(
    model: PDNet | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    input_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    check: bool = True,
    backbone: str | None = None,
    parts: int | None = None,
) -> dict[str, Any]:
    """Export PDNet to ONNX: ``pdnet.onnx``, ``encode_reference.onnx``, ``step.onnx`` and
    ``export.json`` in ``out_dir`` (see the module docstring and docs/deploy.md).

    Args:
        model: a :class:`pdnet.PDNet` (not changed: a float32 CPU copy is exported) or a
            checkpoint path, read with :func:`pdnet.load` (with ``backbone`` / ``parts``).
        out_dir: the folder to write (created if missing).
        input_size: H x W of the graphs, N or (H, W), positive multiples of 32 (default:
            the model configuration's ``input_size``). The batch axis is dynamic.
        opset: the ONNX opset (18 and later).
        overwrite: replace these four files when ``out_dir`` holds any of them already
            (other files in it are never touched).
        check: run ``onnx.checker`` (full check) on each file and the self-test: ONNX
            Runtime's CPU run of each graph on random inputs of batch 2 must match pdnet
            in float32 to max|onnx - pdnet| <= 1e-4 * max|pdnet| for every output. An
            output beyond that (an ill-conditioned network, whose float32 computations
            differ among themselves by more) passes if its error against pdnet in float64
            is within 1e-4 or twice FastPDNet's float32 error there (PyTorch's own error
            of the exported computation: the project's low-precision rule).
        backbone, parts: overrides for a checkpoint path (as ``pdnet.load``).

    Returns:
        dict with ``out_dir``, ``input_size`` [H, W], ``model_config`` (dict),
        ``files`` {graph: path}, ``export_json`` (path), ``sizes`` {graph: bytes},
        ``export_seconds`` {graph: seconds}, ``self_test`` {graph: max relative
        difference over its outputs} (None without ``check``), ``self_test_outputs``
        {graph: {output: relative difference}} and ``self_test_seconds``.

    Raises:
        ValueError: a bad input size or opset, or ``backbone`` / ``parts`` with a PDNet.
        FileExistsError: ``out_dir`` holds one of the files and ``overwrite`` is False.
        FileNotFoundError, pdnet.inference.CheckpointError: the checkpoint (``pdnet.load``).
        ImportError: onnx, onnxscript or (with ``check``) onnxruntime is missing.
        SelfTestError (a RuntimeError): the self-test failed (the numbers are in the
            message; nothing is written).
    """
    net, source = _resolve_model(model, backbone, parts)
    size = check_input_size(net.config.input_size if input_size is None else input_size)
    _import_onnx(check)
    opset = _check_opset(opset)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)

    from ..inference.fused import FastPDNet

    first = next(net.parameters())
    if net.training or first.device.type != "cpu" or first.dtype != torch.float32 or net.ipda.backend == "triton":
        src = copy.deepcopy(net).to(device="cpu", dtype=torch.float32).eval()
        src.ipda.backend = "auto"  # the self-test's pdnet runs on the CPU
    else:
        src = net  # only read (FastPDNet copies it; the self-test runs it without gradients)
    fast = FastPDNet(src)
    fast.backend = "reference"  # pure PyTorch: standard ONNX operators only
    out_dir.mkdir(parents=True, exist_ok=True)
    with _sigterm_raises():
        return _export(src, source, fast, size, opset, out_dir, check)


def _export(src: PDNet, source: str | None, fast: nn.Module, size, opset: int, out_dir: Path, check: bool):
    """export_onnx's work, once its arguments are checked: ``src`` is the float32 CPU PDNet
    in eval mode, ``fast`` its FastPDNet on the reference ops."""
    import onnx

    from .. import __version__

    H, W = size
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, 3, H, W, generator=gen)
    example_reference = torch.randn(EXAMPLE_BATCH, 3, H, W, generator=gen)  # a distinct tensor: not one input twice
    with torch.no_grad():
        state = fast.encode_reference(example_reference)
    state_tensors = tuple(getattr(state, name) for name in STATE_NAMES)
    specs = {
        "encode_reference": (_EncodeGraph(fast), (example_reference,), ("reference",), STATE_NAMES),
        "step": (_StepGraph(fast), (example, *state_tensors), ("target", *STATE_NAMES), ("logits", "logits_stride4")),
    }
    temporaries: dict[str, Path] = {}
    graphs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def write(graph: str, proto) -> None:
        proto.doc_string = f"PDNet {graph} graph (pdnet {__version__}); see export.json"
        onnx.helper.set_model_props(proto, {
            "pdnet_format": FORMAT, "pdnet_format_version": str(FORMAT_VERSION), "pdnet_version": __version__,
            "pdnet_graph": graph, "input_size": f"{H}x{W}",
        })
        data = proto.SerializeToString()
        temporaries[graph] = _write_temporary(data, out_dir / GRAPH_FILES[graph])
        sizes[graph] = len(data)
        graphs[graph] = {
            "file": GRAPH_FILES[graph],
            "inputs": _value_infos(proto.graph.input),
            "outputs": _value_infos(proto.graph.output),
        }

    try:
        traced = {}
        for graph, (module, args, input_names, output_names) in specs.items():
            t0 = time.perf_counter()
            traced[graph] = _export_graph(module.eval(), args, input_names, output_names, opset)
            write(graph, traced[graph])
            seconds[graph] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write("pdnet", _compose_pair(traced["encode_reference"], traced["step"]))
        seconds["pdnet"] = time.perf_counter() - t0
        del traced
        graphs = {g: graphs[g] for g in GRAPH_FILES}
        sizes = {g: sizes[g] for g in GRAPH_FILES}
        seconds = {g: seconds[g] for g in GRAPH_FILES}
        errors = float64 = test_seconds = None
        if check:
            t0 = time.perf_counter()
            files = {g: temporaries[g] for g in GRAPH_FILES}
            for path in files.values():
                onnx.checker.check_model(str(path), full_check=True)
            errors, float64 = _self_test(src, fast, files, size)
            test_seconds = time.perf_counter() - t0
            bad = [
                f"{GRAPH_FILES[g]} output {o}: {e:.3g} of pdnet float32, {float64[g][o]['onnx']:.3g} of pdnet float64 "
                f"(PyTorch's float32 FastPDNet: {float64[g][o]['pytorch_float32']:.3g})"
                for g, outs in errors.items() for o, e in outs.items()
                if not e <= SELF_TEST_TOLERANCE and not _within_float32_error(float64[g][o])
            ]
            if bad:
                raise SelfTestError(
                    "export_onnx: self-test failed, ONNX Runtime differs from pdnet (max|onnx - pdnet| / max|pdnet|) "
                    f"by more than {SELF_TEST_TOLERANCE:g} in float32 and by more than {FLOAT32_ERROR_FACTOR} x "
                    f"PyTorch's own float32 error in float64: {'; '.join(bad)}; nothing was written to {out_dir}"
                )
        summary = {g: max(outs.values()) for g, outs in errors.items()} if errors is not None else None
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pdnet_version": __version__,
            "torch_version": torch.__version__,
            "onnx_opset": opset,
            "input_size": [H, W],
            "model_config": src.config.to_dict(),
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": INPUT_DESCRIPTION},
            "output": dict(OUTPUT_DESCRIPTION),
            "graphs": graphs,
            "state": list(STATE_NAMES),
            "batch_axis": BATCH_AXIS,
            "checkpoint": source,
            "self_test": summary,
            "self_test_float64": float64,
        }
        json_tmp = _write_temporary((json.dumps(meta, indent=2) + "\n").encode(), out_dir / EXPORT_JSON)
        temporaries["export.json"] = json_tmp
        # in place: the old export.json goes first, the new one comes last (a folder without it
        # is an incomplete export); a signal waits for the last rename
        with deferred_signals():
            (out_dir / EXPORT_JSON).unlink(missing_ok=True)
            for graph in GRAPH_FILES:
                os.replace(temporaries.pop(graph), out_dir / GRAPH_FILES[graph])
            os.replace(temporaries.pop("export.json"), out_dir / EXPORT_JSON)
    finally:
        for tmp in temporaries.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
    return {
        "out_dir": str(out_dir),
        "input_size": [H, W],
        "model_config": src.config.to_dict(),
        "files": {g: str(out_dir / f) for g, f in GRAPH_FILES.items()},
        "export_json": str(out_dir / EXPORT_JSON),
        "sizes": sizes,
        "export_seconds": seconds,
        "self_test": summary,
        "self_test_outputs": errors,
        "self_test_float64": float64,
        "self_test_seconds": test_seconds,
    }
