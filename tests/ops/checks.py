"""Checks every op's test file runs, over the backends built, the devices present and the dtypes.

Each ``test_<op>.py`` parametrises these with :func:`params` and adds the checks that
only concern its op. The inputs, the references and the tolerance rule are in
:mod:`cases`.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import pdnet.ops

from . import cases as C

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

#: (backend, device) pairs available here; "triton" on "cpu" is Triton's interpreter
BACKEND_DEVICES = [(b, dev) for dev in DEVICES for b in pdnet.ops.available_backends(dev)]
KERNEL_BACKEND_DEVICES = [(b, dev) for b, dev in BACKEND_DEVICES if b != "reference"]

#: the namespace of each kernel backend's raw ops (torch.ops.<namespace>.<op>)
NAMESPACE = {"cpp": "pdnet", "triton": "pdnet_triton"}


#: under Triton's interpreter, cases with more elements than this (cases.size) are slow,
#: and those with more than INTERPRETER_SIZE_MAX (the model's shapes) are left to the GPU
INTERPRETER_SIZE_LIMIT = 6_000
INTERPRETER_SIZE_MAX = 50_000


def _marks(backend: str, device: str, case: C.Case | None = None, dtype: torch.dtype | None = None) -> list:
    """cuda for CUDA; slow for large cases, the model's shapes on the CPU, and, under
    Triton's interpreter, float16 (bfloat16 takes the same paths) and big cases."""
    marks = [pytest.mark.cuda] if device == "cuda" else []
    interpreted = backend == "triton" and device == "cpu"
    if case is not None and (
        case.kind == "large"
        or (case.kind == "model" and device == "cpu")
        or (interpreted and (dtype == torch.float16 or C.size(case) > INTERPRETER_SIZE_LIMIT))
    ):
        marks.append(pytest.mark.slow)
    return marks


def backend_params(pairs=None, *, float64: bool = False) -> list:
    """pytest params (backend, device); with ``float64`` only the pairs that run float64."""
    return [
        pytest.param(b, dev, id=f"{b}-{dev}", marks=_marks(b, dev))
        for b, dev in (BACKEND_DEVICES if pairs is None else pairs)
        if not float64 or torch.float64 in C.BACKEND_DTYPES[(b, dev)]
    ]


def cuda_params() -> list:
    """pytest params (backend, device) of the kernel backends on CUDA (without a GPU: the
    kernel backends, marked cuda, so that they show as skipped)."""
    pairs = [(b, dev) for b, dev in KERNEL_BACKEND_DEVICES if dev == "cuda"] or [(b, "cuda") for b in NAMESPACE]
    return [pytest.param(b, dev, id=f"{b}-{dev}", marks=[pytest.mark.cuda]) for b, dev in pairs]


def params(op: str, kinds=("awkward", "model"), dtypes=None, pairs=None, with_op: bool = False) -> list:
    """pytest params (case, backend, device, dtype): every case of ``op`` of these kinds,
    on every available (backend, device) pair, in each dtype that pair supports (of
    ``dtypes`` when given). Large cases run on CUDA only, in float16 / bfloat16, and
    Triton's interpreter takes no case above INTERPRETER_SIZE_MAX. The ids name the op
    too ``with_op``."""
    out = []
    for case in C.cases(op, *kinds):
        for b, dev in BACKEND_DEVICES if pairs is None else pairs:
            if (case.kind == "large" and dev != "cuda") or (
                (b, dev) == ("triton", "cpu") and C.size(case) > INTERPRETER_SIZE_MAX
            ):
                continue
            for dt in C.BACKEND_DTYPES[(b, dev)]:
                if (dtypes and dt not in dtypes) or (case.kind == "large" and dt not in C.LOW_PRECISION):
                    continue
                name = f"{b}-{dev}-{str(dt).replace('torch.', '')}-{case.id if with_op else case.name}"
                out.append(pytest.param(case, b, dev, dt, id=name, marks=_marks(b, dev, case, dt)))
    return out


