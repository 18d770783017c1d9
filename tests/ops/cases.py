"""Cases shared by the op tests (tests/ops/test_<op>.py) and the op benchmarks.

Per op: awkward shapes (one part, odd sizes, Nq != Nk, tiny, empty, fully masked
rows), the model's shapes (480 x 480 input: attention on the 30 x 30 feature map, part
masks and the area loss at the input size, assembly at 30 x 30 and 120 x 120) and large
shapes for GPU benchmarks; a deterministic input factory; the reference each op is
checked against; and the tolerance rule of STYLE.md.

Importable without pytest: the benchmarks put this directory on ``sys.path``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import pdnet.ops
from pdnet.ops import reference as _reference

OPS = ("part_attention", "part_masks", "part_masks_gt", "assemble_parts", "area_variance")
LOW_PRECISION = (torch.float16, torch.bfloat16)

#: dtypes each backend is tested in, per device type. The reference is the oracle, so
#: its own low-precision run would compare it with itself; the CUDA extension has no
#: float64 kernels (a clear error, tested separately).
BACKEND_DTYPES = {
    ("reference", "cpu"): (torch.float64, torch.float32),
    ("reference", "cuda"): (torch.float64, torch.float32),
    ("cpp", "cpu"): (torch.float64, torch.float32, torch.float16, torch.bfloat16),
    ("cpp", "cuda"): (torch.float32, torch.float16, torch.bfloat16),
    ("triton", "cpu"): (torch.float64, torch.float32, torch.float16, torch.bfloat16),
    ("triton", "cuda"): (torch.float64, torch.float32, torch.float16, torch.bfloat16),
}

#: float32 / float64 tolerance (atol, rtol) against the float64 reference; atol is
#: relative to the reference's largest magnitude (at least 1), since a gradient that sums
#: over many pixels or keys is as large as their count.
TOLERANCE = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 1e-4)}

#: STYLE.md's low-precision rule: the error may be this many times PyTorch's own at the
#: same precision (outputs, gradients).
LOW_PRECISION_FACTOR = (2.0, 3.0)


@dataclass(frozen=True)
class Case:
    """One input configuration of one op.

    ``dims``: part_attention B, p, Nq, Nk, d; part_masks / part_masks_gt / area_variance
    B, p, h, w; assemble_parts B, p, C, h, w. ``options``: part_attention ``key_mask``
    (None, "random", "zeros", "one_dropped", "rows_fully_masked", "leading_keys_masked")
    and ``scale``; part_masks_gt ``mask_grad`` (whether the ground-truth mask needs a
    gradient); area_variance ``zeros`` (an all-zero input); every op ``nonfinite`` (a
    key of :data:`NONFINITE`). ``kind`` "nonfinite" marks the NaN / inf cases.
    """

    op: str
    name: str
    kind: str  # "awkward" | "model" | "large" | "nonfinite"
    dims: dict
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"

    @property
    def empty(self) -> bool:
        return any(n == 0 for n in self.dims.values())


def _attention(name, kind, B, p, Nq, Nk, d, key_mask=None, scale=1.0, **options):
    dims = dict(B=B, p=p, Nq=Nq, Nk=Nk, d=d)
    return Case("part_attention", name, kind, dims, dict(key_mask=key_mask, scale=scale, **options))


def _masks(op, name, kind, B, p, h, w, **options):
    return Case(op, name, kind, dict(B=B, p=p, h=h, w=w), options)


def _assemble(name, kind, B, p, C, h, w):
    return Case("assemble_parts", name, kind, dict(B=B, p=p, C=C, h=h, w=w))


CASES: dict[str, list[Case]] = {
    "part_attention": [
        _attention("one_part", "awkward", 1, 1, 7, 9, 8),
        _attention("tiny", "awkward", 1, 1, 1, 1, 1),
        _attention("odd_nq_ne_nk", "awkward", 1, 3, 37, 53, 20, "random", 0.37),
        _attention("many_queries_few_keys", "awkward", 1, 2, 130, 7, 16, "zeros", 0.5),
        _attention("few_queries_many_keys", "awkward", 1, 1, 5, 300, 64, "random", 0.25),
        _attention("head_dim_24", "awkward", 1, 5, 17, 64, 24, "random"),
        _attention("head_dim_40", "awkward", 1, 1, 33, 65, 40, "random", 0.5),
        _attention("head_dim_100", "awkward", 1, 2, 48, 80, 100, "random", 0.1),
        _attention("head_dim_128", "awkward", 2, 1, 70, 300, 128, None, 0.088),
        _attention("rows_fully_masked", "awkward", 2, 3, 11, 13, 8, "rows_fully_masked"),
        _attention("leading_keys_masked", "awkward", 1, 2, 5, 2500, 4, "leading_keys_masked"),
        _attention("empty_queries", "awkward", 2, 3, 0, 5, 8),
        _attention("empty_batch", "awkward", 0, 3, 4, 5, 8, "random"),
        _attention("model", "model", 2, 5, 900, 900, 32),
        _attention("model_masked", "model", 2, 5, 900, 900, 32, "random"),
        _attention("model_B32", "large", 32, 5, 900, 900, 32),
        _attention("N3600_d64", "large", 8, 5, 3600, 3600, 64, scale=0.125),
        _attention("N14400_d64", "large", 1, 5, 14400, 14400, 64, scale=0.125),
    ],
    **{
        op: [
            _masks(op, "one_part", "awkward", 1, 1, 3, 3),
            _masks(op, "odd", "awkward", 2, 5, 17, 19),
            _masks(op, "one_pixel", "awkward", 3, 2, 1, 1),
            _masks(op, "eight_parts", "awkward", 1, 8, 13, 11),
            _masks(op, "eleven_parts", "awkward", 2, 11, 6, 21),
            _masks(op, "empty_pixels", "awkward", 2, 3, 0, 4),
            _masks(op, "empty_batch", "awkward", 0, 3, 4, 4),
            _masks(op, "no_parts", "awkward", 2, 0, 4, 4),
            _masks(op, "model", "model", 2, 5, 480, 480),
            _masks(op, "B32_30x30", "large", 32, 5, 30, 30),
            _masks(op, "B32_480x480", "large", 32, 5, 480, 480),
        ]
        for op in ("part_masks", "part_masks_gt")
    },
    "assemble_parts": [
        _assemble("one_of_each", "awkward", 1, 1, 1, 1, 1),
        _assemble("odd", "awkward", 2, 3, 7, 9, 11),
        _assemble("C17", "awkward", 1, 3, 17, 5, 13),
        _assemble("C64_small_grid", "awkward", 1, 5, 64, 6, 7),
        _assemble("empty_channels", "awkward", 1, 2, 0, 3, 3),
        _assemble("empty_batch", "awkward", 0, 2, 3, 3, 3),
        _assemble("model_30x30", "model", 2, 5, 64, 30, 30),
        _assemble("model_120x120", "model", 2, 5, 64, 120, 120),
        _assemble("B32_30x30", "large", 32, 5, 64, 30, 30),
        _assemble("B32_120x120", "large", 32, 5, 64, 120, 120),
    ],
    "area_variance": [
        _masks("area_variance", "one_part", "awkward", 2, 1, 4, 4),
        _masks("area_variance", "odd", "awkward", 3, 5, 13, 17),
        _masks("area_variance", "one_pixel", "awkward", 2, 2, 1, 1),
        _masks("area_variance", "wide", "awkward", 2, 8, 40, 33),
        _masks("area_variance", "all_zero", "awkward", 2, 4, 3, 3, zeros=True),
        _masks("area_variance", "empty_pixels", "awkward", 2, 3, 0, 4),
        _masks("area_variance", "empty_batch", "awkward", 0, 3, 4, 4),
        _masks("area_variance", "model", "model", 2, 5, 480, 480),
        _masks("area_variance", "B32", "large", 32, 5, 480, 480),
    ],
}
CASES["part_masks_gt"].append(_masks("part_masks_gt", "mask_needs_grad", "awkward", 2, 5, 9, 7, mask_grad=True))

# --------------------------------------------------------------------------- NaN and inf
_NAN, _INF = math.nan, math.inf
_ALL = slice(None)

#: op -> case name -> [(input, index, value)]: one non-finite ingredient per case, written
#: into the inputs of the op's "nonfinite" cases (input: a position or a keyword)
NONFINITE = {
    "part_attention": {
        "q_nan": [(0, (0, 0, 1, 2), _NAN)],
        "k_nan_row": [(1, (0, 1, 3, _ALL), _NAN)],
        "v_nan": [(2, (0, 0, 2, 1), _NAN)],
        "mask_nan": [("key_mask", (0, 0, 4), _NAN)],
        "scale_nan": [("scale", None, _NAN)],
        "scale_inf": [("scale", None, _INF)],
        "scale_neg_inf": [("scale", None, -_INF)],
        "q_inf": [(0, (0, 0, 1, 0), _INF)],  # k has both signs in column 0: a +inf and a -inf score
        "k_inf": [(1, (0, 1, 2, 3), _INF)],
        "v_inf": [(2, (0, 0, 3, 2), -_INF)],
        "mask_pos_inf": [("key_mask", (0, 1, 2), _INF)],
        "masked_head": [("key_mask", (0, 0, _ALL), -_INF)],
        "masked_head_and_q_nan": [("key_mask", (0, 0, _ALL), -_INF), (0, (0, 1, 2, 0), _NAN)],
        "masked_head_and_v_nan": [("key_mask", (0, 0, _ALL), -_INF), (2, (0, 0, 4, 1), _NAN)],  # 0 * NaN
    },
    "part_masks": {
        "logit_nan": [(0, (0, 1, 2, 3), _NAN)],
        "logit_pos_inf": [(0, (1, 0, 0, 1), _INF)],
        "logit_neg_inf": [(0, (1, 2, 1, 1), -_INF)],
        "logits_all_neg_inf": [(0, (0, _ALL, 1, 2), -_INF)],
        "gate_nan": [(1, (1, 0, 2, 2), _NAN)],
        "gate_pos_inf": [(1, (0, 0, 0, 3), _INF)],
        "gate_neg_inf": [(1, (1, 0, 1, 0), -_INF)],
        "gate_zero_and_logit_inf": [(1, (0, 0, 2, 0), 0.0), (0, (0, 2, 2, 0), _INF)],
    },
    "assemble_parts": {
        "p_nan": [(0, (0, 1, 0, 2, 3), _NAN)],
        "y_inf": [(1, (0, 2, 1, 0, 0), _INF)],
        "p_and_y_opposite_inf": [(0, (0, 0, 1, 1, 1), _INF), (1, (0, 0, 1, 1, 1), -_INF)],
        "mask_nan": [(2, (0, 0, 2, 2), _NAN)],
        "mask_inf": [(2, (0, 1, 1, 3), -_INF)],
        "mask_zero_feat_inf": [(2, (0, 2, 0, 0), 0.0), (0, (0, 2, 1, 0, 0), _INF)],
    },
    "area_variance": {
        "nan": [(0, (1, 0, 2, 1), _NAN)],
        "inf": [(0, (0, 2, 0, 0), _INF)],
        "two_parts_inf": [(0, (0, 1, 0, 0), _INF), (0, (0, 2, 1, 1), _INF)],
        "zero_batch_item_and_nan": [(0, (0, _ALL), 0.0), (0, (1, 1, 0, 0), _NAN)],
        "one_part_nan": [(0, (1, 0, 2, 1), _NAN)],
        "one_part_inf": [(0, (0, 0, 0, 0), _INF)],
    },
}
NONFINITE["part_masks_gt"] = NONFINITE["part_masks"]

CASES["part_attention"] += [
    _attention(n, "nonfinite", 1, 2, 5, 7, 4, "one_dropped", 0.7, nonfinite=n) for n in NONFINITE["part_attention"]
]
for _op in ("part_masks", "part_masks_gt"):
    CASES[_op] += [_masks(_op, n, "nonfinite", 2, 3, 3, 4, nonfinite=n, mask_grad=True) for n in NONFINITE[_op]]
# the usual ground truth needs no gradient (a backward that may reuse the forward's output)
CASES["part_masks_gt"] += [
    _masks("part_masks_gt", f"{n}_no_mask_grad", "nonfinite", 2, 3, 3, 4, nonfinite=n, mask_grad=False)
    for n in NONFINITE["part_masks_gt"] if n.startswith("gate")
]
CASES["assemble_parts"] += [
    Case("assemble_parts", n, "nonfinite", dict(B=1, p=3, C=2, h=3, w=4), dict(nonfinite=n))
    for n in NONFINITE["assemble_parts"]
]
CASES["area_variance"] += [
    _masks("area_variance", n, "nonfinite", 2, 1 if n.startswith("one_part") else 3, 3, 4, nonfinite=n)
    for n in NONFINITE["area_variance"]
]


def cases(op: str, *kinds: str) -> list[Case]:
    """The cases of ``op`` of the given kinds (all kinds when none is given)."""
    return [c for c in CASES[op] if not kinds or c.kind in kinds]


# --------------------------------------------------------------------------- inputs
def _key_mask(kind, B, p, Nk, gen):
    """Additive key mask [B, p, Nk] in float64 (0 keeps a key, -inf drops it)."""
    if kind is None:
        return None
    if kind in ("zeros", "one_dropped"):
        m = torch.zeros(B, p, Nk, dtype=torch.float64)
        if kind == "one_dropped":
            m[0, -1, -2] = -math.inf
        return m
    m = torch.randn(B, p, Nk, generator=gen, dtype=torch.float64)
    if kind == "random":  # about a third of the keys dropped, never a whole row
        m[torch.rand(B, p, Nk, generator=gen) < 0.3] = -math.inf
        m[..., -1] = 0.0
    elif kind == "rows_fully_masked":  # head (0, 1) has no key, head (1, 2) one
        m[0, 1] = -math.inf
        m[1, 2, :-1] = -math.inf
    elif kind == "leading_keys_masked":  # live keys only after many masked ones
        m[0, 0, : Nk - Nk // 8] = -math.inf
        m[0, 1, Nk // 2 :] = -math.inf
    else:
        raise ValueError(f"unknown key_mask kind {kind!r}")
    return m


def _ground_truth(B, h, w, gen):
    """A soft ground-truth mask [B, 1, h, w] with exact zeros and ones, as resized masks
    have, tiny values, and a few just below 0 (the formula takes them as they are)."""
    g = torch.rand(B, 1, h, w, generator=gen, dtype=torch.float64)
    flat = g.view(-1)
    flat[::3] = 0.0
    flat[1::5] = 1.0
    flat[2::7] = 1e-30
    flat[4::11] = -0.5
    return g


def make_inputs(
    case: Case, device, dtype: torch.dtype, requires_grad: bool = False, seed: int = 0
) -> tuple[tuple, dict]:
    """(args, kwargs) for ``pdnet.ops.<case.op>(*args, **kwargs, backend=...)``.

    Drawn in float64 on the CPU from ``seed`` (the same values on every device, the
    float64 ones exact), then cast to ``dtype`` and moved to ``device``. With
    ``requires_grad`` every differentiable input requires grad (the ground-truth mask of
    part_masks_gt only where ``options["mask_grad"]``).
    """
    gen = torch.Generator().manual_seed(seed)
    dims, opt = case.dims, case.options

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    kwargs: dict = {}
    grad = set()
    if case.op == "part_attention":
        B, p, Nq, Nk, d = (dims[n] for n in ("B", "p", "Nq", "Nk", "d"))
        args = [randn(B, p, Nq, d), randn(B, p, Nk, d), randn(B, p, Nk, d)]
        grad = {0, 1, 2}
        kwargs = {"scale": opt.get("scale", 1.0), "key_mask": _key_mask(opt.get("key_mask"), B, p, Nk, gen)}
        if kwargs["key_mask"] is not None:
            grad.add("key_mask")
    elif case.op in ("part_masks", "part_masks_gt"):
        B, p, h, w = (dims[n] for n in ("B", "p", "h", "w"))
        gate = randn(B, 1, h, w, scale=2.0) if case.op == "part_masks" else _ground_truth(B, h, w, gen)
        args = [randn(B, p, h, w, scale=2.0), gate]
        grad = {0, 1} if case.op == "part_masks" or opt.get("mask_grad") else {0}
    elif case.op == "assemble_parts":
        B, p, C, h, w = (dims[n] for n in ("B", "p", "C", "h", "w"))
        args = [randn(B, p, C, h, w), randn(B, p, C, h, w), torch.rand(B, p, h, w, generator=gen, dtype=torch.float64)]
        grad = {0, 1, 2}
    elif case.op == "area_variance":
        B, p, h, w = (dims[n] for n in ("B", "p", "h", "w"))
        x = torch.rand(B, p, h, w, generator=gen, dtype=torch.float64)
        x = x * (torch.rand(B, p, 1, 1, generator=gen, dtype=torch.float64) + 0.1)  # unequal areas
        args = [torch.zeros_like(x) if opt.get("zeros") else x]
        grad = {0}
    else:
        raise ValueError(f"unknown op {case.op!r}; ops are {OPS}")

    if case.op == "part_attention" and "nonfinite" in opt:
        args[1][0, 0, :2, 0] = torch.tensor([1.0, -1.0], dtype=torch.float64)
    for key, index, value in NONFINITE[case.op][opt["nonfinite"]] if "nonfinite" in opt else ():
        if key == "scale":
            kwargs["scale"] = value
        else:
            (args if isinstance(key, int) else kwargs)[key][index] = value

    def finish(t, key):
        if t is None:
            return None
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad and key in grad)

    kwargs = {k: finish(v, k) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return tuple(finish(t, i) for i, t in enumerate(args)), kwargs


def cast(args: tuple, kwargs: dict, dtype: torch.dtype, device=None) -> tuple[tuple, dict]:
    """Detached copies of the tensor inputs in ``dtype`` (on ``device``), requires_grad kept."""

    def one(t):
        if not isinstance(t, torch.Tensor):
            return t
        return t.detach().to(device=device or t.device, dtype=dtype).requires_grad_(t.requires_grad)

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def grad_inputs(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The inputs that require grad, positional first, in a fixed order."""
    return [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]


