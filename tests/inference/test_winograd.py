"""pdnet::winograd_conv3x3 (Winograd F(4x4, 3x3), CPU float32) and pdnet.inference.winograd.

Error bound. Every rounding of the algorithm is relative to the magnitude of the value it
rounds, and those magnitudes are bounded by the "absolute" Winograd computation
S = |A^T| ((|G| |g| |G^T|) * (|B^T| |d| |B|)) |A| summed over the input channels (float64),
the analogue for Winograd of sum |w| |x| for a direct convolution. A float32 evaluation
rounds each output through about Cin + 16 operations (U rounded once, 3 + 3 adds per 1-D
input transform, Cin - 1 accumulations, 3 + 3 per 1-D output transform, bias, residual), so
|y - y64| <= (Cin + 16) eps32 S is a worst-case bound (no cancellation of errors); the
kernel stays well inside it, and a wrong transform entry or tile misses it by orders of
magnitude (the test of the bound itself checks that). The tests also record how the error
compares with a direct float32 convolution's (``test_error_growth_vs_direct``): F(4x4, 3x3)
loses about one decimal digit.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import pdnet
from pdnet.inference import FastPDNet, fold_batchnorm
from pdnet.inference import winograd as wg

pytestmark = pytest.mark.skipif(not wg.winograd_available(), reason="pdnet._C (winograd_conv3x3) is not built")

EPS32 = torch.finfo(torch.float32).eps
op = torch.ops.pdnet.winograd_conv3x3 if wg.winograd_available() else None


def abs_bound(x: torch.Tensor, w: torch.Tensor, bias, residual) -> torch.Tensor:
    """S of the module docstring (float64), plus |bias| + |residual|: [N, Cout, H, W]."""
    n, c, h, width = x.shape
    th, tw = (h + 3) // 4, (width + 3) // 4
    bt, at, g = wg.BT.abs(), wg.AT.abs(), wg.G.abs()
    xp = F.pad(x.double().abs(), (1, 4 * tw + 1 - width, 1, 4 * th + 1 - h))
    patches = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # [N, C, th, tw, 6, 6]
    v = torch.einsum("ai,nctuij,bj->abntuc", bt, patches, bt).reshape(36, -1, c)  # [36, T, Cin]
    u = torch.einsum("ia,ocab,jb->ijco", g, w.double().abs(), g).reshape(36, c, -1)  # [36, Cin, Cout]
    m = torch.bmm(v, u).reshape(6, 6, n, th, tw, -1)
    s = torch.einsum("ai,ijntuc,bj->nctaub", at, m, at).reshape(n, -1, 4 * th, 4 * tw)[:, :, :h, :width]
    if bias is not None:
        s = s + bias.double().abs().view(1, -1, 1, 1)
    if residual is not None:
        s = s + residual.double().abs()
    return s


def oracle(x, w, bias, relu, residual) -> torch.Tensor:
    y = F.conv2d(x.double(), w.double(), None if bias is None else bias.double(), padding=1)
    if residual is not None:
        y = y + residual.double()
    return F.relu(y) if relu else y


def check_bound(y, x, w, bias, relu, residual) -> float:
    """max |y - y64| / ((Cin + 16) eps32 S); asserts it is <= 1."""
    ref = oracle(x, w, bias, relu, residual)
    bound = (x.shape[1] + 16) * EPS32 * abs_bound(x, w, bias, residual) + 1e-30
    ratio = float(((y.double() - ref).abs() / bound).max()) if y.numel() else 0.0
    assert ratio <= 1.0, f"error {ratio:.3g} x the bound"
    return ratio


def make(n, cin, cout, h, w, *, seed=0, bias=True, residual=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    wt = torch.randn(cout, cin, 3, 3, generator=g) / (3 * max(cin, 1) ** 0.5)
    b = torch.randn(cout, generator=g) if bias else None
    r = torch.randn(n, cout, h, w, generator=g) if residual else None
    return x, wt, b, r


SHAPES = [  # (N, Cin, Cout, H, W): H, W not multiples of 4, 1x1, 3x5, odd channels, batch 1 and 3
    (1, 16, 16, 8, 8),
    (3, 5, 7, 9, 13),
    (1, 32, 48, 1, 1),
    (3, 17, 33, 3, 5),
    (2, 24, 40, 6, 11),
    (1, 64, 80, 17, 10),
    (1, 1, 1, 4, 4),
]


# ---------------------------------------------------------------------------- the transforms
def test_transforms_are_exact_in_float64():
    """The reference Winograd with float64 weights is the convolution to float64 rounding."""
    x, w, b, r = make(2, 5, 6, 9, 7, residual=True)
    x, w, b, r = x.double(), w.double(), b.double(), r.double()
    y = wg.winograd_conv3x3_reference(x, wg.winograd_weights(w, torch.float64), b, True, r)
    torch.testing.assert_close(y, oracle(x, w, b, True, r), rtol=0, atol=1e-12)


def test_bound_detects_a_wrong_transform():
    """The error bound is tight enough to fail a kernel with one wrong tile."""
    x, w, b, _ = make(1, 16, 16, 8, 8)
    y = op(x, wg.winograd_weights(w), b, False, 16, None).clone()
    y[:, :, 4:8, 0:4] *= 1 + 1e-3  # one tile 0.1 % off
    with pytest.raises(AssertionError, match="x the bound"):
        check_bound(y, x, w, b, False, None)


# ---------------------------------------------------------------------------- the op
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("tiles", ["0", "6"], ids=["three_pass", "blocks_of_6"])
def test_op_matches_conv(shape, channels_last, tiles, monkeypatch):
    """Both algorithms of the kernel: three passes (at::bmm) and tile blocks (own GEMM), here
    with blocks of 6 tiles so that most shapes have several blocks and a partial last one."""
    monkeypatch.setenv("PDNET_WINOGRAD_TILES", tiles)
    n, cin, cout, h, w = shape
    for bias, relu, residual in [(True, False, False), (False, True, False), (True, True, True)]:
        x, wt, b, r = make(n, cin, cout, h, w, seed=cin + h, bias=bias, residual=residual)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = op(x, wg.winograd_weights(wt), b, relu, cout, r)
        assert y.shape == (n, cout, h, w) and y.dtype == torch.float32
        if channels_last and h * w > 1 and cin > 1:
            assert y.is_contiguous(memory_format=torch.channels_last)
        else:
            assert y.is_contiguous()
        check_bound(y, x, wt, b, relu, r)


def test_op_large_map_many_threads():
    """Enough tiles for the default choice to be tile blocks, several per thread (the production
    path of large feature maps)."""
    x, wt, b, r = make(2, 64, 64, 64, 60, residual=True)
    x = x.contiguous(memory_format=torch.channels_last)
    check_bound(op(x, wg.winograd_weights(wt), b, True, 64, r), x, wt, b, True, r)


@pytest.mark.parametrize("cin, h", [(16, 40), (64, 40), (128, 40), (256, 20)])
def test_error_growth_vs_direct(cin, h):
    """The fp32 tolerance table: max |y - y64| / max |y64| <= 2e-6 sqrt(Cin).

    Measured (seeds 0, 1; Cout = Cin): 2.6e-6 (Cin 16), 5.9e-6 (64), 8.1e-6 (128), 8.6e-6
    (256), 1.3e-5 (512), i.e. about 7e-7 sqrt(Cin) = 6 eps32 sqrt(Cin): the accumulated
    rounding grows as a random walk over the input channels, scaled by the transforms'
    growth (entries up to 8 in A^T, 5 in B^T); the table allows 3x that. A direct float32
    convolution (oneDNN) stays at 2-3e-7 for every Cin here, so Winograd is 8x (Cin 16) to
    40x (Cin 256) less accurate: still 5 significant digits."""
    x, wt, b, _ = make(1, cin, cin, h, h, seed=3)
    x = x.contiguous(memory_format=torch.channels_last)
    ref = oracle(x, wt, b, False, None)
    y = op(x, wg.winograd_weights(wt), b, False, cin, None).double()
    err = float((y - ref).abs().max() / ref.abs().max())
    assert err <= 2e-6 * cin**0.5
    err_direct = float((F.conv2d(x, wt, b, padding=1).double() - ref).abs().max() / ref.abs().max())
    assert err_direct < err  # the comparison is meaningful: the direct conv is the more accurate


def test_op_empty():
    x = torch.randn(0, 8, 5, 5)
    U = wg.winograd_weights(torch.randn(4, 8, 3, 3))
    assert op(x, U, None, True, 4, None).shape == (0, 4, 5, 5)
    assert op(torch.randn(1, 8, 0, 5), U, None, False, 4, None).shape == (1, 4, 0, 5)


def test_op_errors():
    x = torch.randn(1, 8, 6, 6)
    U = wg.winograd_weights(torch.randn(4, 8, 3, 3))
    with pytest.raises(RuntimeError, match="x must be float32"):
        op(x.double(), U.double(), None, False, 4, None)
    with pytest.raises(RuntimeError, match="U .* must have the same dtype"):
        op(x, U.double(), None, False, 4, None)
    with pytest.raises(RuntimeError, match=r"x must have 4 dims \(N, Cin, H, W\)"):
        op(x[0], U, None, False, 4, None)
    with pytest.raises(RuntimeError, match=r"U must be \(36, Cin, Cout\) = \(36, 8, 4\)"):
        op(x, U[:, :4], None, False, 4, None)
    with pytest.raises(RuntimeError, match=r"U must be \(36, Cin, Cout\) = \(36, 8, 5\)"):
        op(x, U, None, False, 5, None)
    with pytest.raises(RuntimeError, match=r"bias must be \(Cout,\) = \(4,\)"):
        op(x, U, torch.zeros(5), False, 4, None)
    with pytest.raises(RuntimeError, match=r"residual must be \(N, Cout, H, W\) = \(1, 4, 6, 6\)"):
        op(x, U, None, False, 4, torch.zeros(1, 4, 6, 5))
    with pytest.raises(RuntimeError, match="same device"):
        op(x, U.to("meta"), None, False, 4, None)


def test_gradients_match_conv():
    """Autograd (exact in the Winograd domain) against F.conv2d's: x, the weights (through
    U = G g G^T, so dL/dg = G^T dL/dU G), bias, residual; ReLU active on about half."""
    x, wt, b, r = make(2, 6, 5, 9, 7, residual=True, seed=7)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    b, r = b.requires_grad_(), r.requires_grad_()
    U = wg.winograd_weights(wt).requires_grad_()
    y = op(x, U, b, True, 5, r)
    grad = torch.randn_like(y)
    y.backward(grad)
    x2, w2, b2, r2 = (t.detach().double().requires_grad_() for t in (x, wt, b, r))
    y2 = F.relu(F.conv2d(x2, w2, b2, padding=1) + r2)
    y2.backward(grad.double())
    g = wg.G.float()
    grad_w = torch.einsum("ia,ijco,jb->ocab", g, U.grad.reshape(6, 6, 6, 5), g)
    for got, want in [(x.grad, x2.grad), (grad_w, w2.grad), (b.grad, b2.grad), (r.grad, r2.grad)]:
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_opcheck():
    x, wt, b, r = make(2, 6, 5, 7, 9, residual=True)
    U = wg.winograd_weights(wt)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    for args in [(x, U, b, True, 5, r), (xc, U.clone().requires_grad_(), None, False, 5, None)]:
        torch.library.opcheck(op, args)


def test_fake_kernel_under_compile():
    x, wt, b, _ = make(1, 8, 8, 12, 12)
    U = wg.winograd_weights(wt)
    fn = torch.compile(lambda t: op(t, U, b, True, 8, None), fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(x), op(x, U, b, True, 8, None))


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_other_isa_builds(isa):
    """The AVX2 and DEFAULT builds of the cores (ATEN_CPU_CAPABILITY selects them)."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "import pdnet._C\n"
        "from pdnet.inference import winograd as wg\n"
        "print(pdnet._C.cpu_isa())\n"
        "torch.manual_seed(0)\n"
        "for n, ci, co, h, w in [(2, 19, 37, 9, 11), (1, 64, 64, 16, 16)]:\n"
        "    x = torch.randn(n, ci, h, w).contiguous(memory_format=torch.channels_last)\n"
        "    g = torch.randn(co, ci, 3, 3) / (3 * ci ** 0.5); b = torch.randn(co)\n"
        "    y = torch.ops.pdnet.winograd_conv3x3(x, wg.winograd_weights(g), b, True, co, None)\n"
        "    ref = F.relu(F.conv2d(x.double(), g.double(), b.double(), padding=1))\n"
        "    print(float((y.double() - ref).abs().max() / ref.abs().max()))\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    if pdnet._C.cpu_isa() != "DEFAULT":
        assert lines[0] == isa.upper()
    assert all(float(v) < 1e-5 for v in lines[1:]), lines


