"""backend="auto": the static table (default) and the opt-in timing (PDNET_AUTO=tune).

The policies are exercised on the CPU with stand-in backends wrapping the reference:
"cpp" plays the C++ CUDA kernels (no float64 kernels, optionally slow) and "triton" the
Triton kernels, both registered for the CPU and made candidates of auto there.
"""
import time
import warnings

import pytest
import torch
from ops import cases as C  # tests/ops/cases.py

from pdnet import ops
from pdnet.ops import _auto, _dispatch, auto_table, reference


@pytest.fixture
def stand_ins(monkeypatch):
    """'cpp' and 'triton' for area_variance on the CPU; returns {"calls": {name: n}, "delay": {name: s}}."""
    state = {"calls": {"cpp": 0, "triton": 0}, "delay": {"cpp": 0.0, "triton": 0.0}}

    def make(name):
        def area_variance(x):
            if name == "cpp" and x.dtype == torch.float64:  # as the CUDA kernels' dtype check
                raise RuntimeError("area_variance: the CUDA kernels support float32, float16 and bfloat16")
            state["calls"][name] += 1
            if state["delay"][name]:
                time.sleep(state["delay"][name])
            return reference.area_variance(x)

        return area_variance

    monkeypatch.setattr(_dispatch, "_REGISTRY", dict(_dispatch._REGISTRY))
    monkeypatch.setattr(_auto, "_CHOICES", {})
    monkeypatch.setattr(_auto, "_PICKS", {})
    monkeypatch.setattr(_auto, "_TUNED", {})
    monkeypatch.setattr(_auto, "TUNE_WARMUP", 1)
    monkeypatch.setattr(_auto, "TUNE_REPS", 3)
    monkeypatch.setattr(auto_table, "MEASURED", {})
    monkeypatch.setattr(auto_table, "KERNEL_DTYPES", {("cpp", "cpu"): ("float32", "float16", "bfloat16")})
    monkeypatch.setitem(auto_table.DEFAULT_ORDER, "cpu", ("cpp", "triton", "reference"))
    monkeypatch.delenv("PDNET_AUTO", raising=False)
    _dispatch.register_backend("cpp", {"area_variance": make("cpp")}, ("cpu",))
    _dispatch.register_backend("triton", {"area_variance": make("triton")}, ("cpu",))
    return state


def compiled():
    torch.compiler.reset()
    return torch.compile(lambda x: ops.area_variance(x), backend="eager", fullgraph=True)


# --------------------------------------------------------------------------- the static table
def test_default_is_the_table_first_backend_untimed(stand_ins):
    x = torch.rand(2, 3, 8, 8)
    for _ in range(3):
        torch.testing.assert_close(ops.area_variance(x), reference.area_variance(x))
    assert stand_ins["calls"] == {"cpp": 3, "triton": 0}
    (choice,) = ops.auto_choices().values()
    assert choice["backend"] == "cpp" and choice["source"] == "table"
    assert "default order for cpu" in choice["why"]