# --------------------------------------------------------------------------- calling
def call(op: str, args: tuple, kwargs: dict, backend: str):
    """``pdnet.ops.<op>(*args, **kwargs, backend=backend)``."""
    return getattr(pdnet.ops, op)(*args, **kwargs, backend=backend)


def reference(op: str):
    """The pure-PyTorch formula of ``op``, called as ``pdnet.ops.<op>`` is (without ``backend``)."""
    if op == "part_masks":
        return lambda part_logits, saliency_logit: _reference.part_masks(part_logits, saliency_logit, True)
    if op == "part_masks_gt":
        return lambda part_logits, mask: _reference.part_masks(part_logits, mask, False)
    return getattr(_reference, op)


def forward_backward(fn, args: tuple, kwargs: dict, seed: int = 0, round_to=None) -> list[torch.Tensor]:
    """[output, gradient of each input that requires grad] of ``fn(*args, **kwargs)``.

    The upstream gradient is drawn in float64 from ``seed``, rounded to ``round_to``
    (when given) and cast to the output's dtype: runs in different dtypes rounding to
    the lowest of them get the same one.
    """
    out = fn(*args, **kwargs)
    wrt = grad_inputs(args, kwargs)
    if not wrt:
        return [out.detach()]
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(round_to or out.dtype)
    cot = cot.to(out.device, out.dtype)
    grads = torch.autograd.grad(out, wrt, cot, allow_unused=True)
    return [out.detach()] + [torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, wrt, strict=True)]