# ---------------------------------------------------------------------------- modules
def test_winograd_conv2d_module():
    conv = nn.Conv2d(12, 20, 3, padding=1)
    x = torch.randn(2, 12, 10, 14)
    m = wg.WinogradConv2d(conv, relu=True, min_tiles=0)
    assert m.uses_winograd(x)
    with torch.no_grad():
        check_bound(m(x), x, conv.weight, conv.bias, True, None)
        # direct path: other dtypes, and fewer tiles than min_tiles
        torch.testing.assert_close(m.double()(x.double()), F.relu(conv.double()(x.double())))
        m = wg.WinogradConv2d(conv.float(), relu=False, min_tiles=10**6)
        assert not m.uses_winograd(x)
        torch.testing.assert_close(m(x), conv(x))
    # the measured rule: tiles * TILE_CHANNEL_RATIO >= Cin * Cout
    big = wg.WinogradConv2d(nn.Conv2d(512, 512, 3, padding=1))
    assert big.min_tiles == 512 * 512 // wg.TILE_CHANNEL_RATIO
    assert not big.uses_winograd(torch.empty(1, 512, 4, 4))  # 1 tile: the direct conv
    assert big.uses_winograd(torch.empty(1, 512, 8, 8))  # 4 tiles
    assert wg.WinogradConv2d(nn.Conv2d(64, 64, 3, padding=1)).uses_winograd(torch.empty(1, 64, 4, 4))
    for bad in [
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=0),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    ]:
        with pytest.raises(ValueError, match="kernel 3x3, stride 1, padding 1"):
            wg.WinogradConv2d(bad)


