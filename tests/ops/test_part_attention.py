"""pdnet.ops.part_attention in every backend built, on every device present, in every dtype.

Forward and every gradient against the float64 reference (cases.py: awkward and model
shapes; large ones on CUDA), NaN / inf, the log-sum-exp, fully masked rows, empty and
strided inputs, gradcheck, double backward, opcheck of the raw kernel ops,
torch.compile, validation errors and the CUDA launch limits.
"""
from __future__ import annotations

import math

import pytest
import torch

import pdnet.ops
from pdnet.ops import reference

from . import cases as C
from . import checks

OP = "part_attention"

# against the reference (awkward, model, large and NaN / inf cases), gradcheck, gradgradcheck,
# double backward, opcheck, backward kernels versus create_graph, torch.compile: checks.py
(test_matches_reference, test_nonfinite_like_reference, test_gradcheck, test_gradgradcheck,
 test_double_backward_matches_reference, test_opcheck, test_backward_kernels_unless_create_graph,
 test_compile_fullgraph) = checks.common_tests(OP)
INF = math.inf


def _with_lse(fn):
    """fn returning (out, lse) flattened into one tensor, so that a loss uses both."""

    def f(*args, **kwargs):
        out, lse = fn(*args, **kwargs, return_lse=True)
        return torch.cat((out.flatten().to(lse.dtype), lse.flatten()))

    return f


LSE_CASES = [c for c in C.cases(OP, "awkward") if c.name in ("one_part", "odd_nq_ne_nk", "rows_fully_masked")]


