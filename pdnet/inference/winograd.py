"""Winograd F(4x4, 3x3) convolutions for the CPU float32 fast path.

A 3x3, stride 1, padding 1 convolution computes each 4x4 block of outputs from a 6x6 input
patch with 36 multiplications per (input, output) channel pair instead of 144 (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): with the transforms of
this module (interpolation points 0, 1, -1, 2, -2 and infinity),

    U = G g G^T   [6, 6] per (Cout, Cin)   (the weights, once: :func:`winograd_weights`)
    V = B^T d B   [6, 6] per (tile, Cin)
    M = sum over Cin of U * V               (36 GEMMs [tiles, Cin] @ [Cin, Cout])
    y = A^T M A   [4, 4] per (tile, Cout)

The op ``torch.ops.pdnet.winograd_conv3x3(x, U, bias, relu, out_channels, residual=None)``
(C++, ``csrc/ops/winograd_conv.cpp`` and ``csrc/ops/cpu/winograd*``) computes
``act(conv3x3(x) + bias + residual)`` in float32 on the CPU, channels_last or contiguous,
with the bias, the residual and the ReLU in the output transform. This module registers its
fake kernel and its autograd formula (exact for any U, computed in the Winograd domain with
torch ops), and gives

* :class:`WinogradConv2d`, a drop-in for an ``nn.Conv2d`` (3x3, stride 1, padding 1,
  dilation 1, groups 1) with an optional fused ReLU and residual;
* :func:`convert_winograd`, which converts the eligible convolutions of a (BatchNorm-folded)
  :class:`pdnet.inference.FastPDNet` in place and fuses the ReLU that follows them where the
  module's structure is known.

Accuracy: F(4x4, 3x3) rounds more than a direct convolution (the transforms have entries up
to 8 and spread the magnitudes). Against a float64 oracle, the float32 op's max error is
about 7e-7 sqrt(Cin) of max|y| (2.6e-6 at Cin 16, 8e-6 at 128, 1.3e-5 at 512), where oneDNN's
direct float32 convolution stays at 2-3e-7: 8x (Cin 16) to 50x (Cin 512) larger, still five
significant digits (``tests/inference/test_winograd.py`` holds the table and a worst-case
rounding bound). On the ResNet-50 FastPDNet the logits move by 2e-5 to 1.5e-4 of their range.
F(6x6, 3x3) would need points up to +-1/2 and +-3 with entries up to about 100 in its
transforms, losing roughly another digit, so this module uses F(4x4, 3x3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _cpp_backend

__all__ = [
    "AT",
    "BT",
    "G",
    "WinogradConv2d",
    "convert_winograd",
    "winograd_available",
    "winograd_conv3x3_reference",
    "winograd_weights",
]

#: G [6, 3]: U = G g G^T (weight transform)
G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
#: B^T [6, 6]: V = B^T d B (input transform)
BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
#: A^T [4, 6]: y = A^T M A (output transform)
AT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=torch.float64,
)

#: Winograd pays off against oneDNN's direct convolution (channels_last, float32) when U, which
#: the GEMMs read at least once, is used for enough tiles: N * ceil(H/4) * ceil(W/4) *
#: TILE_CHANNEL_RATIO >= Cin * Cout. Measured by bench/bench_winograd.py on a 2-core AVX-512
#: Xeon (docs/performance.md "Winograd (CPU fp32)"): with the kernel's choice of algorithm
#: (three passes with at::bmm for small images, tile blocks for large ones) every ResNet-50
#: PDNet layer at 320 and 480 (64-512 channels, 9-3600 tiles) is 1.8-2.6x faster, and 512
#: channels still win at 5x5 (4 tiles); smaller maps keep the direct convolution (unmeasured).
TILE_CHANNEL_RATIO = 65536
#: convert_winograd leaves convolutions with fewer input or output channels alone
MIN_CHANNELS = 16

_OP_DEFINED = _cpp_backend.LOADED and hasattr(torch.ops.pdnet, "winograd_conv3x3")


def winograd_available() -> bool:
    """Whether the compiled op ``pdnet::winograd_conv3x3`` is loaded (pdnet._C built)."""
    return _OP_DEFINED


def winograd_weights(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The F(4x4, 3x3) weights U [36, Cin, Cout] of a 3x3 kernel.

    Args:
        weight (Tensor[Cout, Cin, 3, 3]): the convolution's weights (any float dtype).
        dtype: the dtype of U (the op takes float32).

    Returns:
        Tensor[36, Cin, Cout] on weight's device: U[6 i + j, ci, co] = (G g G^T)[i, j] for
        g = weight[co, ci], computed in float64 and rounded once to ``dtype``.
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weights: expected weights [Cout, Cin, 3, 3], got {list(weight.shape)}")
    cout, cin = weight.shape[:2]
    kron = torch.kron(G, G).to(weight.device)  # [36, 9]: kron[6 i + j, 3 a + b] = G[i, a] G[j, b]
    w = weight.detach().double().permute(2, 3, 1, 0).reshape(9, cin * cout)  # [9, Cin * Cout]
    return (kron @ w).reshape(36, cin, cout).to(dtype)


# ---------------------------------------------------------------- the transforms in torch ops
def _matrix(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """m in like's dtype and device, built from Python numbers (so that it is a constant under
    fake tensors and tracing, not a copy of a real tensor)."""
    return torch.tensor(m.tolist(), dtype=like.dtype, device=like.device)


def _tiles(h: int, w: int) -> tuple[int, int]:
    return (h + 3) // 4, (w + 3) // 4


def _input_transform(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] -> V [36, N*th*tw, C] (tiles in (n, ty, tx) order)."""
    n, c, h, w = x.shape
    th, tw = _tiles(h, w)
    xp = F.pad(x, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))  # [N, C, 4th+2, 4tw+2]
    patches = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # [N, C, th, tw, 6, 6]
    bt = _matrix(BT, x)
    v = torch.einsum("ai,nctuij,bj->abntuc", bt, patches, bt)  # [6, 6, N, th, tw, C]
    return v.reshape(36, n * th * tw, c)