def folded(block: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for bn in block.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
    block.eval()
    fold_batchnorm(block)
    return block


@pytest.mark.parametrize("kind", ["bottleneck", "basic", "basic_downsample"])
def test_convert_resnet_blocks(kind):
    """Fused ReLU / residual patterns of the torchvision blocks compute the block's function."""
    if kind == "bottleneck":
        block, n_conv, cin = Bottleneck(64, 16), 1, 64
    elif kind == "basic":
        block, n_conv, cin = BasicBlock(24, 24), 2, 24
    else:
        down = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        block, n_conv, cin = BasicBlock(16, 24, downsample=down), 2, 16
    block = folded(block)
    x = torch.randn(2, cin, 13, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block(x)  # the direct float32 convolutions
        ref64 = copy.deepcopy(block).double()(x.double())
        assert wg.convert_winograd(block, min_tiles=0) == n_conv
        out = block(x)
    scale = float(ref64.abs().max())
    assert float((out.double() - ref64).abs().max()) < 1e-5 * scale
    assert float((ref.double() - ref64).abs().max()) < 1e-5 * scale


def test_convert_skips_ineligible_and_small_channels():
    net = nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1),  # Cin < min_channels
        nn.Conv2d(32, 32, 3, padding=1),  # converted
        nn.Conv2d(32, 32, 3, padding=1, stride=2),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.Conv2d(32, 1, 3, padding=1),  # Cout < min_channels
    )
    assert wg.convert_winograd(net, min_channels=16) == 1
    assert [type(m).__name__ for m in net] == ["Conv2d", "WinogradConv2d", "Conv2d", "Conv2d", "Conv2d"]


