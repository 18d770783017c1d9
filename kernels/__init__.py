"""Triton kernels of PDNet's hot-path ops (installed as ``pdnet.kernels``).

One module per op, each with forward and backward kernels, registered with
``torch.library.triton_op`` under the namespace ``pdnet_triton`` (fake kernels and
autograd included), and one public function of the same name taking the arguments
of :mod:`pdnet.ops.reference`:

* ``part_attention.part_attention(q, k, v, scale, key_mask)`` -> [B, p, Nq, d]
* ``part_masks.part_masks(part_logits, gate, gate_is_logit)`` -> [B, p, h, w]
* ``assemble_parts.assemble_parts(p_feats, y_feats, masks)`` -> [B, C, h, w]
* ``area_variance.area_variance(x)`` -> []

:data:`OPS` maps each op name to its public function.

The kernels run on CUDA tensors; with ``TRITON_INTERPRET=1`` set before import they
run on CPU tensors through Triton's interpreter (slow; used by the CPU test suite).
Use them through :mod:`pdnet.ops` with ``backend="triton"``.
"""
from . import area_variance, assemble_parts, part_attention, part_masks
from ._common import INTERPRET, NAMESPACE

#: op name -> public function (same positional arguments as pdnet.ops.reference)
OPS = {
    "part_attention": part_attention.part_attention,
    "part_masks": part_masks.part_masks,
    "assemble_parts": assemble_parts.assemble_parts,
    "area_variance": area_variance.area_variance,
}

__all__ = ["OPS", "INTERPRET", "NAMESPACE", "part_attention", "part_masks", "assemble_parts", "area_variance"]
