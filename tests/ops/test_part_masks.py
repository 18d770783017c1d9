"""pdnet.ops.part_masks and part_masks_gt in every backend built, on every device present,
in every dtype.

Forward and every gradient against the float64 reference (cases.py), NaN / inf,
saturated logits and gates, one part, gradcheck, double backward, opcheck of the raw
kernel op, torch.compile and validation errors.
"""
from __future__ import annotations

import pytest
import torch

import pdnet.ops

from . import cases as C
from . import checks

OPS = ("part_masks", "part_masks_gt")

# against the reference (awkward, model, large and NaN / inf cases), gradcheck, gradgradcheck,
# double backward, opcheck, backward kernels versus create_graph, torch.compile: checks.py
(test_matches_reference, test_nonfinite_like_reference, test_gradcheck, test_gradgradcheck,
 test_double_backward_matches_reference, test_opcheck, test_backward_kernels_unless_create_graph,
 test_compile_fullgraph) = checks.common_tests(*OPS)


def _finite_dtypes(backend, device):
    return [dt for dt in C.BACKEND_DTYPES[(backend, device)] if dt not in C.LOW_PRECISION]


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_saturated_logits_and_gates(backend, device):
    """Softmax and sigmoid at 0 or 1 exactly (logits +-80, gates +-200), and ground-truth
    gates that are exactly 0 (their gradient then needs the softmax itself)."""
    x = torch.tensor([[[[80.0, -80.0, 3.0, 0.5]], [[-80.0, 80.0, 3.0, -0.5]], [[0.0, 0.0, -1.0, 2.0]]]])
    s = torch.tensor([[[[-200.0, 200.0, -104.0, 40.0]]]])
    gt = torch.tensor([[[[0.0, 1.0, 0.0, 0.25]]]])
    for dtype in _finite_dtypes(backend, device):
        def leaf(t, dtype=dtype):
            return t.to(device, dtype).requires_grad_()

        checks.compare("part_masks", backend, (leaf(x), leaf(s)), {}, name="saturated")
        checks.compare("part_masks_gt", backend, (leaf(x), leaf(gt)), {}, name="saturated")
        checks.compare("part_masks_gt", backend, (leaf(x), gt.to(device, dtype)), {}, name="saturated")


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_all_zero_ground_truth(backend, device):
    """G = 0 everywhere: masks 0, no gradient for the logits, d/dG = sum_k dR_k softmax_k."""
    case = next(c for c in C.cases("part_masks_gt") if c.name == "odd")
    for dtype in _finite_dtypes(backend, device):
        (x, g), _ = C.make_inputs(case, device, dtype, requires_grad=True)
        zero = torch.zeros_like(g).requires_grad_()
        out, dx, _ = C.forward_backward(lambda a, b: pdnet.ops.part_masks_gt(a, b, backend=backend), (x, zero), {})
        assert torch.all(out == 0) and torch.all(dx == 0)
        checks.compare("part_masks_gt", backend, (x, zero), {}, name="zero ground truth")


@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_one_part_gives_exactly_zero_logit_gradient(backend, device):
    """softmax over a single part is constant: its gradient is exactly 0 (with p = 1 the
    part head must not move), with a logit gate, a ground truth, and one that needs grad."""
    case = next(c for c in C.cases("part_masks_gt") if c.name == "one_part")
    for dtype in C.BACKEND_DTYPES[(backend, device)]:
        for op, gate_grad in (("part_masks", False), ("part_masks_gt", False), ("part_masks_gt", True)):
            (x, g), _ = C.make_inputs(case, device, dtype, seed=14)
            x.requires_grad_()
            g.requires_grad_(gate_grad)
            out = C.call(op, (x, g), {}, backend)
            (dx,) = torch.autograd.grad(out, x, torch.randn_like(out))
            assert torch.equal(dx, torch.zeros_like(dx)), (op, dtype, gate_grad)


# --------------------------------------------------------------------------- the reference
def test_reference_formulas():
    """Summed over parts the masks give the gate (softmax sums to 1); the ground-truth
    variant is softmax(D) * G, 0 where G is."""
    case = next(c for c in C.cases("part_masks") if c.name == "odd")
    (d, s), _ = C.make_inputs(case, "cpu", torch.float64)
    ref = C.reference("part_masks")(d, s)
    torch.testing.assert_close(ref.sum(1, keepdim=True), torch.sigmoid(s))
    (d, g), _ = C.make_inputs(C.Case("part_masks_gt", "odd", "awkward", case.dims), "cpu", torch.float64)
    torch.testing.assert_close(C.reference("part_masks_gt")(d, g), torch.softmax(d, 1) * g)
    assert torch.all(C.reference("part_masks_gt")(d, torch.zeros_like(g)) == 0)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("backend,device", checks.backend_params())
def test_errors_name_the_problem(backend, device):
    x = torch.randn(2, 3, 4, 4, device=device)
    with pytest.raises(ValueError, match=r"saliency_logit must be \(B, 1, h, w\) = \(2, 1, 4, 4\).*\(2, 2, 4, 4\)"):
        pdnet.ops.part_masks(x, torch.randn(2, 2, 4, 4, device=device), backend=backend)
    with pytest.raises(ValueError, match=r"mask must be \(B, 1, h, w\) = \(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        pdnet.ops.part_masks_gt(x, torch.rand(2, 1, 4, 5, device=device), backend=backend)
    with pytest.raises(ValueError, match=r"part_logits must have 4 dims.*\(3, 4, 4\)"):
        pdnet.ops.part_masks(x[0], x[:, :1], backend=backend)
    with pytest.raises(TypeError, match="mask has dtype torch.float64 but part_logits has dtype torch.float32"):
        pdnet.ops.part_masks_gt(x, x[:, :1].double(), backend=backend)
    if device == "cuda":
        with pytest.raises(ValueError, match="saliency_logit is on cpu but part_logits is on cuda"):
            pdnet.ops.part_masks(x, x[:, :1].cpu(), backend=backend)


def test_cpp_raw_op_errors_name_shapes():
    if "cpp" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("the cpp backend is not built (test_backends.py fails then)")
    with pytest.raises(RuntimeError, match=r"gate must be \(B, 1, h, w\)"):
        torch.ops.pdnet.part_masks(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4), True)