def test_convert_fast_pdnet():
    """A tiny FastPDNet (ResNet-18, BatchNorms with running statistics): 22 convs converted
    (13 in the encoder: every stride-1 3x3 of layer1-4; 6 in the decoder's Fuse modules; the
    IPDA adapter's CBR3x3; the fusion's two CBR3x3), outputs equal to the float64 model's
    within the fp32 fast path's output tolerance (1e-4 relative, tests/data/official/PARITY.md)."""
    from release_fixture import recipe_state_dict

    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64)))
    keys = [(k, tuple(v.shape), str(v.dtype)) for k, v in pdnet.to_release_state_dict(model).items()]
    pdnet.load_release_state_dict(model, recipe_state_dict(keys, 1000))
    model.eval()
    ref64 = FastPDNet(model).double()
    fast = FastPDNet(model).to(memory_format=torch.channels_last)
    assert wg.convert_winograd(fast, min_tiles=0) == 22
    assert sum(isinstance(m, wg.WinogradConv2d) for m in fast.modules()) == 22
    assert wg.convert_winograd(fast, min_tiles=0) == 0  # idempotent
    x, r = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        state64 = ref64.encode_reference(r.double())
        ref = ref64(x.double(), state64.keys, state64.values)
        state = fast.encode_reference(r.contiguous(memory_format=torch.channels_last))
        out = fast(x.contiguous(memory_format=torch.channels_last), state.keys, state.values)
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    assert err < 1e-4