# --------------------------------------------------------------------------- against the reference
def against_reference(case: C.Case, backend: str, device: str, dtype: torch.dtype, fn=None, seed: int = 0) -> None:
    """Forward and every gradient of ``backend`` on ``case``'s inputs against the reference
    (float64 on the CPU; float32 on the device for large cases): :func:`compare`."""
    args, kwargs = C.make_inputs(case, device, dtype, requires_grad=True, seed=seed)
    ref_at = (torch.float32, device) if case.kind == "large" else (torch.float64, "cpu")
    compare(case.op, backend, args, kwargs, fn=fn, seed=seed, ref_at=ref_at, name=case.id)


def compare(op: str, backend: str, args: tuple, kwargs: dict, *, fn=None, seed: int = 0,
            ref_at=(torch.float64, "cpu"), name: str = "") -> None:
    """Output and gradients of ``backend`` against the reference run at ``ref_at`` (dtype,
    device) on the same (rounded) inputs, with :func:`cases.assert_matches`: dtype and
    device of each result too. ``fn(op_fn) -> fn`` optionally wraps the op (e.g. to also
    return its log-sum-exp)."""
    wrap = fn or (lambda f: f)
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    dtype, device = tensors[0].dtype, tensors[0].device
    got = C.forward_backward(wrap(lambda *a, **k: C.call(op, a, k, backend)), args, kwargs, seed, dtype)
    ref = C.forward_backward(wrap(C.reference(op)), *C.cast(args, kwargs, *ref_at), seed, dtype)
    lowp = [None] * len(ref)
    if dtype in C.LOW_PRECISION:
        lowp = C.forward_backward(wrap(C.reference(op)), *C.cast(args, kwargs, dtype), seed, dtype)
    # the output in the inputs' dtype (unless wrapped: what it returns), each gradient in its input's
    dtypes = [got[0].dtype if fn else dtype] + [t.dtype for t in C.grad_inputs(args, kwargs)]
    names = [f"{name}/{backend} output"] + [f"{name}/{backend} gradient {i}" for i in range(len(ref) - 1)]
    for i, (a, r, pt, what, dt) in enumerate(zip(got, ref, lowp, names, dtypes, strict=True)):
        assert a.dtype == dt, f"{what}: dtype {a.dtype}, expected {dt}"
        assert a.device == device, f"{what}: on {a.device}, expected {device}"
        # judged at the inputs' precision (a key mask of another dtype has its gradient in its own)
        C.assert_matches(a.to(dtype), r, None if pt is None else pt.to(dtype), grad=i > 0, name=what)


# --------------------------------------------------------------------------- gradients
def _small(op: str) -> C.Case:
    """A case small enough for finite differences (with a masked key for attention)."""
    if op == "part_attention":
        return C.Case(op, "gradcheck", "awkward", dict(B=1, p=2, Nq=3, Nk=4, d=2), dict(key_mask="random", scale=0.8))
    if op == "assemble_parts":
        return C.Case(op, "gradcheck", "awkward", dict(B=1, p=3, C=2, h=2, w=3))
    return C.Case(op, "gradcheck", "awkward", dict(B=2, p=3, h=3, w=2), dict(mask_grad=True))


def _as_function_of_grad_inputs(op: str, backend: str, args: tuple, kwargs: dict):
    """(f, tensors): f(*tensors) calls the op with ``tensors`` in place of the inputs that require grad."""
    slots = [("a", i) for i, t in enumerate(args) if isinstance(t, torch.Tensor) and t.requires_grad]
    slots += [("k", k) for k, t in kwargs.items() if isinstance(t, torch.Tensor) and t.requires_grad]

    def f(*tensors):
        a, k = list(args), dict(kwargs)
        for (where, key), t in zip(slots, tensors, strict=True):
            if where == "a":
                a[key] = t
            else:
                k[key] = t
        return C.call(op, tuple(a), k, backend)

    return f, C.grad_inputs(args, kwargs)


def gradcheck(op: str, backend: str, device: str) -> None:
    """torch.autograd.gradcheck of the op in float64."""
    args, kwargs = C.make_inputs(_small(op), device, torch.float64, requires_grad=True, seed=5)
    f, tensors = _as_function_of_grad_inputs(op, backend, args, kwargs)
    interpreted = backend == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, fast_mode=interpreted)