# --------------------------------------------------------------------------- tolerance
def assert_matches(out, ref64, lowp=None, *, grad: bool = False, name: str = "output") -> None:
    """``out`` against ``ref64``, the float64 reference run on the same (rounded) inputs.

    NaN, +inf and -inf must sit at the same places; the finite values must agree within
    :data:`TOLERANCE` for float32 / float64, and for float16 / bfloat16 within STYLE.md's
    rule, ``max|out - ref| <= 2 * max|lowp - ref|`` (3x for a gradient, ``grad=True``),
    where ``lowp`` is plain PyTorch (the reference) run at ``out``'s precision. PyTorch's
    error counts as at least that of the reference rounded to ``out``'s dtype (no result
    in that dtype is closer), also where PyTorch itself overflows. Where PyTorch is
    exact by cancellation the rule alone would demand exactness of kernels
    that accumulate in float32, so a few float32 roundings at the reference's scale are
    allowed on top.
    """
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)}, expected {tuple(ref64.shape)}"
    got, want = out.detach().double().cpu(), ref64.detach().double().cpu()
    for what, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        g, w = test(got), test(want)
        assert torch.equal(g, w), (
            f"{name}: {what} only in the result at {(g & ~w).nonzero().tolist()[:6]}, "
            f"only in the reference at {(w & ~g).nonzero().tolist()[:6]}"
        )
    finite = torch.isfinite(want)
    got, want = got[finite], want[finite]
    if not want.numel():
        return
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    if out.dtype in LOW_PRECISION:
        assert lowp is not None, f"{name}: a {out.dtype} result needs PyTorch's own result at that precision"
        pt_err = max(_max_finite(lowp.detach().double().cpu()[finite] - want),
                     _max_finite(want.to(out.dtype).double() - want))
        factor = LOW_PRECISION_FACTOR[1 if grad else 0]
        floor = 8 * torch.finfo(torch.float32).eps * want.abs().max().item()
        assert err <= factor * pt_err + floor, (
            f"{name} ({out.dtype}): max error {err:.3e} > {factor:g} x PyTorch's {pt_err:.3e} + {floor:.1e}"
        )
        return
    atol, rtol = TOLERANCE[out.dtype]
    torch.testing.assert_close(got, want, atol=atol * scale, rtol=rtol, msg=lambda m: f"{name} ({out.dtype}): {m}")


def _max_finite(diff: torch.Tensor) -> float:
    """max |diff| over its finite entries (0 when there are none)."""
    diff = diff[torch.isfinite(diff)].abs()
    return diff.max().item() if diff.numel() else 0.0


# --------------------------------------------------------------------------- cost
def size(case: Case) -> int:
    """Elements of the op's largest intermediate (attention: the scores B p Nq Nk)."""
    d = case.dims
    if case.op == "part_attention":
        return d["B"] * d["p"] * d["Nq"] * d["Nk"]
    return math.prod(d.values())


def flops(case: Case) -> float:
    """Floating-point operations of the forward (attention: 4 B p Nq Nk d; else 0, memory-bound)."""
    d = case.dims
    if case.op == "part_attention":
        return 4.0 * d["B"] * d["p"] * d["Nq"] * d["Nk"] * d["d"]
    return 0.0
