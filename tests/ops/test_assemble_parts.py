"""pdnet.ops.assemble_parts in every backend built, on every device present, in every dtype.

Forward and every gradient against the float64 reference (cases.py), NaN / inf, some
inputs without gradient, gradcheck, double backward, opcheck of the raw kernel op,
torch.compile, validation errors and indexing past int32 on CUDA.
"""
from __future__ import annotations

import pytest
import torch

import pdnet.ops

from . import cases as C
from . import checks

OP = "assemble_parts"

# against the reference (awkward, model, large and NaN / inf cases), gradcheck, gradgradcheck,
# double backward, opcheck, backward kernels versus create_graph, torch.compile: checks.py
(test_matches_reference, test_nonfinite_like_reference, test_gradcheck, test_gradgradcheck,
 test_double_backward_matches_reference, test_opcheck, test_backward_kernels_unless_create_graph,
 test_compile_fullgraph) = checks.common_tests(OP)


@pytest.mark.parametrize("backend,device", checks.backend_params())
@pytest.mark.parametrize("wanted", [(0,), (1, 2), (2,), (0, 1)])
def test_gradients_of_some_inputs(backend, device, wanted):
    """Only some inputs need a gradient (the backward skips the others)."""
    case = next(c for c in C.cases(OP) if c.name == "odd")
    args, _ = C.make_inputs(case, device, C.BACKEND_DTYPES[(backend, device)][0])
    args = tuple(t.requires_grad_(i in wanted) for i, t in enumerate(args))
    checks.compare(OP, backend, args, {}, name=f"gradients of {wanted}")


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_zero_masks_give_zero(backend, device):
    case = next(c for c in C.cases(OP) if c.name == "C17")
    (p_feats, y_feats, masks), _ = C.make_inputs(case, device, C.BACKEND_DTYPES[(backend, device)][0])
    out = pdnet.ops.assemble_parts(p_feats, y_feats, torch.zeros_like(masks), backend=backend)
    assert out.shape == (1, 17, 5, 13) and torch.all(out == 0)


def test_reference_is_a_sum_over_parts():
    case = next(c for c in C.cases(OP) if c.name == "odd")
    (p_feats, y_feats, masks), _ = C.make_inputs(case, "cpu", torch.float64)
    expect = sum((p_feats[:, k] + y_feats[:, k]) * masks[:, k : k + 1] for k in range(case.dims["p"]))
    torch.testing.assert_close(C.reference(OP)(p_feats, y_feats, masks), expect)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_errors_name_the_problem(backend, device):
    feats = torch.randn(1, 2, 3, 4, 4, device=device)
    with pytest.raises(ValueError, match=r"masks must be \(B, p, h, w\)"):
        pdnet.ops.assemble_parts(feats, feats, torch.randn(1, 3, 4, 4, device=device), backend=backend)
    with pytest.raises(ValueError, match=r"y_feats must have the shape of p_feats.*\(1, 2, 4, 4, 4\)"):
        pdnet.ops.assemble_parts(feats, torch.randn(1, 2, 4, 4, 4, device=device), feats[:, :, 0], backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        pdnet.ops.assemble_parts(feats, feats.double(), feats[:, :, 0], backend=backend)


def test_cpp_raw_op_errors_name_shapes():
    if "cpp" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("the cpp backend is not built (test_backends.py fails then)")
    with pytest.raises(RuntimeError, match=r"masks must be \(B, p, h, w\)"):
        torch.ops.pdnet.assemble_parts(torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 4, 5))


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_cuda_beyond_int32_indexing(backend, device):
    """B = 32, p = 5, C = 64, 480 x 480 in float16: 2.36e9 feature elements, past int32
    indexing; the last batch element (offsets above 2**31) against the reference,
    output and gradients."""
    B, p, C_, h, w = 32, 5, 64, 480, 480
    need = 5 * B * p * C_ * h * w * 2  # p, y and their gradients, plus the output and its gradient (fp16)
    if torch.cuda.get_device_properties(0).total_memory < need * 1.3:
        pytest.skip(f"needs about {need * 1.3 / 2**30:.0f} GiB of GPU memory")
    gen = torch.Generator(device=device).manual_seed(8)
    args = [torch.randn(B, p, C_, h, w, device=device, dtype=torch.float16, generator=gen) for _ in range(2)]
    args.append(torch.rand(B, p, h, w, device=device, dtype=torch.float16, generator=gen))
    args = [t.requires_grad_() for t in args]
    out = pdnet.ops.assemble_parts(*args, backend=backend)
    cot = torch.randn(out.shape, device=device, dtype=torch.float16, generator=gen)
    got = [out, *torch.autograd.grad(out, args, cot)]
    last = slice(B - 1, B)

    def run(dtype):
        ins = [t[last].detach().to(dtype).requires_grad_() for t in args]
        r = C.reference(OP)(*ins)
        return [r, *torch.autograd.grad(r, ins, cot[last].to(dtype))]

    for i, (a, r, pt) in enumerate(zip(got, run(torch.float64), run(torch.float16), strict=True)):
        C.assert_matches(a[last], r, pt, grad=i > 0, name=f"last batch element, term {i}")
