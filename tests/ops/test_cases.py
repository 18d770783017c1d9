"""The shared cases themselves (cases.py), which the op tests and benchmarks rely on."""
from __future__ import annotations

import math

import pytest
import torch

from . import cases as C


def test_every_op_has_awkward_model_and_large_cases_with_unique_names():
    for op in C.OPS:
        names = [c.name for c in C.CASES[op]]
        assert len(names) == len(set(names)), op
        assert {c.op for c in C.CASES[op]} == {op}
        for kind in ("awkward", "model", "large", "nonfinite"):
            assert C.cases(op, kind), (op, kind)


@pytest.mark.parametrize("op", C.OPS)
def test_inputs_are_deterministic_and_fit_the_op(op):
    """Same seed, same inputs; they are valid inputs of the public op (it runs on them)."""
    for case in C.cases(op, "awkward"):
        a1, k1 = C.make_inputs(case, "cpu", torch.float64, requires_grad=True)
        a2, k2 = C.make_inputs(case, "cpu", torch.float64)
        for x, y in zip((*a1, *k1.values()), (*a2, *k2.values()), strict=True):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y) and not y.requires_grad
            else:
                assert x == y or (math.isnan(x) and math.isnan(y))
        assert C.grad_inputs(a1, k1) and not C.grad_inputs(a2, k2)
        C.call(op, a1, k1, "reference")


def test_inputs_take_dtype_and_device():
    case = C.cases("part_attention", "awkward")[0]
    args, kwargs = C.make_inputs(case, "cpu", torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in args)
    assert C.flops(case) == 4.0 * 1 * 1 * 7 * 9 * 8


def test_low_precision_rule_can_fail():
    """A result further from the reference than twice PyTorch's own error fails."""
    ref = torch.linspace(-1, 1, 101, dtype=torch.float64)
    pt = ref.to(torch.bfloat16)
    C.assert_matches(pt, ref, pt)
    with pytest.raises(AssertionError, match="max error"):
        C.assert_matches((ref + 0.05).to(torch.bfloat16), ref, pt)
    with pytest.raises(AssertionError, match="NaN only in the result"):
        C.assert_matches(torch.where(ref > 0.9, math.nan, ref).float(), ref)
