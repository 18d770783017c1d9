"""backend="auto" with several kernel backends: it times them once per input signature
and keeps the fastest (the policy used on CUDA, exercised here on the CPU with stand-in
backends that wrap the reference)."""
import time
import warnings

import pytest
import torch

from pdnet import ops
from pdnet.ops import _dispatch, reference


@pytest.fixture
def tuned_cpu(monkeypatch):
    """Two kernel backends on the CPU: 'cpp' sleeps 20 ms per call, 'triton' does not."""
    calls = {"cpp": 0, "triton": 0}

    def make(name, delay):
        def area_variance(x):
            calls[name] += 1
            time.sleep(delay)
            return reference.area_variance(x)

        return area_variance

    monkeypatch.setattr(_dispatch, "_REGISTRY", dict(_dispatch._REGISTRY))
    monkeypatch.setattr(_dispatch, "_CHOICES", {})
    monkeypatch.setattr(_dispatch, "_TIMINGS", {})
    monkeypatch.setattr(_dispatch, "TUNED_DEVICES", ("cpu",))
    monkeypatch.setitem(_dispatch.AUTO_ORDER, "cpu", ("cpp", "triton", "reference"))
    _dispatch.register_backend("cpp", {"area_variance": make("cpp", 0.02)}, ("cpu",))
    _dispatch.register_backend("triton", {"area_variance": make("triton", 0.0)}, ("cpu",))
    return calls


def test_auto_times_once_per_signature_and_keeps_the_fastest(tuned_cpu):
    x = torch.rand(2, 3, 8, 8)
    out = ops.area_variance(x)
    torch.testing.assert_close(out, reference.area_variance(x))
    (choice,) = ops.auto_choices().values()
    assert choice["backend"] == "triton"
    assert choice["ms"]["cpp"] > choice["ms"]["triton"]
    timed = dict(tuned_cpu)
    for _ in range(3):
        ops.area_variance(x)
    assert tuned_cpu["cpp"] == timed["cpp"]  # no more timing, no more calls to the slow one
    assert tuned_cpu["triton"] == timed["triton"] + 3
    ops.area_variance(torch.rand(2, 3, 8, 9))  # a new shape is a new signature
    assert len(ops.auto_choices()) == 2


def test_auto_times_the_backward_when_gradients_are_needed(tuned_cpu):
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = ops.area_variance(x)
    out.backward()
    expect = torch.autograd.grad(reference.area_variance(x), x)[0]
    torch.testing.assert_close(x.grad, expect)
    with torch.no_grad():
        ops.area_variance(x)
    sigs = list(ops.auto_choices())
    assert len(sigs) == 2 and sigs[0] != sigs[1]  # grad and no-grad calls are timed apart


def test_auto_order_only(tuned_cpu, monkeypatch):
    monkeypatch.setenv("PDNET_AUTO", "order")
    ops.area_variance(torch.rand(1, 2, 4, 4))
    assert ops.auto_choices() == {}
    assert tuned_cpu == {"cpp": 1, "triton": 0}


def test_auto_skips_a_failing_backend_with_a_warning(tuned_cpu):
    def broken(x):
        raise RuntimeError("no kernel for this shape")

    _dispatch.register_backend("cpp", {"area_variance": broken}, ("cpu",))
    x = torch.rand(1, 2, 4, 4)
    with pytest.warns(RuntimeWarning, match="backend 'cpp' failed.*no kernel for this shape"):
        out = ops.area_variance(x)
    torch.testing.assert_close(out, reference.area_variance(x))
    assert list(ops.auto_choices().values())[0]["backend"] == "triton"


def test_auto_does_not_time_while_compiling(tuned_cpu):
    f = torch.compile(lambda x: ops.area_variance(x), backend="eager", fullgraph=False)
    x = torch.rand(1, 2, 4, 4)
    torch.testing.assert_close(f(x), reference.area_variance(x))
    assert ops.auto_choices() == {}  # traced calls take the first backend of the order, untimed