@pytest.mark.parametrize(
    "case,backend,device,dtype",
    [p for p in checks.params(OP, ("awkward",), dtypes=(torch.float64, torch.float32)) if p.values[0] in LSE_CASES],
)
def test_log_sum_exp_and_its_gradient(case, backend, device, dtype):
    """lse (natural log) against the reference's, and the gradients of a loss of out and lse."""
    checks.against_reference(case, backend, device, dtype, fn=_with_lse)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_log_sum_exp_dtype_and_value(backend, device):
    """lse is in the accumulation dtype (float64 for float64, else float32) and equals
    logsumexp of the scaled masked scores."""
    case = C.cases(OP, "awkward")[2]
    for dtype in C.BACKEND_DTYPES[(backend, device)]:
        args, kwargs = C.make_inputs(case, device, dtype)
        out, lse = C.call(OP, args, {**kwargs, "return_lse": True}, backend)
        assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert lse.shape == out.shape[:3]
        q, k, _ = (t.double().cpu() for t in args)
        scores = q @ k.transpose(-1, -2) * kwargs["scale"] + kwargs["key_mask"].double().cpu().unsqueeze(-2)
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(lse.double().cpu(), torch.logsumexp(scores, -1), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_fully_masked_rows(backend, device):
    """A query row with every key masked: out 0, lse -inf, no gradient through it, and
    nothing non-finite anywhere; the other rows as usual (one live key: all the weight)."""
    case = next(c for c in C.cases(OP) if c.name == "rows_fully_masked")
    for dtype in C.BACKEND_DTYPES[(backend, device)]:
        args, kwargs = C.make_inputs(case, device, dtype, requires_grad=True)
        out, lse = C.call(OP, args, {**kwargs, "return_lse": True}, backend)
        grads = torch.autograd.grad(out, C.grad_inputs(args, kwargs), torch.ones_like(out))
        for t in (out, *grads):
            assert torch.isfinite(t).all(), f"{backend} {dtype}: non-finite values"
        assert torch.all(out[0, 1] == 0) and torch.all(lse[0, 1] == -INF), f"{backend} {dtype}"
        for g in grads:
            assert torch.all(g[0, 1] == 0), f"{backend} {dtype}: gradient through a fully masked row"
        v = args[2].detach()
        torch.testing.assert_close(out[1, 2].float(), v[1, 2, -1].expand_as(out[1, 2]).float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_empty_inputs(backend, device):
    """No queries or no batch: empty outputs, zero gradients; keys missing: an error."""
    dtype = C.BACKEND_DTYPES[(backend, device)][0]
    for case in (c for c in C.cases(OP, "awkward") if c.empty):
        args, kwargs = C.make_inputs(case, device, dtype, requires_grad=True)
        out = C.call(OP, args, kwargs, backend)
        d = case.dims
        assert out.shape == (d["B"], d["p"], d["Nq"], d["d"]) and out.dtype == dtype
        for g, t in zip(torch.autograd.grad(out.sum(), C.grad_inputs(args, kwargs), allow_unused=True),
                        C.grad_inputs(args, kwargs), strict=True):
            assert g is None or (g.shape == t.shape and torch.all(g == 0))
    q = torch.randn(1, 2, 3, 4, device=device, dtype=dtype)
    no_keys = torch.randn(1, 2, 0, 4, device=device, dtype=dtype)
    with pytest.raises(ValueError, match=r"no keys \(Nk=0\)"):
        C.call(OP, (q, no_keys, no_keys), {}, backend)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_zero_key_mask_equals_no_mask(backend, device):
    case = next(c for c in C.cases(OP) if c.name == "many_queries_few_keys")  # an all-zero key mask
    args, kwargs = C.make_inputs(case, device, C.BACKEND_DTYPES[(backend, device)][0])
    with_mask = C.call(OP, args, kwargs, backend)
    torch.testing.assert_close(with_mask, C.call(OP, args, {**kwargs, "key_mask": None}, backend), atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_strided_and_expanded_inputs_and_a_mask_of_another_dtype(backend, device):
    """A transposed q, batch-expanded k and v (as the model passes them) and a key mask in
    another dtype than q (its gradient comes back in the mask's dtype)."""
    supported = C.BACKEND_DTYPES[(backend, device)]
    dtype, mask_dtype = (torch.float32, torch.float64) if torch.float64 in supported else (torch.float16, torch.float32)
    gen = torch.Generator().manual_seed(3)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dt).requires_grad_()

    q = randn(2, 3, 16, 37).transpose(2, 3)  # [B, p, Nq, d], not contiguous
    k, v = (randn(1, 3, 29, 16).expand(2, -1, -1, -1) for _ in range(2))
    mask = randn(2, 3, 29, dt=mask_dtype)
    assert not q.is_contiguous() and k.stride(0) == 0
    checks.compare(OP, backend, (q, k, v), {"scale": 0.5, "key_mask": mask}, name="strided")


# --------------------------------------------------------------------------- the reference
def _loops(q, k, v, scale, key_mask=None):
    """part_attention one (batch item, part) at a time."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for j in range(q.shape[1]):
            s = (q[b, j] @ k[b, j].T) * scale
            if key_mask is not None:
                s = s + key_mask[b, j][None, :]
            out[b, j] = torch.softmax(s, dim=-1) @ v[b, j]
    return out


@pytest.mark.parametrize(
    "case", [c for c in C.cases(OP, "awkward") if c.name != "rows_fully_masked"], ids=lambda c: c.name
)
def test_reference_is_softmax_attention_per_part(case):
    args, kwargs = C.make_inputs(case, "cpu", torch.float64)
    torch.testing.assert_close(reference.part_attention(*args, **kwargs), _loops(*args, **kwargs))


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "shapes,exc,msg",
    [
        (((2, 3, 4), (2, 3, 4, 8), (2, 3, 4, 8)), ValueError, r"q must have 4 dims.*\(2, 3, 4\)"),
        (((2, 3, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), ValueError, r"k must be \(B=2, p=3, Nk, d=8\).*\(2, 2, 4, 8\)"),
        (((2, 3, 4, 8), (2, 3, 5, 8), (2, 3, 6, 8)), ValueError, r"v must have the shape of k \(2, 3, 5, 8\)"),
    ],
)
@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_shape_errors_name_the_shapes(backend, device, shapes, exc, msg):
    q, k, v = (torch.randn(*s, device=device) for s in shapes)
    with pytest.raises(exc, match=msg):
        pdnet.ops.part_attention(q, k, v, backend=backend)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_dtype_device_and_mask_errors(backend, device):
    q = torch.randn(1, 2, 4, 8, device=device)
    with pytest.raises(TypeError, match="k has dtype torch.float64 but q has dtype torch.float32"):
        pdnet.ops.part_attention(q, q.double(), q, backend=backend)
    with pytest.raises(TypeError, match="floating-point.*int64"):
        pdnet.ops.part_attention(q.long(), q, q, backend=backend)
    with pytest.raises(ValueError, match=r"key_mask must be \(B, p, Nk\) = \(1, 2, 4\), got \(1, 2, 5\)"):
        pdnet.ops.part_attention(q, q, q, key_mask=torch.zeros(1, 2, 5, device=device), backend=backend)
    with pytest.raises(TypeError, match="scale must be a Python float"):
        pdnet.ops.part_attention(q, q, q, scale=torch.tensor(1.0), backend=backend)
    if device == "cuda":
        with pytest.raises(ValueError, match="k is on cpu but q is on cuda"):
            pdnet.ops.part_attention(q, q.cpu(), q.cpu(), backend=backend)


def test_cpp_raw_op_errors_name_shapes_and_dtypes():
    """The C++ ops check their inputs themselves (TORCH_CHECK), naming the shapes."""
    if "cpp" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("the cpp backend is not built (test_backends.py fails then)")
    q = torch.randn(2, 3, 4, 8)
    with pytest.raises(RuntimeError, match=r"k must be \(B, p, Nk, d\).*\[2, 3, 5, 7\]"):
        torch.ops.pdnet.part_attention(q, torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7), 1.0, None)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.pdnet.part_attention(q, q.double(), q, 1.0, None)
    with pytest.raises(RuntimeError, match=r"key_mask must be \(B, p, Nk\)"):
        torch.ops.pdnet.part_attention(q, q, q, 1.0, torch.zeros(2, 3, 5))


@pytest.mark.parametrize("device", [d for b, d in checks.BACKEND_DEVICES if b == "triton"])
def test_triton_head_dim_limit_is_named(device):
    q = torch.zeros(1, 2, 3, 160, device=device)
    with pytest.raises(ValueError, match=r"head dim d=160 is above 128"):
        pdnet.ops.part_attention(q, q, q, backend="triton")


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", checks.cuda_params())
@pytest.mark.parametrize("Nq,Nk", [(16400, 40), (40, 16400)])
def test_cuda_more_than_65535_blocks(backend, device, Nq, Nk):
    """B = 32, p = 8, N = 16400: more than 65535 query blocks (forward) or key blocks
    (backward) in a grid; the first, a middle and the last head against the reference
    (heads are independent)."""
    B, p, d = 32, 8, 32
    gen = torch.Generator(device=device).manual_seed(7)
    q = torch.randn(B, p, Nq, d, device=device, generator=gen).requires_grad_()
    k, v = (torch.randn(B, p, Nk, d, device=device, generator=gen).requires_grad_() for _ in range(2))
    mask = torch.randn(B, p, Nk, device=device, generator=gen)
    mask[..., :3] = -INF
    mask.requires_grad_()
    cot = torch.randn(B, p, Nq, d, device=device, generator=gen)
    out = pdnet.ops.part_attention(q, k, v, 0.5, mask, backend=backend)
    got = [out, *torch.autograd.grad(out, (q, k, v, mask), cot)]
    for b, j in ((0, 0), (17, 3), (B - 1, p - 1)):
        head = [t[b : b + 1, j : j + 1].detach().double().requires_grad_() for t in (q, k, v, mask)]
        r = reference.part_attention(head[0], head[1], head[2], 0.5, head[3])
        want = [r, *torch.autograd.grad(r, head, cot[b : b + 1, j : j + 1].double())]
        for i, (a, w) in enumerate(zip(got, want, strict=True)):
            C.assert_matches(a[b : b + 1, j : j + 1], w, grad=i > 0, name=f"head {(b, j)} term {i}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_cuda_runs_on_the_current_stream_and_device(backend, device):
    q = torch.randn(2, 5, 300, 32, device=device, dtype=torch.float16)
    expect = pdnet.ops.part_attention(q, q, q, backend=backend)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = pdnet.ops.part_attention(q, q, q, backend=backend)
    stream.synchronize()
    torch.testing.assert_close(got, expect)
    if torch.cuda.device_count() > 1:
        q1 = q.to("cuda:1")
        torch.testing.assert_close(pdnet.ops.part_attention(q1, q1, q1, backend=backend).cpu(), expect.cpu())


@pytest.mark.cuda
def test_cuda_cpp_float64_is_a_clear_error():
    if "cpp" not in pdnet.ops.available_backends("cuda"):
        pytest.skip("the cpp backend has no CUDA kernels here")
    q = torch.randn(1, 1, 4, 8, device="cuda", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32, float16 and bfloat16"):
        pdnet.ops.part_attention(q, q, q, backend="cpp")


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_cuda_backward_is_deterministic(backend, device):
    """No float atomics: the backward runs under torch.use_deterministic_algorithms(True)
    and gives bitwise the same gradients each time (many key and query tiles, a key mask)."""
    gen = torch.Generator(device=device).manual_seed(5)
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(2, 5, 1000, 64, device=device, generator=gen).to(dtype).requires_grad_()
                       for _ in range(3))
            mask = torch.randn(2, 5, 1000, device=device, generator=gen).requires_grad_()
            cot = torch.randn(q.shape, device=device, generator=gen).to(dtype)
            runs = []
            for _ in range(3):
                out = pdnet.ops.part_attention(q, k, v, 0.125, mask, backend=backend)
                runs.append(torch.autograd.grad(out, (q, k, v, mask), cot))
            for run in runs[1:]:
                for i, (a, b) in enumerate(zip(run, runs[0], strict=True)):
                    assert torch.equal(a, b), f"{backend} {dtype}: gradient {i} differs between runs"
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
