"""Triton kernels of PDNet's hot-path ops (installed as ``pdnet.kernels``).

One module per op, each with its forward and backward kernels and plain host functions
that allocate the outputs and launch them (through ``torch.library.wrap_triton``, so
that torch.compile can trace into the launches) on the inputs' device and its current
stream, whichever device is current (``_common.on_input_device``):

* ``part_attention``: ``part_attention_forward(q, k, v, scale, key_mask) -> (out, lse)``
  and ``part_attention_backward(grad_out, grad_lse, q, k, v, out, lse, scale, key_mask,
  key_mask_grad) -> (dq, dk, dv, dkey_mask)``; limits ``MAX_HEAD_DIM``, ``MAX_HEADS``;
* ``part_masks``: ``part_masks_forward(part_logits, gate, gate_is_logit) -> masks`` and
  ``part_masks_backward(grad_out, part_logits, masks, gate, gate_is_logit, gate_grad)``;
* ``assemble_parts``: ``assemble_parts_forward(p_feats, y_feats, masks) -> out`` and
  ``assemble_parts_backward(grad_out, p_feats, y_feats, masks, feats_grad, masks_grad)``;
* ``area_variance``: ``area_sums(x) -> areas`` (the loss and its gradient are
  functions of the areas, computed in :mod:`pdnet.ops.area_variance`).

The host functions take the arguments of the C++ ops of the same names
(``torch.ops.pdnet.*``) and return the same things. They do not validate their inputs,
register nothing with ``torch.library`` and have no autograd: :mod:`pdnet.ops` checks
the inputs once, registers these functions as the custom ops ``pdnet_triton::*`` with
their fake kernels and autograd formulas, and documents each op's contract. This package
does not import pdnet.

The kernels run on CUDA tensors; with ``TRITON_INTERPRET=1`` set before import they run
on CPU tensors through Triton's interpreter (:data:`INTERPRET`; slow, for tests).
"""
from . import area_variance, assemble_parts, part_attention, part_masks
from ._common import INTERPRET

__all__ = ["INTERPRET", "part_attention", "part_masks", "assemble_parts", "area_variance"]