def gradgradcheck(op: str, backend: str, device: str) -> None:
    """Second-order gradients (torch.autograd.gradgradcheck in float64)."""
    args, kwargs = C.make_inputs(_small(op), device, torch.float64, requires_grad=True, seed=6)
    f, tensors = _as_function_of_grad_inputs(op, backend, args, kwargs)
    assert torch.autograd.gradgradcheck(f, tensors, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def hessian_vector_product(op: str, backend: str, device: str) -> None:
    """d/dx <grad f(x), u> of the backend equals the reference's (float64)."""
    res = {}
    for b in (backend, "reference"):
        args, kwargs = C.make_inputs(_small(op), device, torch.float64, requires_grad=True, seed=4)
        f, tensors = _as_function_of_grad_inputs(op, b, args, kwargs)
        out = f(*tensors)
        gen = torch.Generator().manual_seed(9)
        w = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(device)
        grads = torch.autograd.grad(out, tensors, w, create_graph=True)
        u = [torch.rand(g.shape, generator=gen, dtype=torch.float64).to(device) for g in grads]
        hvp = torch.autograd.grad(sum((g * uu).sum() for g, uu in zip(grads, u, strict=True)), tensors)
        res[b] = [g.detach() for g in grads] + list(hvp)
    for i, (a, r) in enumerate(zip(res[backend], res["reference"], strict=True)):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10, msg=lambda m, i=i: f"{op}/{backend} term {i}: {m}")


# --------------------------------------------------------------------------- torch.library
class _Recorder(TorchDispatchMode):
    """Records the calls of the kernel backends' raw ops."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in NAMESPACE.values():
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def raw_op_calls(op: str, backend: str, device: str, dtype: torch.dtype, *, create_graph: bool = False,
                 first_only: bool = False) -> list:
    """(op overload, args, kwargs) of every raw kernel op a forward and a backward of the
    public op on a small case runs (with ``first_only``, only the first input needs a gradient)."""
    args, kwargs = C.make_inputs(_small(op), device, dtype, requires_grad=True, seed=7)
    if first_only:
        for t in C.grad_inputs(args, kwargs)[1:]:
            t.requires_grad_(False)
    with _Recorder() as rec:
        out = C.call(op, args, kwargs, backend)
        torch.autograd.grad(out, C.grad_inputs(args, kwargs), torch.ones_like(out), create_graph=create_graph)
    return rec.calls


def opcheck(op: str, backend: str, device: str, dtype: torch.dtype) -> None:
    """torch.library.opcheck (schema, fake kernel, autograd registration, AOT dispatch) of
    the raw forward op, on the public op's inputs, and of each backward op as the
    backward calls it, with every input needing a gradient and with only the first."""
    calls = raw_op_calls(op, backend, device, dtype) + raw_op_calls(op, backend, device, dtype, first_only=True)
    kernel = "part_masks" if op == "part_masks_gt" else op
    names = [func.name() for func, _, _ in calls]
    ns = NAMESPACE[backend]
    assert f"{ns}::{kernel}" in names and f"{ns}::{kernel}_backward" in names, names
    for func, args, kwargs in calls:
        # the forward with inputs that require grad; the backward ops are not differentiable
        # (a backward with create_graph=True takes the PyTorch formula instead)
        forward = func.name() == f"{ns}::{kernel}"
        args = tuple(
            a.detach().requires_grad_(forward and a.is_floating_point()) if isinstance(a, torch.Tensor) else a
            for a in args
        )
        torch.library.opcheck(func, args, kwargs)


def backward_kernels_unless_create_graph(op: str, backend: str, device: str) -> None:
    """A plain backward runs the backend's backward kernel; one with create_graph=True
    differentiates the op's PyTorch formula instead (no backward kernel)."""
    dtype = C.BACKEND_DTYPES[(backend, device)][0]
    for create_graph, expected in ((False, 1), (True, 0)):
        calls = raw_op_calls(op, backend, device, dtype, create_graph=create_graph)
        n = sum(func.name().endswith("_backward") for func, _, _ in calls)
        assert n == expected, (create_graph, [func.name() for func, _, _ in calls])


