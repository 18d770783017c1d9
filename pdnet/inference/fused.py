"""The inference fast path: BatchNorm folded into the convolutions, parts batched.

:class:`FastPDNet` is built from a trained :class:`pdnet.PDNet` and computes the same
function (eval mode) with fewer, larger kernels:

* every BatchNorm is folded into the convolution before it (:func:`fold_batchnorm`):
  ``W' = W * g / sqrt(var + eps)``, ``b' = beta + (b - mean) * g / sqrt(var + eps)``,
  computed in float64 and stored in float32 (cast to the inference dtype afterwards);
* the p part branches, the shared part-logit conv, the per-part query / key / value
  projections and the per-part output projections each become ONE grouped convolution
  (groups = p) over the parts stacked along the channels, instead of p small ones;
* the keys and values of the reference frame are computed once per clip
  (:meth:`FastPDNet.encode_reference`) and passed to every target step;
* the attention, the part masks and their assembly go through :mod:`pdnet.ops`
  (``backend="auto"``), so the Triton / C++ kernels are used when they are installed.

The module works in any memory format and dtype; :class:`pdnet.inference.VideoSegmenter`
converts it to channels_last and to bf16 / fp16 on GPUs, and captures it in CUDA graphs.
"""
from __future__ import annotations

import copy
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from .. import ops
from ..model import PDNet, ReferenceState
from ..model.layers import ConvBNReLU, ResNetEncoder, upsample


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution (with bias) equal to ``bn(conv(x))`` in eval mode.

    The folded weights are computed in float64 and returned in ``conv``'s dtype.
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(
            f"fold_conv_bn: expected (Conv2d, BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__})"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_conv_bn: the BatchNorm tracks no running statistics, nothing to fold")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"fold_conv_bn: conv has {conv.out_channels} outputs but BatchNorm {bn.num_features} features")
    w = conv.weight.detach().double()  # [Cout, Cin/g, k, k]
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])  # [Cout]
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)  # [Cout]
    fused = skip_init(
        nn.Conv2d,
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(w * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(beta + (b - bn.running_mean.detach().double()) * scale)
    return fused


def _blocks_with_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv attribute, bn attribute) pairs whose forward is ``bn(conv(x))``, for known module types."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if isinstance(module, ConvBNReLU):
        return [("conv", "bn")]
    if isinstance(module, ResNetEncoder):
        return [("conv1", "bn1")]
    if isinstance(module, BasicBlock):
        return [("conv1", "bn1"), ("conv2", "bn2")]
    if isinstance(module, Bottleneck):
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [
            (a, b)
            for a, b in pairwise(names)
            if isinstance(module._modules[a], nn.Conv2d) and isinstance(module._modules[b], nn.BatchNorm2d)
        ]
    return []


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d of ``module`` into the convolution before it, in place.

    Only module types whose forward applies the BatchNorm directly to the convolution's
    output are rewritten (ConvBNReLU, the ResNet stem, torchvision BasicBlock /
    Bottleneck, ``Sequential(conv, bn)`` as in the ResNet downsample path); the
    BatchNorm is replaced by ``nn.Identity``. The module must be in eval mode.

    Returns:
        The number of BatchNorms folded.

    Raises:
        RuntimeError: a BatchNorm was left that does not follow a convolution in a known
            pattern (names listed), so the folded module would not compute the same function.
    """
    if module.training:
        raise RuntimeError("fold_batchnorm: call model.eval() first (folding uses the running statistics)")
    folded = 0
    for parent in list(module.modules()):
        for conv_name, bn_name in _blocks_with_pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, fold_conv_bn(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    left = [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise RuntimeError(f"fold_batchnorm: could not fold these BatchNorms (no convolution before them): {left}")
    return folded


def _grouped(convs: list[nn.Conv2d], shared_input: bool) -> nn.Conv2d:
    """p convolutions -> one grouped convolution over the p inputs stacked along channels.

    ``shared_input``: every conv reads the same tensor (C channels): the result is a plain
    conv C -> p*Cout. Otherwise conv k reads channels [k*C, (k+1)*C) (groups = p).
    """
    c0 = convs[0]
    p = len(convs)
    groups = 1 if shared_input else p
    cin = c0.in_channels if shared_input else p * c0.in_channels
    has_bias = c0.bias is not None
    out = skip_init(
        nn.Conv2d, cin, p * c0.out_channels, c0.kernel_size, stride=c0.stride, padding=c0.padding, groups=groups,
        bias=has_bias, device=c0.weight.device, dtype=c0.weight.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight for c in convs]))  # [p*Cout, Cin, k, k]
        if has_bias:
            out.bias.copy_(torch.cat([c.bias for c in convs]))
    return out


class FastPDNet(nn.Module):
    """Inference-only PDNet with BatchNorm folded and the p parts batched.

    Build with ``FastPDNet(model)`` (the model is copied, not changed). Usage::

        state = fast.encode_reference(x_r)              # once per clip
        logits = fast(x_t, state.keys, state.values)    # every frame

    Shapes: x Tensor[B, 3, H, W] ImageNet-normalised (H, W multiples of 32); keys and
    values Tensor[B or 1, p, N, d] with N = (H/16)(W/16) at the release's IPDA stride.
    """

    def __init__(self, model: PDNet) -> None:
        super().__init__()
        if not isinstance(model, PDNet):
            raise TypeError(f"FastPDNet: expected a PDNet, got {type(model).__name__}")
        m = copy.deepcopy(model).eval()
        if next(m.parameters()).dtype not in (torch.float32, torch.float64):
            m.float()  # fold in float64 arithmetic, store at least float32
        fold_batchnorm(m)
        cfg = m.config
        self.config = cfg
        self.parts, self.channels, self.dim = cfg.parts, cfg.ipda_channels, cfg.attention_dim
        self.stride, self.scale, self.backend = m.ipda.stride, m.ipda.scale, m.ipda.backend
        self.encoder, self.decoder, self.fusion, self.head = m.encoder, m.decoder, m.fusion, m.head
        ipda = m.ipda
        self.adapter = ipda.adapter  # conv3x3+ReLU, conv1x1+ReLU (folded)
        br = ipda.branches
        self.branch1 = _grouped([b.conv1.conv for b in br], shared_input=True)  # C -> p*C, 1x1
        self.branch2 = _grouped([b.conv2.conv for b in br], shared_input=False)  # p*C -> p*C, 3x3, groups p
        self.branch3 = _grouped([b.conv3.conv for b in br], shared_input=False)  # p*C -> p*C, 1x1, groups p
        self.part_head = _grouped([ipda.part_head] * self.parts, shared_input=False)  # p*C -> p, 3x3, groups p
        self.saliency_head = ipda.saliency_head  # C -> 1, 3x3
        self.query = _grouped(list(ipda.query), shared_input=False)  # p*C -> p*d, 1x1, groups p
        kv = [c for k in range(self.parts) for c in (ipda.key[k], ipda.value[k])]
        self.key_value = skip_init(  # p*C -> p*2d, 1x1, groups p
            nn.Conv2d, self.parts * self.channels, 2 * self.parts * self.dim, 1, groups=self.parts, bias=False,
            device=kv[0].weight.device, dtype=kv[0].weight.dtype,
        )
        with torch.no_grad():  # group k: [key_k (d); value_k (d)]
            self.key_value.weight.copy_(torch.cat([c.weight for c in kv]))  # [2*p*d, C, 1, 1]
        self.out_proj = _grouped([o.conv for o in ipda.out_proj], shared_input=False)  # p*d -> p*C, groups p
        self.eval()

    # ------------------------------------------------------------------ trunk
    def _trunk(self, x: torch.Tensor):
        """x [B, 3, H, W] -> A [B, 128, H/4, W/4], parts [B, p*C, h, w], D [B, p, h, w], S [B, 1, h, w]."""
        decoded = self.decoder(self.encoder(x))[0]  # [B, 128, H/4, W/4]
        a = decoded
        if self.stride != 1:
            a = F.interpolate(a, size=(a.shape[-2] // self.stride, a.shape[-1] // self.stride),
                              mode="bilinear", align_corners=True)  # [B, 128, h, w]
        f = self.adapter(a)  # [B, C, h, w]
        parts = F.relu(self.branch1(f), inplace=True)  # [B, p*C, h, w]
        parts = F.relu(self.branch2(parts), inplace=True)
        parts = F.relu(self.branch3(parts), inplace=True)
        return decoded, parts, self.part_head(parts), self.saliency_head(f)

    def _tokens(self, t: torch.Tensor, per_part: int) -> torch.Tensor:
        """[B, p*c, h, w] -> [B, p, N, c] (a view when t is channels_last)."""
        B, _, h, w = t.shape
        return t.reshape(B, self.parts, per_part, h * w).transpose(-1, -2)

    def encode_reference(self, reference: torch.Tensor) -> ReferenceState:
        """Reference frame(s) Tensor[B, 3, H, W] -> ReferenceState with keys, values [B, p, N, d]."""
        _, parts, _, _ = self._trunk(reference)
        kv = self.key_value(parts)  # [B, p*2d, h, w]
        B, _, h, w = kv.shape
        kv = kv.reshape(B, self.parts, 2, self.dim, h * w)  # [B, p, 2, d, N]
        keys = kv[:, :, 0].transpose(-1, -2).contiguous()  # [B, p, N, d]
        values = kv[:, :, 1].transpose(-1, -2).contiguous()  # [B, p, N, d]
        return ReferenceState(keys, values, tuple(reference.shape[-2:]))

    def forward(
        self, target: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Logits Tensor[B, 1, size] (default: the input size) of ``target`` [B, 3, H, W].

        keys, values: Tensor[B or 1, p, N, d] from :meth:`encode_reference` at the same H, W.
        """
        decoded, parts, part_logits, saliency = self._trunk(target)
        B, _, h, w = parts.shape
        p, C, d = self.parts, self.channels, self.dim
        if keys.shape[0] != B:
            keys, values = keys.expand(B, *keys.shape[1:]), values.expand(B, *values.shape[1:])
        q = self._tokens(self.query(parts), d)  # [B, p, N, d]
        out = ops.part_attention(q, keys, values, scale=self.scale, backend=self.backend)  # [B, p, N, d]
        out = out.transpose(-1, -2).reshape(B, p * d, h, w)  # [B, p*d, h, w]
        if parts.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        y = F.relu(self.out_proj(out), inplace=True)  # [B, p*C, h, w]
        masks = ops.part_masks(part_logits, saliency, backend=self.backend)  # [B, p, h, w]
        assembled = ops.assemble_parts(
            parts.reshape(B, p, C, h, w), y.reshape(B, p, C, h, w), masks, backend=self.backend
        )  # [B, C, h, w]
        fused = self.fusion(decoded, assembled)  # [B, 128, H/4, W/4]
        return upsample(self.head(fused), size if size is not None else target.shape[-2:])  # [B, 1, *size]
