"""Hardening of the hot-path ops (issue 15, item 2): NaN / inf propagation and
second-order gradients, for every backend against the reference.

* NaN and inf propagate as in the reference: every backend gives NaN, +inf and -inf at
  the same positions of the output and of every gradient, and the same finite values.
  part_attention's one documented exception: the softmax of a query row whose scores
  are all -inf (every key masked) is 0 instead of NaN, so the oracle of that op is
  :func:`attention_oracle` (the reference with that definition).
* Double backward is exact in every backend (gradgradcheck in float64).

Triton runs in its interpreter on the CPU (tests/conftest.py), on tiny shapes.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pdnet.ops as ops
from pdnet.ops import reference

KERNEL_BACKENDS = [b for b in ("cpp", "triton") if b in ops.available_backends("cpu")]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(dev, b) for dev in DEVICES for b in KERNEL_BACKENDS if b in ops.available_backends(dev)]
NAN, INF = math.nan, math.inf


# --------------------------------------------------------------------------- oracles
class _SoftmaxDeadRowsZero(torch.autograd.Function):
    """softmax over the last dim, 0 on rows that are all -inf; backward y (g - sum g y),
    the formula of torch's softmax backward, on every row."""

    @staticmethod
    def forward(ctx, s):
        dead = (s == -INF).all(-1, keepdim=True)
        y = torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return y * (g - (g * y).sum(-1, keepdim=True))


def attention_oracle(q, k, v, scale, key_mask=None):
    """reference.part_attention, except that a row whose scores are all -inf gets
    attention weights 0 (the documented value of every kernel backend)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, p, Nq, Nk]
    if key_mask is not None:
        s = s + key_mask.unsqueeze(-2).to(s.dtype)
    return torch.matmul(_SoftmaxDeadRowsZero.apply(s), v)  # [B, p, Nq, d]


def run_op(op, backend, args, device, frozen=()):
    """Output and gradients (w.r.t. every tensor input but those at the indices ``frozen``)
    of op with a fixed upstream gradient."""
    leaves = [
        a.to(device).detach().requires_grad_(i not in frozen) if isinstance(a, torch.Tensor) else a
        for i, a in enumerate(args)
    ]
    if op == "part_attention":
        fn = attention_oracle if backend == "oracle" else (lambda *a: ops.part_attention(*a, backend=backend))
    elif op == "part_masks":
        fn = reference.part_masks if backend == "oracle" else (lambda x, g: ops.part_masks(x, g, backend=backend))
    elif op == "part_masks_gt":
        fn = (lambda x, g: reference.part_masks(x, g, False)) if backend == "oracle" else (
            lambda x, g: ops.part_masks_gt(x, g, backend=backend))
    elif op == "assemble_parts":
        fn = reference.assemble_parts if backend == "oracle" else (lambda *a: ops.assemble_parts(*a, backend=backend))
    else:
        fn = reference.area_variance if backend == "oracle" else (lambda x: ops.area_variance(x, backend=backend))
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(7)
    w = (torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5).to(out.dtype).to(device)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, tensors, w, allow_unused=True)
    return out.detach(), [None if g is None else g.detach() for g in grads]


def assert_same_values(name, got, want, dtype):
    """NaN, +inf and -inf at the same places; finite values close."""
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    for what, fn in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        g, w = fn(got), fn(want)
        assert torch.equal(g, w), (
            f"{name}: {what} in the kernel only at {(g & ~w).nonzero().tolist()[:6]}, "
            f"in the oracle only at {(w & ~g).nonzero().tolist()[:6]} ({int(w.sum())} in the oracle)"
        )
    fin = torch.isfinite(want)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got[fin], want[fin], **tol, msg=lambda m: f"{name}: {m}")


def check_against_oracle(op, backend, device, args, dtype, frozen=()):
    out, grads = run_op(op, backend, args, device, frozen)
    ref_out, ref_grads = run_op(op, "oracle", args, "cpu", frozen)
    assert_same_values(f"{op}/{backend} output", out, ref_out, dtype)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        if r is None:
            continue
        assert g is not None, f"{op}/{backend}: no gradient for input {i}"
        assert_same_values(f"{op}/{backend} grad of input {i}", g, r, dtype)


# --------------------------------------------------------------------------- inputs
def _randn(gen, *shape, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def attention_inputs(case, dtype):
    """(q, k, v, scale, key_mask) with one non-finite ingredient; B=1, p=2, Nq=5, Nk=7, d=4."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = _randn(gen, 1, 2, 5, 4, dtype=dtype), _randn(gen, 1, 2, 7, 4, dtype=dtype), _randn(gen, 1, 2, 7, 4, dtype=dtype)
    mask = torch.zeros(1, 2, 7, dtype=dtype)
    mask[0, 1, 5] = -INF
    scale = 0.7
    k[0, 0, 0, 0], k[0, 0, 1, 0] = 1.0, -1.0  # mixed signs in column 0: q_inf hits a +inf score
    if case == "q_nan":
        q[0, 0, 1, 2] = NAN
    elif case == "k_nan_row":
        k[0, 1, 3, :] = NAN
    elif case == "v_nan":
        v[0, 0, 2, 1] = NAN
    elif case == "mask_nan":
        mask[0, 0, 4] = NAN
    elif case == "scale_nan":
        scale = NAN
    elif case == "scale_inf":
        scale = INF
    elif case == "scale_neg_inf":
        scale = -INF
    elif case == "q_inf":
        q[0, 0, 1, 0] = INF
    elif case == "k_inf":
        k[0, 1, 2, 3] = INF
    elif case == "v_inf":
        v[0, 0, 3, 2] = -INF
    elif case == "mask_pos_inf":
        mask[0, 1, 2] = INF
    elif case == "masked_head_and_q_nan":
        mask[0, 0, :] = -INF  # every row of part 0 has no key: out 0, no gradient
        q[0, 1, 2, 0] = NAN
    elif case == "masked_head_and_v_nan":
        mask[0, 0, :] = -INF  # zero weights times a NaN value: NaN, as in the matmul
        v[0, 0, 4, 1] = NAN
    elif case == "masked_head":
        mask[0, 0, :] = -INF
    else:
        raise AssertionError(case)
    return q, k, v, scale, mask