def compile_fullgraph(op: str, backend: str, device: str) -> None:
    """torch.compile(fullgraph=True) traces the op: same output and gradients as eager."""
    case = C.cases(op, "awkward")[1]
    args, kwargs = C.make_inputs(case, device, torch.float32, requires_grad=True, seed=8)
    torch.compiler.reset()  # the same lambda for every op: no recompilation limit
    compiled = torch.compile(lambda *a, **k: C.call(op, a, k, backend), fullgraph=True,
                             backend="inductor" if device == "cuda" else "aot_eager")
    got = C.forward_backward(compiled, args, kwargs)
    want = C.forward_backward(lambda *a, **k: C.call(op, a, k, backend), args, kwargs)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m, i=i: f"{op}/{backend} term {i}: {m}")


# --------------------------------------------------------------------------- the common tests
def common_tests(*ops: str) -> tuple:
    """The tests every op's file runs, as pytest test functions parametrised over ``ops``
    (when more than one), backends, devices and dtypes: forward and gradients against the
    reference on the awkward, model and large cases and on the NaN / inf ones, gradcheck,
    gradgradcheck, double backward against the reference, opcheck, backward kernels
    versus the formula under create_graph, and torch.compile."""
    with_op = len(ops) > 1

    @pytest.mark.parametrize(
        "case,backend,device,dtype",
        [p for op in ops for p in params(op, ("awkward", "model", "large"), with_op=with_op)],
    )
    def test_matches_reference(case, backend, device, dtype):
        against_reference(case, backend, device, dtype)

    @pytest.mark.parametrize(
        "case,backend,device,dtype",
        [p for op in ops for p in params(op, ("nonfinite",), (torch.float64, torch.float32), with_op=with_op)],
    )
    def test_nonfinite_like_reference(case, backend, device, dtype):
        """NaN and inf at the same places of the output and of every gradient as in the reference."""
        against_reference(case, backend, device, dtype)

    def per_op(pairs=None, *, float64=False):
        return [
            pytest.param(op, *p.values, id=f"{op}-{p.id}" if with_op else p.id, marks=p.marks)
            for op in ops
            for p in backend_params(pairs, float64=float64)
        ]

    @pytest.mark.parametrize("op,backend,device", per_op(float64=True))
    def test_gradcheck(op, backend, device):
        gradcheck(op, backend, device)

    @pytest.mark.parametrize("op,backend,device", per_op(float64=True))
    def test_gradgradcheck(op, backend, device):
        gradgradcheck(op, backend, device)

    @pytest.mark.parametrize("op,backend,device", per_op(KERNEL_BACKEND_DEVICES, float64=True))
    def test_double_backward_matches_reference(op, backend, device):
        hessian_vector_product(op, backend, device)

    @pytest.mark.parametrize("op,backend,device", per_op(KERNEL_BACKEND_DEVICES))
    def test_opcheck(op, backend, device):
        opcheck(op, backend, device, C.BACKEND_DTYPES[(backend, device)][0])

    @pytest.mark.parametrize("op,backend,device", per_op(KERNEL_BACKEND_DEVICES))
    def test_backward_kernels_unless_create_graph(op, backend, device):
        backward_kernels_unless_create_graph(op, backend, device)

    @pytest.mark.parametrize("op,backend,device", per_op())
    def test_compile_fullgraph(op, backend, device):
        compile_fullgraph(op, backend, device)

    return (
        test_matches_reference,
        test_nonfinite_like_reference,
        test_gradcheck,
        test_gradgradcheck,
        test_double_backward_matches_reference,
        test_opcheck,
        test_backward_kernels_unless_create_graph,
        test_compile_fullgraph,
    )


# --------------------------------------------------------------------------- which kernels ran
class _OpCalls(TorchFunctionMode):
    """Records the names of the kernel backends' ops called from Python. A function mode
    sits above autocast (a dispatch mode would see, and redo, ops that autocast has not
    yet cast), so it also watches code run under autocast."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = func.name() if isinstance(func, torch._ops.OpOverload) else getattr(func, "_qualified_op_name", "")
        if name.split("::")[0] in NAMESPACE.values():
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def kernel_ops_run(fn, *args, **kwargs) -> tuple[object, list[str]]:
    """(``fn(*args, **kwargs)``, the names of the kernel backends' ops it called, in order)."""
    with _OpCalls() as rec:
        out = fn(*args, **kwargs)
    return out, rec.names
