"""The Triton kernels launch on their inputs' device, not on the current one.

Triton's launcher uses the current CUDA device and its current stream; every host
function of pdnet.kernels is decorated with ``_common.on_input_device``, which makes the
inputs' device current around the launches. Without a GPU the tests here check that
every host function enters that guard with its inputs' device (under Triton's CPU
interpreter) and that the guard is the one Dynamo traces; with two GPUs every op runs on
cuda:1 while cuda:0 is current, against the reference.
"""
from __future__ import annotations

import contextlib
import inspect

import pytest
import torch
from ops import cases as C  # tests/ops/cases.py
from ops import checks

import pdnet.ops

kernels = pytest.importorskip("pdnet.kernels", reason="the Triton kernels need the triton package")
from pdnet.kernels import _common  # noqa: E402

MODULES = (kernels.part_attention, kernels.part_masks, kernels.assemble_parts, kernels.area_variance)
HOST_FUNCTIONS = {
    "part_attention_forward", "part_attention_backward", "part_masks_forward", "part_masks_backward",
    "assemble_parts_forward", "assemble_parts_backward", "area_sums",
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    "triton" not in pdnet.ops.available_backends(DEVICE), reason=f"the triton backend does not run on {DEVICE} here"
)


def _launching_functions() -> dict[str, object]:
    """The functions of the kernel modules whose own code launches a kernel (wrap_triton)."""
    found = {}
    for module in MODULES:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and "wrap_triton(" in inspect.getsource(inspect.unwrap(fn)):
                found[name] = fn
    return found


def test_every_launching_function_is_a_guarded_host_function():
    found = _launching_functions()
    assert set(found) == HOST_FUNCTIONS
    guard = _common.on_input_device(lambda t: t).__code__
    for name, fn in found.items():
        assert fn is not inspect.unwrap(fn) and fn.__code__ is guard, f"{name} does not launch under on_input_device"


def test_the_guard_switches_to_cuda_devices_only():
    assert isinstance(_common.launch_device(torch.device("cpu")), contextlib.nullcontext)
    guard = _common.launch_device(torch.device("cuda", 1))  # not entered: no CUDA needed
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    with pytest.raises(TypeError, match="no tensor argument"):
        _common.on_input_device(lambda s: s)(1.0)


@needs_triton
@pytest.mark.parametrize("op", C.OPS)
def test_each_host_function_enters_the_guard_with_its_inputs_device(op, monkeypatch):
    entered = []
    real = _common.launch_device

    def recording(device):
        entered.append((inspect.currentframe().f_back.f_locals["host"].__name__, device))
        return real(device)

    monkeypatch.setattr(_common, "launch_device", recording)
    case = C.cases(op, "awkward")[1]
    args, kwargs = C.make_inputs(case, DEVICE, torch.float32, requires_grad=True, seed=3)
    out = C.call(op, args, kwargs, "triton")
    out.sum().backward()
    names = {name for name, _ in entered}
    expected = {"area_sums"} if op == "area_variance" else {f"{op.removesuffix('_gt')}_forward",
                                                             f"{op.removesuffix('_gt')}_backward"}
    assert names == expected
    assert {device for _, device in entered} == {args[0].device}


def test_dynamo_traces_the_guard_without_a_graph_break():
    def f(x):
        with _common.launch_device(x.device):
            return x + 1

    x = torch.rand(3, device=DEVICE)
    torch.compiler.reset()
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="eager")(x), x + 1)


@pytest.mark.cuda
@needs_triton
def test_dynamo_traces_a_guarded_host_function_on_cuda():
    """Dynamo inlines the decorator: torch.cuda.device and the wrap_triton launch in one graph."""
    x = torch.rand(2, 3, 40, 50, device="cuda")
    torch.compiler.reset()
    got = torch.compile(kernels.area_variance.area_sums, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, x.double().sum((2, 3)).float(), rtol=1e-5, atol=1e-4)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@pytest.mark.cuda
@two_gpus
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", C.OPS)
def test_triton_on_the_second_gpu_while_the_first_is_current(op, dtype):
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        case = C.cases(op, "model")[0]
        args, kwargs = C.make_inputs(case, "cuda:1", dtype, requires_grad=True)
        checks.compare(op, "triton", args, kwargs, name=case.id)  # results on cuda:1, as the reference's
        assert torch.cuda.current_device() == 0
        torch.cuda.synchronize(1)
    finally:
        torch.cuda.set_device(previous)


@pytest.mark.cuda
@two_gpus
def test_compiled_host_function_on_the_second_gpu():
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        x = torch.rand(2, 3, 40, 50, device="cuda:1")
        torch.compiler.reset()
        got = torch.compile(kernels.area_variance.area_sums, fullgraph=True, backend="eager")(x)
        assert got.device == x.device and torch.cuda.current_device() == 0
        torch.testing.assert_close(got, x.double().sum((2, 3)).float(), rtol=1e-5, atol=1e-4)
    finally:
        torch.cuda.set_device(previous)
