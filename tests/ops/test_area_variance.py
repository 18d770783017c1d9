"""pdnet.ops.area_variance in every backend built, on every device present, in every dtype.

Forward and gradient against the float64 reference (cases.py), NaN / inf, one part and
all-zero inputs, the raw kernel op's (loss, areas), gradcheck, double backward, opcheck,
torch.compile, validation errors and more rows than a CUDA grid's y dimension.
"""
from __future__ import annotations

import pytest
import torch

import pdnet.ops

from . import cases as C
from . import checks

OP = "area_variance"

# against the reference (awkward, model, large and NaN / inf cases), gradcheck, gradgradcheck,
# double backward, opcheck, backward kernels versus create_graph, torch.compile: checks.py
(test_matches_reference, test_nonfinite_like_reference, test_gradcheck, test_gradgradcheck,
 test_double_backward_matches_reference, test_opcheck, test_backward_kernels_unless_create_graph,
 test_compile_fullgraph) = checks.common_tests(OP)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_one_part_and_all_zero_give_zero_and_no_gradient(backend, device):
    """p == 1 (the unbiased variance is undefined) and all-zero masks: loss 0, gradient 0."""
    for name in ("one_part", "all_zero"):
        case = next(c for c in C.cases(OP) if c.name == name)
        for dtype in C.BACKEND_DTYPES[(backend, device)]:
            (x,), _ = C.make_inputs(case, device, dtype, requires_grad=True)
            loss = pdnet.ops.area_variance(x, backend=backend)
            (dx,) = torch.autograd.grad(loss, x)
            assert loss.shape == () and loss.dtype == dtype and loss.item() == 0.0, (name, dtype)
            assert torch.equal(dx, torch.zeros_like(dx)), (name, dtype)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_gradient_into_a_leaf_and_through_a_softmax(backend, device):
    """A leaf gets a dense .grad (the gradient is one value per part, broadcast over the
    pixels), and the gradient through a softmax over parts, as the part losses use it."""
    case = next(c for c in C.cases(OP) if c.name == "odd")
    dtype = C.BACKEND_DTYPES[(backend, device)][0]
    (x,), _ = C.make_inputs(case, device, dtype, requires_grad=True)
    pdnet.ops.area_variance(x, backend=backend).backward()
    assert x.grad.shape == x.shape and x.grad.is_contiguous()
    x64 = x.detach().double().cpu().requires_grad_()
    (want,) = torch.autograd.grad(C.reference(OP)(x64), x64)
    C.assert_matches(x.grad, want, grad=True, name="leaf gradient")
    checks.compare(
        OP, backend, (torch.softmax(x.detach() * 3, 1).requires_grad_(),), {}, name="through a softmax"
    )


@pytest.mark.parametrize("backend,device", checks.backend_params(checks.KERNEL_BACKEND_DEVICES))
def test_kernel_op_returns_the_loss_and_the_areas(backend, device):
    """The raw kernel op gives (loss, areas [B, p]): areas are the sums over the pixels."""
    case = next(c for c in C.cases(OP) if c.name == "odd")
    (x,), _ = C.make_inputs(case, device, C.BACKEND_DTYPES[(backend, device)][0])
    loss, areas = getattr(torch.ops, checks.NAMESPACE[backend]).area_variance(x)
    assert loss.shape == () and areas.shape == x.shape[:2]
    torch.testing.assert_close(areas.double(), x.double().sum((2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.double(), C.reference(OP)(x.double()), atol=1e-6, rtol=1e-5)


def test_reference_by_hand():
    """Areas (4, 1, 0), normalised, unbiased variance over the 3 parts."""
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, 0] = 1.0
    x[0, 1, 0, 0] = 1.0
    a = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    a = a / a.norm()
    torch.testing.assert_close(C.reference(OP)(x), ((a - a.mean()) ** 2).sum() / 2)


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_errors_name_the_problem(backend, device):
    with pytest.raises(ValueError, match=r"x must have 4 dims.*\(2, 3, 4\)"):
        pdnet.ops.area_variance(torch.rand(2, 3, 4, device=device), backend=backend)
    with pytest.raises(TypeError, match="floating-point.*int64"):
        pdnet.ops.area_variance(torch.ones(1, 2, 3, 3, dtype=torch.int64, device=device), backend=backend)


def test_cpp_raw_op_errors_name_the_dtype():
    if "cpp" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("the cpp backend is not built (test_backends.py fails then)")
    with pytest.raises(RuntimeError, match="floating-point"):
        torch.ops.pdnet.area_variance(torch.ones(1, 2, 3, 3, dtype=torch.int64))


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_cuda_more_rows_than_grid_y(backend, device):
    """B * p = 65600 rows (> 65535, a grid's y limit) of 4160 pixels."""
    gen = torch.Generator(device=device).manual_seed(9)
    x = torch.rand(32800, 2, 65, 64, device=device, generator=gen).requires_grad_()
    loss, areas = getattr(torch.ops, checks.NAMESPACE[backend]).area_variance(x.detach())
    torch.testing.assert_close(areas.double(), x.detach().double().sum((2, 3)), atol=0, rtol=1e-5)
    checks.compare(OP, backend, (x,), {}, name="65600 rows")