ATTN_CASES = [
    "q_nan", "k_nan_row", "v_nan", "mask_nan", "scale_nan", "scale_inf", "scale_neg_inf", "q_inf", "k_inf",
    "v_inf", "mask_pos_inf", "masked_head_and_q_nan", "masked_head_and_v_nan", "masked_head",
]


def part_masks_inputs(case, dtype, gt=False):
    """(part_logits [2, 3, 3, 4], gate [2, 1, 3, 4]) with one non-finite ingredient."""
    gen = torch.Generator().manual_seed(1)
    x = _randn(gen, 2, 3, 3, 4, dtype=dtype)
    g = torch.rand(2, 1, 3, 4, generator=gen, dtype=torch.float64).to(dtype) if gt else _randn(gen, 2, 1, 3, 4, dtype=dtype)
    if case == "logit_nan":
        x[0, 1, 2, 3] = NAN
    elif case == "logit_pos_inf":
        x[1, 0, 0, 1] = INF
    elif case == "logit_neg_inf":
        x[1, 2, 1, 1] = -INF
    elif case == "logits_all_neg_inf":
        x[0, :, 1, 2] = -INF
    elif case == "gate_nan":
        g[1, 0, 2, 2] = NAN
    elif case == "gate_pos_inf":
        g[0, 0, 0, 3] = INF
    elif case == "gate_neg_inf":
        g[1, 0, 1, 0] = -INF
    elif case == "gate_zero_and_logit_inf":
        g[0, 0, 2, 0] = 0.0
        x[0, 2, 2, 0] = INF
    else:
        raise AssertionError(case)
    return x, g


PM_CASES = ["logit_nan", "logit_pos_inf", "logit_neg_inf", "logits_all_neg_inf", "gate_nan", "gate_pos_inf",
            "gate_neg_inf", "gate_zero_and_logit_inf"]


def assemble_inputs(case, dtype):
    """(p_feats, y_feats [1, 3, 2, 3, 4], masks [1, 3, 3, 4]) with one non-finite ingredient."""
    gen = torch.Generator().manual_seed(2)
    pf, yf = _randn(gen, 1, 3, 2, 3, 4, dtype=dtype), _randn(gen, 1, 3, 2, 3, 4, dtype=dtype)
    m = torch.rand(1, 3, 3, 4, generator=gen, dtype=torch.float64).to(dtype)
    if case == "p_nan":
        pf[0, 1, 0, 2, 3] = NAN
    elif case == "y_inf":
        yf[0, 2, 1, 0, 0] = INF
    elif case == "p_and_y_opposite_inf":
        pf[0, 0, 1, 1, 1], yf[0, 0, 1, 1, 1] = INF, -INF
    elif case == "mask_nan":
        m[0, 0, 2, 2] = NAN
    elif case == "mask_inf":
        m[0, 1, 1, 3] = -INF
    elif case == "mask_zero_feat_inf":
        m[0, 2, 0, 0] = 0.0
        pf[0, 2, 1, 0, 0] = INF
    else:
        raise AssertionError(case)
    return pf, yf, m