def _input_transform_adjoint(dv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The adjoint of :func:`_input_transform`: dV [36, T, C] -> dx [N, C, H, W]."""
    n, c, h, w = shape
    th, tw = _tiles(h, w)
    bt = _matrix(BT, dv)
    dp = torch.einsum("ai,abntuc,bj->ncijtu", bt, dv.reshape(6, 6, n, th, tw, c), bt)  # [N, C, 6, 6, th, tw]
    dxp = F.fold(dp.reshape(n, c * 36, th * tw), (4 * th + 2, 4 * tw + 2), 6, stride=4)  # [N, C, 4th+2, 4tw+2]
    return dxp[:, :, 1 : 1 + h, 1 : 1 + w]


def _output_transform(m: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """M [36, N*th*tw, Cout] -> y [N, Cout, H, W] (the pixels inside the image)."""
    th, tw = _tiles(h, w)
    at = _matrix(AT, m)
    y = torch.einsum("ai,ijntuc,bj->nctaub", at, m.reshape(6, 6, n, th, tw, -1), at)  # [N, Cout, th, 4, tw, 4]
    return y.reshape(n, -1, 4 * th, 4 * tw)[:, :, :h, :w]


def _output_transform_adjoint(dy: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_output_transform`: dy [N, Cout, H, W] -> dM [36, T, Cout]."""
    n, co, h, w = dy.shape
    th, tw = _tiles(h, w)
    dyp = F.pad(dy, (0, 4 * tw - w, 0, 4 * th - h)).reshape(n, co, th, 4, tw, 4)  # [N, Cout, th, 4, tw, 4]
    at = _matrix(AT, dy)
    dm = torch.einsum("ai,nctaub,bj->ijntuc", at, dyp, at)  # [6, 6, N, th, tw, Cout]
    return dm.reshape(36, n * th * tw, co)


def winograd_conv3x3_reference(
    x: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The op's function in torch ops (any dtype and device): the oracle of the C++ kernel.

    Args:
        x (Tensor[N, Cin, H, W]), U (Tensor[36, Cin, Cout]), bias (Tensor[Cout] or None),
        residual (Tensor[N, Cout, H, W] or None); relu: apply ReLU last.

    Returns:
        Tensor[N, Cout, H, W] = act(A^T (U * (B^T d B)) A + bias + residual).
    """
    n, _, h, w = x.shape
    y = _output_transform(torch.bmm(_input_transform(x), U.to(x.dtype)), n, h, w)  # [N, Cout, H, W]
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


# ---------------------------------------------------------------- fake kernel and autograd
def _fake(x, U, bias, relu, out_channels, residual=None):
    torch._check(x.dim() == 4, lambda: f"pdnet::winograd_conv3x3: x must be (N, Cin, H, W), got {list(x.shape)}")
    torch._check(
        U.dim() == 3 and U.shape[0] == 36 and U.shape[1] == x.shape[1] and U.shape[2] == out_channels,
        lambda: f"pdnet::winograd_conv3x3: U must be (36, {x.shape[1]}, {out_channels}), got {list(U.shape)}",
    )
    for name, t in (("U", U), ("bias", bias), ("residual", residual)):
        torch._check(
            t is None or (t.device == x.device and t.dtype == x.dtype),
            lambda name=name, t=t: f"pdnet::winograd_conv3x3: {name} ({t.dtype} on {t.device}) and x "
            f"({x.dtype} on {x.device}) must be on the same device and have the same dtype",
        )
    n, _, h, w = x.shape
    out = torch.empty(
        (n, out_channels, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    if torch._prims_common.suggest_memory_format(x) != torch.channels_last:
        out = out.contiguous()
    return out


def _setup_context(ctx, inputs, output):
    x, U, bias, relu, out_channels, residual = inputs
    ctx.relu = relu
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, U, output if relu else None)


def _backward(ctx, grad):
    x, U, out = ctx.saved_tensors
    if ctx.relu:
        grad = grad * (out > 0).to(grad.dtype)  # [N, Cout, H, W]
    need_x, need_u, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    grad_x = grad_u = grad_b = None
    if need_x or need_u:
        dm = _output_transform_adjoint(grad)  # [36, T, Cout]
        if need_x:
            grad_x = _input_transform_adjoint(torch.bmm(dm, U.transpose(1, 2)), x.shape).to(x.dtype)
            if x.is_contiguous(memory_format=torch.channels_last):
                grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        if need_u:
            grad_u = torch.bmm(_input_transform(x).transpose(1, 2), dm)  # [36, Cin, Cout]
    if ctx.has_bias and need_b:
        grad_b = grad.sum((0, 2, 3))
    grad_r = grad if ctx.has_residual and ctx.needs_input_grad[5] else None
    return grad_x, grad_u, grad_b, None, None, grad_r


if _OP_DEFINED:
    torch.library.register_fake("pdnet::winograd_conv3x3", _fake)
    torch.library.register_autograd("pdnet::winograd_conv3x3", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------- modules
def _eligible(conv: nn.Module) -> bool:
    """A plain 3x3 convolution with stride 1, padding 1, dilation 1, groups 1, zero padding."""
    return (
        type(conv) is nn.Conv2d
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) in ((1, 1),)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class WinogradConv2d(nn.Module):
    """A 3x3 convolution (stride 1, padding 1) by Winograd F(4x4, 3x3), for inference.

    Built from an ``nn.Conv2d`` (3x3, stride 1, padding 1, dilation 1, groups 1, zero
    padding, bias or none): the weights are transformed once in float64 and stored as the
    buffer ``U`` [36, Cin, Cout] float32; the convolution's own weights are kept as the buffer
    ``weight`` for the direct path.

    forward(x, residual=None) returns ``act(conv(x) + bias + residual)`` (act = ReLU when
    ``relu``). It runs the C++ op on CPU float32 inputs where Winograd is faster than the
    direct convolution (:meth:`uses_winograd`), and ``F.conv2d`` with the kept weights
    otherwise (other devices and dtypes, small feature maps, or pdnet._C not built).
    Gradients flow to x and the residual on either path (the op's formula is exact in the
    Winograd domain); the buffers are not trained.

    Args:
        conv: the convolution to replace (not modified).
        relu: apply ReLU to the result (fused into the output transform).
        min_tiles: run the Winograd op from this many 4x4 output tiles (N * ceil(H/4) *
            ceil(W/4)) on; None (default): the measured rule, tiles * TILE_CHANNEL_RATIO >=
            Cin * Cout.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False, min_tiles: int | None = None) -> None:
        super().__init__()
        if not _eligible(conv):
            raise ValueError(
                "WinogradConv2d: needs an nn.Conv2d with kernel 3x3, stride 1, padding 1, dilation 1, groups 1 and "
                f"zero padding, got {conv}"
            )
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.relu = bool(relu)
        if min_tiles is None:
            min_tiles = -(-conv.in_channels * conv.out_channels // TILE_CHANNEL_RATIO)
        self.min_tiles = int(min_tiles)
        self.register_buffer("U", winograd_weights(conv.weight))  # [36, Cin, Cout]
        self.register_buffer("weight", conv.weight.detach().float().clone())  # [Cout, Cin, 3, 3]
        bias = conv.bias.detach().float().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), padding=(1, 1), relu={self.relu}, "
            f"bias={self.bias is not None}, min_tiles={self.min_tiles}"
        )

    def uses_winograd(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs the Winograd op (else the direct convolution)."""
        if not _OP_DEFINED or x.device.type != "cpu" or x.dtype != torch.float32 or self.U.dtype != torch.float32:
            return False
        th, tw = _tiles(x.shape[-2], x.shape[-1])
        return x.dim() == 4 and x.shape[0] * th * tw >= self.min_tiles

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_winograd(x):
            return torch.ops.pdnet.winograd_conv3x3(x, self.U, self.bias, self.relu, self.out_channels, residual)
        weight = self.weight.to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        y = F.conv2d(x, weight, bias, padding=1)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class _WinogradBottleneck(nn.Module):
    """torchvision Bottleneck with BatchNorm folded and conv2 a WinogradConv2d with the ReLU fused.

    forward (as torchvision's): relu(bn3(conv3(conv2(relu(bn1(conv1(x)))))) + downsample(x)).
    """

    def __init__(self, block: nn.Module, conv2: WinogradConv2d) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2 = block.conv1, block.bn1, conv2
        self.conv3, self.bn3, self.relu, self.downsample = block.conv3, block.bn3, block.relu, block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)  # bn2 (folded) and the ReLU are in the op
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision's Bottleneck
        return self.relu(out)


class _WinogradBasicBlock(nn.Module):
    """torchvision BasicBlock with BatchNorm folded; conv2 (a WinogradConv2d) adds the identity and
    applies the ReLU in its output transform, conv1 fuses its ReLU when it is one too.

    forward (as torchvision's): relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)).
    """

    def __init__(self, block: nn.Module, conv1: nn.Module, conv1_relu: bool, conv2: WinogradConv2d) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2 = conv1, block.bn1, conv2
        self.relu, self.downsample = block.relu, block.downsample
        self.conv1_relu = conv1_relu  # conv1 applies the ReLU itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        if not self.conv1_relu:
            out = self.relu(out)
        return self.conv2(out, identity)


def convert_winograd(
    module: nn.Module,
    *,
    min_channels: int = MIN_CHANNELS,
    min_tiles: int | None = None,
    relu_fusion: bool = True,
) -> int:
    """Replace the eligible 3x3 convolutions of ``module`` by :class:`WinogradConv2d`, in place.

    Eligible: ``nn.Conv2d`` with kernel 3x3, stride 1, padding 1, dilation 1, groups 1, zero
    padding and at least ``min_channels`` input and output channels. Run it after BatchNorm
    folding (:class:`pdnet.inference.FastPDNet` is folded): with ``relu_fusion`` the ReLU that
    follows a convolution is fused into the op where the module's forward is known:

    * :class:`pdnet.model.layers.ConvBNReLU` with its BatchNorm folded (``nn.Identity``): the
      conv fuses the ReLU and the module's own ReLU is switched off;
    * torchvision ``Bottleneck`` with ``bn2`` folded: replaced by a module with the same
      forward whose conv2 fuses its ReLU;
    * torchvision ``BasicBlock`` with both BatchNorms folded: replaced by a module with the
      same forward whose conv2 adds the identity and applies the ReLU (conv1 fuses its ReLU
      when it is eligible).

    Every other eligible convolution is replaced as is (no fusion). Each WinogradConv2d
    chooses per call between the Winograd op and the direct convolution (``min_tiles``, see
    :class:`WinogradConv2d`; default: the measured rule), so that small feature maps keep the
    faster direct path.

    Returns:
        The number of convolutions converted.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from ..model.layers import ConvBNReLU

    def ok(conv: nn.Module) -> bool:
        return _eligible(conv) and conv.in_channels >= min_channels and conv.out_channels >= min_channels

    def make(conv: nn.Conv2d, relu: bool = False) -> WinogradConv2d:
        return WinogradConv2d(conv, relu=relu, min_tiles=min_tiles)

    converted = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if relu_fusion and type(child) is Bottleneck and isinstance(child.bn2, nn.Identity) and ok(child.conv2):
                setattr(parent, name, _WinogradBottleneck(child, make(child.conv2, relu=True)))
                converted += 1
            elif (
                relu_fusion
                and type(child) is BasicBlock
                and isinstance(child.bn1, nn.Identity)
                and isinstance(child.bn2, nn.Identity)
                and ok(child.conv2)
            ):
                conv1_fused = ok(child.conv1)
                conv1 = make(child.conv1, relu=True) if conv1_fused else child.conv1
                # conv2: relu(conv2(out) + identity), the ReLU after the residual
                setattr(parent, name, _WinogradBasicBlock(child, conv1, conv1_fused, make(child.conv2, relu=True)))
                converted += 1 + int(conv1_fused)
            elif relu_fusion and type(child) is ConvBNReLU and isinstance(child.bn, nn.Identity) and ok(child.conv):
                child.conv = make(child.conv, relu=child.relu)
                child.relu = False
                converted += 1
    for parent in list(module.modules()):  # the rest, unfused
        for name, child in list(parent.named_children()):
            if ok(child):
                setattr(parent, name, make(child))
                converted += 1
    return converted
