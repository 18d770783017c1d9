"""part_attention on CUDA beyond the shared cases: head dims above 64, the model's
fast-path strides through the tensor-core path, and sequences so long that the
reference's scores would not fit in the memory a test may take.

Forward and every gradient of both kernel backends against the reference, with the
tolerance rule of cases.py (STYLE.md). The input builders take a device, so the same
bodies run on the CPU backends (``tests/ops`` helpers); the tests are CUDA-only.
"""
from __future__ import annotations

import math

import pytest
import torch

import pdnet.ops
from pdnet.inference import FastPDNet
from pdnet.ops import reference

from . import cases as C
from . import checks

OP = "part_attention"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _case(name, B, p, Nq, Nk, d, scale):
    return C.Case(OP, name, "awkward", dict(B=B, p=p, Nq=Nq, Nk=Nk, d=d), dict(key_mask="random", scale=scale))


#: head dims above 64 (padded to 128 in the Triton kernels), ragged in Nq and Nk; few
#: heads (the small query tiles) and enough heads to fill an H200's 132 SMs with
#: 128-query tiles
HEAD_DIM_CASES = [
    case
    for d in (80, 96, 128)
    for case in (
        _case(f"d{d}_few_heads", 1, 2, 333, 201, d, 1 / math.sqrt(d)),
        _case(f"d{d}_many_heads", 4, 5, 900, 389, d, 0.1),
    )
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("case", HEAD_DIM_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_head_dims_above_64(backend, device, case, dtype):
    """Forward and the gradients of q, k, v and the key mask against the float64 reference."""
    args, kwargs = C.make_inputs(case, device, dtype, requires_grad=True, seed=11)
    checks.compare(OP, backend, args, kwargs, seed=11, ref_at=(torch.float64, device), name=case.id)


# --------------------------------------------------------------------------- the fast path's strides
def fast_path_qkv(B: int, p: int, h: int, w: int, d: int, dtype: torch.dtype, device, seed: int = 0):
    """q, k, v [B, p, h*w, d] laid out as :class:`pdnet.inference.FastPDNet` passes them to
    part_attention: q a view of the channels_last query projection [B, p*d, h, w]; k and
    v the contiguous key and value halves of the reference's channels_last [1, 2*p*d, h, w]
    projection, expanded to the batch (stride 0). Leaves that require grad."""
    gen = torch.Generator().manual_seed(seed)

    def conv_output(n, channels):  # a channels_last convolution output
        x = torch.randn(n, channels, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
        return x.contiguous(memory_format=torch.channels_last)

    q = conv_output(B, p * d).reshape(B, p, d, h * w).transpose(-1, -2)  # [B, p, N, d], a view
    kv = conv_output(1, 2 * p * d).reshape(1, p, 2, d, h * w)  # [1, p, 2, d, N]
    k, v = (kv[:, :, i].transpose(-1, -2).contiguous().expand(B, -1, -1, -1) for i in (0, 1))
    return tuple(t.requires_grad_() for t in (q, k, v))


def test_fast_path_qkv_has_the_strides_fastpdnet_passes(monkeypatch):
    """The layout :func:`fast_path_qkv` builds is the one FastPDNet really calls part_attention
    with (channels_last, a batch of 2 against one reference frame)."""
    import pdnet

    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=3, input_size=(96, 64), attention_dim=16))
    fast = FastPDNet(model.eval()).to(memory_format=torch.channels_last)
    seen = []
    real = pdnet.ops.part_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append([(tuple(t.shape), t.stride()) for t in (q, k, v)])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(pdnet.ops, "part_attention", spy)
    x = torch.randn(2, 3, 96, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        state = fast.encode_reference(x[:1])
        fast(x, state.keys, state.values)
    built = fast_path_qkv(2, 3, 6, 4, 16, torch.float32, "cpu")
    assert seen == [[(tuple(t.shape), t.stride()) for t in built]]
    q, k, v = built
    assert not q.is_contiguous() and k.stride(0) == v.stride(0) == 0


FAST_PATH_SHAPES = [  # (B, p, h, w, d): the release at 480x480 (30x30 tokens), and a ragged grid at d=64
    pytest.param(4, 5, 30, 30, 32, id="release_480"),
    pytest.param(3, 5, 23, 17, 64, id="grid_23x17_d64"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("B,p,h,w,d", FAST_PATH_SHAPES)
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_fast_path_strides_low_precision(backend, device, B, p, h, w, d, dtype):
    """bf16 / fp16 inputs with the fast path's strides (no copy to contiguous on the way):
    forward and gradients against the reference in float32 on the same values."""
    q, k, v = fast_path_qkv(B, p, h, w, d, dtype, device, seed=12)
    assert not q.is_contiguous() and k.stride(0) == 0
    checks.compare(OP, backend, (q, k, v), {"scale": 1.0}, seed=12, ref_at=(torch.float32, device),
                   name=f"fast_path_{B}x{p}x{h}x{w}x{d}")


# --------------------------------------------------------------------------- long sequences
LONG_HEADS, LONG_D = (1, 2), 64  # (B, p), head dim
#: share of the free device memory a long-sequence test may take
MEMORY_SHARE = 8


def long_length(free_bytes: int, heads: int) -> int:
    """N whose full float32 score matrix (heads x N x N) exceeds the test's memory
    (free / MEMORY_SHARE): at least 16384 + 77, at most 80000 + 77 (seconds on an H200);
    77 past a multiple of 128, so that every tile loop ends ragged."""
    n = math.isqrt(free_bytes // MEMORY_SHARE // (4 * heads)) + 1
    return min(max(n, 16384), 80000) // 128 * 128 + 77


def chunked_reference(q, k, v, scale, key_mask, cot, rows: int, acc: torch.dtype) -> list[torch.Tensor]:
    """[out, dq, dk, dv, dkey_mask] of the reference for the upstream gradient ``cot``,
    ``rows`` queries at a time (the reference's scores then take heads x rows x Nk): dk,
    dv and dkey_mask summed over the blocks in ``acc`` and returned in the inputs' dtype."""
    keys = [t.detach().requires_grad_() for t in (k, v, key_mask)]
    outs, dqs = [], []
    sums = [torch.zeros(t.shape, dtype=acc, device=t.device) for t in keys]
    for start in range(0, q.shape[2], rows):
        qb = q[:, :, start : start + rows].detach().requires_grad_()
        out = reference.part_attention(qb, *keys[:2], scale, keys[2])
        grads = torch.autograd.grad(out, (qb, *keys), cot[:, :, start : start + rows])
        outs.append(out.detach())
        dqs.append(grads[0])
        for s, g in zip(sums, grads[1:], strict=True):
            s += g
    return [torch.cat(outs, 2), torch.cat(dqs, 2)] + [s.to(t.dtype) for s, t in zip(sums, keys, strict=True)]


@pytest.fixture(scope="module")
def long_problem():
    """(inputs in float64, upstream gradient in float64, N, the test's memory in bytes, a
    cache of references by dtype) on the current CUDA device; skips when memory is short."""
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()  # blocks cached by earlier tests count as used in mem_get_info
    free = torch.cuda.mem_get_info(device)[0]
    heads = math.prod(LONG_HEADS)
    n = long_length(free, heads)
    budget = free // MEMORY_SHARE
    # the chunked float64 reference needs at least 128 query rows at about 8 copies of their scores
    if 128 * n * heads * 8 * 8 > budget // 2:
        pytest.skip(f"{free / 2**30:.1f} GiB free: too little for the chunked reference at N={n}")
    case = _case("long", *LONG_HEADS, n, n, LONG_D, 0.125)
    args, kwargs = C.make_inputs(case, device, torch.float64, seed=13)
    cot = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(14), dtype=torch.float64).to(device)
    return args, kwargs, cot, n, budget, {}


def long_reference(problem, dtype: torch.dtype) -> tuple[list, list | None]:
    """(float64 reference, plain PyTorch at ``dtype`` or None for float32) on the inputs
    rounded to ``dtype``, computed once per dtype."""
    (q, k, v), kwargs, cot, n, budget, cache = problem
    if dtype not in cache:
        heads = q.shape[0] * q.shape[1]
        rows = max(128, budget // 2 // (heads * n * 8 * 8))
        rounded = [t.to(dtype) for t in (q, k, v, kwargs["key_mask"], cot)]
        ref = chunked_reference(*(t.double() for t in rounded[:3]), kwargs["scale"], rounded[3].double(),
                                rounded[4].double(), rows, torch.float64)
        lowp = None
        if dtype in C.LOW_PRECISION:
            lowp = chunked_reference(*rounded[:3], kwargs["scale"], rounded[3], rounded[4], rows, torch.float32)
        cache[dtype] = (ref, lowp)
    return cache[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("backend,device", checks.cuda_params())
def test_long_sequence_within_memory(long_problem, backend, device, dtype):
    """Nq = Nk in the tens of thousands (more than a full float32 score matrix would take of
    the test's memory): forward and every gradient against the reference computed a block
    of queries at a time; the kernels' own peak memory stays linear in N."""
    (q64, k64, v64), kwargs, cot64, n, budget, _ = long_problem
    q, k, v, mask = (t.to(dtype).requires_grad_() for t in (q64, k64, v64, kwargs["key_mask"]))
    cot = cot64.to(dtype)
    heads = q.shape[0] * q.shape[1]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = pdnet.ops.part_attention(q, k, v, kwargs["scale"], mask, backend=backend)
    got = [out.detach(), *torch.autograd.grad(out, (q, k, v, mask), cot)]
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    scores_bytes = heads * n * n * 4
    assert extra <= min(budget, scores_bytes // 16), f"{backend} took {extra / 2**20:.0f} MiB at N={n}"
    ref, lowp = long_reference(long_problem, dtype)
    for i, (a, r) in enumerate(zip(got, ref, strict=True)):
        C.assert_matches(a, r, None if lowp is None else lowp[i], grad=i > 0, name=f"N={n} {backend} term {i}")