def test_float64_never_goes_to_a_backend_without_float64_kernels(stand_ins):
    """The C++ CUDA kernels have no float64: auto takes Triton, eagerly and compiled alike."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(ops.area_variance(x), reference.area_variance(x))
    torch.testing.assert_close(compiled()(x), reference.area_variance(x))
    assert stand_ins["calls"]["cpp"] == 0 and stand_ins["calls"]["triton"] >= 2
    (choice,) = ops.auto_choices().values()
    assert choice["backend"] == "triton" and "cpp has no float64 kernels on cpu" in choice["why"]


def test_float64_without_triton_goes_to_the_reference(stand_ins):
    del _dispatch._REGISTRY["triton"]
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(compiled()(x), reference.area_variance(x))
    torch.testing.assert_close(ops.area_variance(x), reference.area_variance(x))
    assert list(ops.auto_choices().values())[0]["backend"] == "reference"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 2, 4, 4), (2, 5, 40, 40)], ids=["model", "large"])
def test_traced_and_eager_calls_run_the_same_backend(stand_ins, monkeypatch, dtype, shape):
    monkeypatch.setitem(auto_table.LARGE_FROM, "area_variance", 1000)
    monkeypatch.setattr(auto_table, "MEASURED", {("area_variance", "cpu", "float32", "large"): (("triton",), "test")})
    x = torch.rand(shape, dtype=dtype)
    ops.area_variance(x)
    eager = dict(stand_ins["calls"])
    compiled()(x)
    traced = {k: stand_ins["calls"][k] - eager[k] for k in eager}
    assert traced == eager and sum(eager.values()) == 1


def test_a_measured_entry_comes_before_the_default_order(stand_ins, monkeypatch):
    monkeypatch.setattr(
        auto_table, "MEASURED", {("area_variance", "cpu", "float32", "model"): (("triton", "cpp"), "rows X")}
    )
    ops.area_variance(torch.rand(1, 2, 4, 4))
    ops.area_variance(torch.rand(1, 2, 4, 4, dtype=torch.float16))  # no entry: the default order
    assert stand_ins["calls"] == {"cpp": 1, "triton": 1}
    choices = ops.auto_choices()
    assert choices["area_variance cpu float32 model"] == {"backend": "triton", "source": "table",
                                                          "why": "measured: rows X"}
    assert choices["area_variance cpu float16 model"]["backend"] == "cpp"


def test_a_measured_entry_still_obeys_the_dtype_rule_and_lists_the_unmeasured(monkeypatch):
    monkeypatch.setattr(
        auto_table, "MEASURED", {("part_attention", "sm90", "float64", "large"): (("cpp",), "rows Y")}
    )
    ranked, why = auto_table.order("part_attention", "sm90", torch.float64, "large")
    assert ranked == ("triton", "reference") and why.startswith("measured: rows Y")
    monkeypatch.setattr(
        auto_table, "MEASURED", {("part_attention", "sm90", "bfloat16", "large"): (("triton",), "rows Z")}
    )
    assert auto_table.order("part_attention", "sm90", "bfloat16", "large")[0] == ("triton", "cpp", "reference")


def test_the_shipped_rules_keep_float64_off_the_cuda_extension():
    for op in _dispatch.OPS:
        for size in auto_table.SIZE_CLASSES:
            for device in ("sm80", "sm86", "sm90"):
                ranked, _ = auto_table.order(op, device, torch.float64, size)
                assert "cpp" not in ranked and ranked[-1] == "reference", (op, device, size)
                assert auto_table.choose(op, device, torch.float64, size, {"cpp", "reference"})[0] == "reference"


def test_deterministic_mode_passes_over_nondeterministic_backends(stand_ins, monkeypatch):
    monkeypatch.setattr(auto_table, "NONDETERMINISTIC", (("cpp", "area_variance", "cpu"),))
    x = torch.rand(2, 3, 8, 8)
    torch.use_deterministic_algorithms(True)
    try:
        ops.area_variance(x)
        compiled()(x)
        (choice,) = ops.auto_choices().values()
    finally:
        torch.use_deterministic_algorithms(False)
    assert stand_ins["calls"] == {"cpp": 0, "triton": 2}
    assert choice["backend"] == "triton" and "cpp is not deterministic" in choice["why"]
    ops.area_variance(x)  # deterministic mode off: cpp again
    assert stand_ins["calls"]["cpp"] == 1


def test_nothing_available_falls_back_to_the_reference():
    backend, why = auto_table.choose("part_masks", "sm90", "bfloat16", "model", {"reference"})
    assert backend == "reference" and "none of cpp, triton" not in why
    backend, why = auto_table.choose("part_masks", "sm90", "bfloat16", "model", set())
    assert backend == "reference" and why.endswith("none of cpp, triton, reference is available")


def test_size_classes_from_the_problem_size():
    def cls(op, *shapes):
        return auto_table.size_class(op, auto_table.problem_size(op, [torch.empty(s) for s in shapes]))

    q, q32 = (2, 5, 900, 32), (32, 5, 900, 32)
    assert cls("part_attention", q, q) == "model" and cls("part_attention", q32, q32) == "large"
    assert cls("part_masks", (2, 5, 480, 480)) == "model" and cls("part_masks", (32, 5, 480, 480)) == "large"
    assert cls("area_variance", (2, 5, 480, 480)) == "model" and cls("area_variance", (32, 5, 480, 480)) == "large"
    assert cls("assemble_parts", (2, 5, 64, 120, 120)) == "model"
    assert cls("assemble_parts", (32, 5, 64, 120, 120)) == "large"


@pytest.mark.parametrize("op", C.OPS)
def test_the_size_of_a_call_is_the_size_of_its_benchmark_row(op):
    """The table is keyed by the size of the call's tensors; bench/auto_order.py by the rows' dims."""
    for case in C.cases(op, "awkward", "model", "large"):
        d = case.dims
        if op == "part_attention":
            args = [torch.empty(d["B"], d["p"], d["Nq"], d["d"], device="meta"),
                    torch.empty(d["B"], d["p"], d["Nk"], d["d"], device="meta")]
        else:  # the first input's shape: the dims in order (B, p[, C], h, w)
            args = [torch.empty(*d.values(), device="meta")]
        assert auto_table.problem_size(op.removesuffix("_gt"), args) == auto_table.dims_size(case.dims), case.id


def test_device_keys(monkeypatch):
    assert auto_table.device_key(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert auto_table.device_key(torch.device("cuda", 1)) == "sm86"
    assert auto_table.device_type("sm86") == "cuda" and auto_table.device_type("cpu") == "cpu"


def test_an_unknown_policy_is_an_error_naming_the_choices(stand_ins, monkeypatch):
    monkeypatch.setenv("PDNET_AUTO", "order")
    with pytest.raises(ValueError, match=r"PDNET_AUTO='order': expected 'table' \(the default\) or 'tune'"):
        ops.area_variance(torch.rand(1, 2, 4, 4))


# --------------------------------------------------------------------------- PDNET_AUTO=tune
@pytest.fixture
def tuned(stand_ins, monkeypatch):
    """Tune mode with a slow 'cpp' (20 ms per call)."""
    monkeypatch.setenv("PDNET_AUTO", "tune")
    stand_ins["delay"]["cpp"] = 0.02
    return stand_ins["calls"]


def test_tune_times_once_per_signature_and_keeps_the_fastest(tuned):
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(ops.area_variance(x), reference.area_variance(x))
    timed = [v for v in ops.auto_choices().values() if v["source"] == "tuned"]
    assert len(timed) == 1 and timed[0]["backend"] == "triton"
    assert timed[0]["ms"]["cpp"] > timed[0]["ms"]["triton"]
    assert tuned == {"cpp": 1 + 3, "triton": 1 + 3 + 1}  # warm-up, timed reps; then the real call
    for _ in range(3):
        ops.area_variance(x)
    assert tuned == {"cpp": 4, "triton": 8}  # no more timing
    ops.area_variance(torch.rand(2, 3, 8, 9))  # a new shape is a new signature
    assert len([v for v in ops.auto_choices().values() if v["source"] == "tuned"]) == 2


def test_tune_times_the_backward_when_gradients_are_needed(tuned):
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    ops.area_variance(x).backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(reference.area_variance(x), x)[0])
    with torch.no_grad():
        ops.area_variance(x)
    assert len([k for k, v in ops.auto_choices().items() if v["source"] == "tuned"]) == 2  # grad / no-grad apart


def test_tune_leaves_the_callers_tensors_and_graph_alone(tuned):
    base = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = ops.area_variance(base * 2)  # timed here, forward + backward on detached copies
    assert base.grad is None
    out.backward()
    torch.testing.assert_close(base.grad, torch.autograd.grad(reference.area_variance(base * 2), base)[0])


def test_tune_skips_a_failing_backend_with_one_warning_per_signature(tuned):
    x = torch.rand(1, 2, 4, 4)
    _dispatch.register_backend("cpp", {"area_variance": lambda x: 1 / 0}, ("cpu",))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            torch.testing.assert_close(ops.area_variance(x), reference.area_variance(x))
    assert len([m for m in w if "backend 'cpp' failed while backend='auto' timed it" in str(m.message)]) == 1
    assert tuned["triton"] == 1 + 3 + 3


def test_tune_when_every_candidate_fails_the_tables_choice_raises_its_own_error(tuned):
    def broken(name):
        def f(x):
            raise RuntimeError(f"{name} cannot")

        return f

    _dispatch.register_backend("cpp", {"area_variance": broken("cpp")}, ("cpu",))
    _dispatch.register_backend("triton", {"area_variance": broken("triton")}, ("cpu",))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="cpp cannot"):
        ops.area_variance(torch.rand(1, 2, 4, 4))
    assert all(v["source"] == "table" for v in ops.auto_choices().values())


def test_tune_signature_tells_dtypes_layouts_and_arguments_apart(tuned):
    x = torch.rand(2, 3, 8, 8)
    for y in (x, x.half(), x.transpose(2, 3), x):  # the last: the first's signature again
        ops.area_variance(y)
    assert len([v for v in ops.auto_choices().values() if v["source"] == "tuned"]) == 3
    assert _auto._signature((x, 1.0, None)) != _auto._signature((x, 0.5, None))


def test_tune_with_one_candidate_does_not_time(tuned):
    ops.area_variance(torch.rand(1, 2, 4, 4, dtype=torch.float64))  # cpp has no float64: triton alone
    del _dispatch._REGISTRY["triton"]
    ops.area_variance(torch.rand(1, 2, 4, 4))
    assert tuned == {"cpp": 1, "triton": 1}
    assert all(v["source"] == "table" for v in ops.auto_choices().values())


def test_tune_never_times_traced_calls_or_vmap(tuned, stand_ins):
    stand_ins["delay"]["cpp"] = 0.0  # Dynamo cannot trace time.sleep
    x = torch.rand(1, 2, 4, 4)
    torch.testing.assert_close(compiled()(x), reference.area_variance(x))
    xs = torch.rand(3, 1, 2, 4, 4)
    out = torch.vmap(lambda x: ops.area_variance(x))(xs)
    torch.testing.assert_close(out, torch.stack([reference.area_variance(x) for x in xs]))
    assert not any(v["source"] == "tuned" for v in ops.auto_choices().values())
    assert tuned == {"cpp": 2, "triton": 0}  # the table's cpp ran, nothing was timed


def test_event_times_brackets_each_call_with_cuda_events(monkeypatch):
    clock, synced = [0.0], []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = clock[0]

        def synchronize(self):
            synced.append(self)

        def elapsed_time(self, end):
            assert synced, "elapsed_time before the events completed"
            return end.at - self.at

    durations = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(torch.cuda, "Event", Event)
    times = _auto.event_times(lambda: clock.__setitem__(0, clock[0] + next(durations)), 3)
    assert times == [3.0, 1.0, 2.0] and len(synced) == 1


@pytest.mark.cuda
def test_tune_on_cuda_times_both_kernel_backends_with_events(monkeypatch):
    if not {"cpp", "triton"} <= set(ops.available_backends("cuda")):
        pytest.skip("needs both kernel backends on CUDA")
    monkeypatch.setattr(_auto, "_CHOICES", {})
    monkeypatch.setattr(_auto, "_PICKS", {})
    monkeypatch.setattr(_auto, "_TUNED", {})
    monkeypatch.setenv("PDNET_AUTO", "tune")
    x = torch.rand(2, 5, 480, 480, device="cuda")
    out = ops.area_variance(x)
    (timed,) = [v for v in ops.auto_choices().values() if v["source"] == "tuned"]
    assert set(timed["ms"]) == {"cpp", "triton"} and all(ms > 0 for ms in timed["ms"].values())
    torch.testing.assert_close(out, ops.area_variance(x, backend=timed["backend"]), rtol=0, atol=0)