AP_CASES = ["p_nan", "y_inf", "p_and_y_opposite_inf", "mask_nan", "mask_inf", "mask_zero_feat_inf"]


def area_inputs(case, dtype):
    """x [2, 3, 3, 4] (p=3) or [2, 1, 3, 4] (single part) with one non-finite ingredient."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1 if case.startswith("one_part") else 3, 3, 4, generator=gen, dtype=torch.float64).to(dtype)
    if case in ("nan", "one_part_nan"):
        x[1, 0, 2, 1] = NAN
    elif case in ("inf", "one_part_inf"):
        x[0, 2 if case == "inf" else 0, 0, 0] = INF
    elif case == "two_parts_inf":
        x[0, 1, 0, 0] = INF
        x[0, 2, 1, 1] = INF
    elif case == "zero_batch_item_and_nan":
        x[0] = 0.0
        x[1, 1, 0, 0] = NAN
    else:
        raise AssertionError(case)
    return (x,)


AV_CASES = ["nan", "inf", "two_parts_inf", "zero_batch_item_and_nan", "one_part_nan", "one_part_inf"]


# --------------------------------------------------------------------------- NaN / inf tests
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ATTN_CASES)
@pytest.mark.parametrize("device,backend", CASES)
def test_part_attention_nonfinite_like_reference(device, backend, case, dtype):
    check_against_oracle("part_attention", backend, device, attention_inputs(case, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", PM_CASES)
@pytest.mark.parametrize("gt", [False, True])
@pytest.mark.parametrize("device,backend", CASES)
def test_part_masks_nonfinite_like_reference(device, backend, gt, case, dtype):
    check_against_oracle("part_masks_gt" if gt else "part_masks", backend, device, part_masks_inputs(case, dtype, gt), dtype)


@pytest.mark.parametrize("mask_grad", [True, False])
@pytest.mark.parametrize("case", ["mask_pos_inf", "mask_neg_inf", "mask_zero_logit_inf", "mask_nan"])
@pytest.mark.parametrize("device,backend", CASES)
def test_part_masks_gt_nonfinite_mask_like_reference(device, backend, case, mask_grad):
    """Also without the mask's gradient (the usual ground truth): the C++ backward then
    takes the softmax from the forward's output instead of recomputing it."""
    x, g = part_masks_inputs("logit_nan", torch.float64, gt=True)
    x[0, 1, 2, 3] = 0.3
    if case == "mask_pos_inf":
        g[0, 0, 1, 1] = INF
    elif case == "mask_neg_inf":
        g[1, 0, 0, 2] = -INF
    elif case == "mask_nan":
        g[1, 0, 2, 1] = NAN
    else:
        g[0, 0, 2, 2] = 0.0
        x[0, 0, 2, 2] = INF
    check_against_oracle("part_masks_gt", backend, device, (x, g), torch.float64, frozen=() if mask_grad else (1,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", AP_CASES)
@pytest.mark.parametrize("device,backend", CASES)
def test_assemble_parts_nonfinite_like_reference(device, backend, case, dtype):
    check_against_oracle("assemble_parts", backend, device, assemble_inputs(case, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", AV_CASES)
@pytest.mark.parametrize("device,backend", CASES)
def test_area_variance_nonfinite_like_reference(device, backend, case, dtype):
    check_against_oracle("area_variance", backend, device, area_inputs(case, dtype), dtype)


def test_attention_oracle_is_the_reference_where_no_row_is_fully_masked():
    q, k, v, scale, mask = attention_inputs("q_nan", torch.float64)
    a, ga = run_op("part_attention", "oracle", (q, k, v, scale, mask), "cpu")
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        b = reference.part_attention(leaves[0], leaves[1], leaves[2], scale, mask)
        gen = torch.Generator().manual_seed(7)
        w = torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5
        gb = torch.autograd.grad(b, leaves, w)
    assert_same_values("oracle output", a, b.detach(), torch.float64)
    for i in range(3):
        assert_same_values(f"oracle grad {i}", ga[i], gb[i], torch.float64)


@pytest.mark.parametrize("device,backend", CASES)
def test_fully_masked_rows_keep_their_value(device, backend):
    """Finite inputs, part 0 fully masked: out 0 there, and no gradient flows from it."""
    q, k, v, scale, mask = attention_inputs("masked_head", torch.float64)
    out, (dq, dk, dv, dm) = run_op("part_attention", backend, (q, k, v, scale, mask), device)
    assert torch.equal(out[0, 0].cpu(), torch.zeros(5, 4, dtype=torch.float64))
    for g in (dq, dk, dv, dm):
        assert torch.equal(g[0, 0].cpu(), torch.zeros_like(g[0, 0].cpu()))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in (dq, dk, dv, dm))


# --------------------------------------------------------------------------- double backward
def _gg_inputs(op, seed=0):
    """Small float64 inputs (tuple, with the indices of the tensors to differentiate)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    if op == "part_attention":
        mask = r(1, 2, 5)
        mask[0, 1, 3] = -INF
        return (r(1, 2, 3, 4), r(1, 2, 5, 4), r(1, 2, 5, 4), 0.6, mask), (0, 1, 2, 4)
    if op in ("part_masks", "part_masks_gt"):
        gate = r(2, 1, 3, 2) if op == "part_masks" else torch.rand(2, 1, 3, 2, generator=gen, dtype=torch.float64)
        return (r(2, 3, 3, 2), gate), (0, 1)
    if op == "assemble_parts":
        return (r(1, 3, 2, 2, 3), r(1, 3, 2, 2, 3), r(1, 3, 2, 3)), (0, 1, 2)
    return (torch.rand(2, 3, 2, 3, generator=gen, dtype=torch.float64) + 0.1,), (0,)


def _op_fn(op, backend, args, diff):
    def fn(*tensors):
        full = list(args)
        for i, t in zip(diff, tensors):
            full[i] = t
        if op == "part_attention":
            return ops.part_attention(*full, backend=backend)
        if op == "part_masks_gt":
            return ops.part_masks_gt(*full, backend=backend)
        return getattr(ops, op)(*full, backend=backend)

    return fn


GG_OPS = ["part_attention", "part_masks", "part_masks_gt", "assemble_parts", "area_variance"]


@pytest.mark.parametrize("op", GG_OPS)
@pytest.mark.parametrize("device,backend", CASES)
def test_double_backward_is_exact(device, backend, op):
    """gradgradcheck in float64: second-order gradients through the kernel backends are
    the reference's (they were silently zero)."""
    if device == "cuda" and backend == "cpp":
        pytest.skip("the CUDA kernels have no float64")
    args, diff = _gg_inputs(op)
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    tensors = [args[i].detach().requires_grad_() for i in diff]
    assert torch.autograd.gradgradcheck(
        _op_fn(op, backend, args, diff), tensors, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("op", GG_OPS)
@pytest.mark.parametrize("device,backend", CASES)
def test_double_backward_matches_reference_hessian_vector_product(device, backend, op):
    """d/dx <grad f(x), u> of the kernel backend equals the reference's."""
    if device == "cuda" and backend == "cpp":
        pytest.skip("the CUDA kernels have no float64")
    args, diff = _gg_inputs(op, seed=4)
    res = {}
    for b in (backend, "reference"):
        tensors = [args[i].detach().to(device).requires_grad_() for i in diff]
        full = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        out = _op_fn(op, b, full, diff)(*tensors)
        gen = torch.Generator().manual_seed(9)
        w = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(device)
        grads = torch.autograd.grad(out, tensors, w, create_graph=True)
        u = [torch.rand(g.shape, generator=gen, dtype=torch.float64).to(device) for g in grads]
        hvp = torch.autograd.grad(sum((g * uu).sum() for g, uu in zip(grads, u)), tensors)
        res[b] = [g.detach().cpu() for g in grads] + [h.cpu() for h in hvp]
    for i, (a, r) in enumerate(zip(res[backend], res["reference"])):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10, msg=lambda m: f"{op}/{backend} term {i}: {m}")


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("device,backend", CASES)
def test_backward_kernels_unless_create_graph(device, backend, create_graph):
    """A plain backward runs the backend's backward kernels; with create_graph the
    differentiable formula (no backward kernel)."""
    q = torch.randn(1, 2, 3, 4, device=device, requires_grad=True)
    loss = ops.part_attention(q, q, q, backend=backend).sum()
    loss = loss + ops.assemble_parts(q[:, :, None], q[:, :, None], q, backend=backend).sum()
    with _OpNames() as mode:
        torch.autograd.grad(loss, q, create_graph=create_graph)
    kernels = [n for n in mode.names if "part_attention_backward" in n or "assemble_parts_backward" in n]
    assert len(kernels) == (0 if create_graph else 2), mode.names