def test_a_failing_backend_warns_once_per_signature(tuned_cpu):
    def broken(x):
        raise RuntimeError("no kernel for this shape")

    _dispatch.register_backend("cpp", {"area_variance": broken}, ("cpu",))
    x = torch.rand(1, 2, 4, 4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            torch.testing.assert_close(ops.area_variance(x), reference.area_variance(x))
    assert len([m for m in w if "failed while backend='auto' timed it" in str(m.message)]) == 1
    assert tuned_cpu["triton"] == 6 + 3  # warm-up + 5 timed calls, then the three real ones


def test_when_every_backend_fails_the_first_raises_its_own_error(tuned_cpu):
    def broken(name):
        def f(x):
            raise RuntimeError(f"{name} cannot")

        return f

    _dispatch.register_backend("cpp", {"area_variance": broken("cpp")}, ("cpu",))
    _dispatch.register_backend("triton", {"area_variance": broken("triton")}, ("cpu",))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="cpp cannot"):
        ops.area_variance(torch.rand(1, 2, 4, 4))
    assert ops.auto_choices() == {}


def test_timing_leaves_the_callers_tensors_and_graph_alone(tuned_cpu):
    base = torch.rand(2, 3, 8, 8, requires_grad=True)
    x = base * 2  # a non-leaf, as inside a model
    out = ops.area_variance(x)  # timed here, forward + backward on detached copies
    assert base.grad is None
    out.backward()
    expect = torch.autograd.grad(reference.area_variance(base * 2), base)[0]
    torch.testing.assert_close(base.grad, expect)


def test_signature_tells_dtypes_layouts_and_arguments_apart(tuned_cpu):
    x = torch.rand(2, 3, 8, 8)
    ops.area_variance(x)
    ops.area_variance(x.double())
    ops.area_variance(x.transpose(2, 3))  # same shape, not contiguous
    ops.area_variance(x)
    assert len(ops.auto_choices()) == 3
    assert _dispatch._signature((x, 1.0, None)) != _dispatch._signature((x, 0.5, None))


def test_no_timing_on_devices_that_are_not_tuned(tuned_cpu, monkeypatch):
    monkeypatch.setattr(_dispatch, "TUNED_DEVICES", ("cuda",))
    impl = _dispatch.resolve("area_variance", "auto", torch.device("cpu"))
    assert impl is _dispatch._REGISTRY["cpp"].impls["area_variance"]  # first of the order
    ops.area_variance(torch.rand(1, 2, 4, 4))
    assert ops.auto_choices() == {} and tuned_cpu == {"cpp": 1, "triton": 0}


def test_one_kernel_backend_is_not_timed(tuned_cpu):
    del _dispatch._REGISTRY["triton"]
    impl = _dispatch.resolve("area_variance", "auto", torch.device("cpu"))
    assert impl is _dispatch._REGISTRY["cpp"].impls["area_variance"]


def test_fullgraph_compile_takes_the_order_without_a_graph_break(tuned_cpu):
    x = torch.rand(1, 2, 4, 4)
    ops.area_variance(x)  # eager: timed, triton chosen
    calls = dict(tuned_cpu)

    def undelayed(x):  # the slow stand-in sleeps, which dynamo cannot trace in fullgraph
        tuned_cpu["cpp"] += 1
        return reference.area_variance(x)

    _dispatch.register_backend("cpp", {"area_variance": undelayed}, ("cpu",))
    f = torch.compile(lambda x: ops.area_variance(x), backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x), reference.area_variance(x))
    assert tuned_cpu["triton"] == calls["triton"]  # traced code calls the first of the order
    assert len(ops.auto_choices()) == 1


def test_vmap_is_not_timed(tuned_cpu):
    xs = torch.rand(3, 1, 2, 4, 4)
    out = torch.vmap(lambda x: ops.area_variance(x))(xs)
    torch.testing.assert_close(out, torch.stack([reference.area_variance(x) for x in xs]))
    assert ops.auto_choices() == {}


def test_deterministic_mode_passes_over_nondeterministic_backends(tuned_cpu, monkeypatch):
    """With torch.use_deterministic_algorithms(True), auto skips the (backend, op, device)
    entries of NONDETERMINISTIC (on CUDA: the C++ attention backward's dQ atomics), even
    when that backend is the fastest."""
    monkeypatch.setattr(_dispatch, "NONDETERMINISTIC", (("triton", "area_variance", "cpu"),))
    x = torch.rand(2, 3, 8, 8)
    torch.use_deterministic_algorithms(True)
    try:
        ops.area_variance(x)
        ops.area_variance(x)
    finally:
        torch.use_deterministic_algorithms(False)
    assert tuned_cpu["triton"] == 0 and tuned_cpu["cpp"] >= 2  # only the deterministic one ran
    assert ops.auto_choices() == {}  # one candidate left: nothing to time
    ops.area_variance(x)  # deterministic mode off: both are candidates again
    assert tuned_cpu["triton"] > 0
