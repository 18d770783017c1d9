"""The ``cpp`` backend: pdnet's compiled ops (``pdnet._C``, built from ``csrc/``).

Importing this module loads the extension, whose C++ side registers the schemas
of ``torch.ops.pdnet.*`` and their CPU (and, when built with CUDA, CUDA) kernels.
This module adds what torch needs beyond the kernels:

* fake (meta) kernels with :func:`torch.library.register_fake`, so that
  ``torch.compile``, ``torch.export`` and ``torch.library.opcheck`` can trace the ops;
* autograd formulas with :func:`torch.library.register_autograd`; every backward is
  itself a ``torch.ops.pdnet.*_backward`` op, dispatched per device. A backward run
  with ``create_graph=True`` (grad mode on inside the formula) differentiates the op's
  PyTorch formula instead (:mod:`pdnet.ops._higher_order`), so that second- and
  higher-order gradients are exact;

and registers the backend ``"cpp"`` with :func:`pdnet.ops.register_backend` for the
devices the extension was built for. When the extension cannot be loaded (not built,
built against another torch, ...), it warns once, calls
:func:`pdnet.ops.mark_unavailable` with the reason, and pdnet keeps working on the
reference ops. Importing this module never raises.

Ops (shapes: B batch, p parts, Nq/Nk queries/keys, d head dim, C channels):

* ``part_attention(q, k, v, scale, key_mask) -> (out, lse)``: out [B,p,Nq,d], lse
  [B,p,Nq] in float32 (float64 for float64 inputs). A query row whose scores are all
  -inf (every key masked) gets attention weights 0: out = 0 (0 * v: NaN only where v
  is not finite), lse = -inf and no gradient (the reference's softmax gives NaN). NaN
  and inf otherwise propagate as in the reference.
* ``part_masks(part_logits, gate, gate_is_logit) -> masks``.
* ``assemble_parts(p_feats, y_feats, masks) -> out``.
* ``area_variance(x) -> (loss, areas)``: areas [B,p] (opmath dtype) are saved for the
  backward so that it does not read x again; ``area_variance_backward`` returns the
  per-(b, part) coefficients [B,p] and the gradient of x is their broadcast (an
  expanded view, as torch's sum backward gives).
"""
from __future__ import annotations

import importlib
import warnings
from typing import Optional

import torch

from . import _higher_order
from ._dispatch import mark_unavailable, register_backend

_C = None
_LOAD_ERROR: Optional[str] = None

try:
    _C = importlib.import_module("pdnet._C")  # registers torch.ops.pdnet.*
except ModuleNotFoundError as exc:
    if exc.name != "pdnet._C":
        _LOAD_ERROR = f"the compiled extension pdnet._C could not be loaded: {type(exc).__name__}: {exc}"
    else:
        _LOAD_ERROR = "the compiled extension pdnet._C is not built"
except Exception as exc:  # ImportError, OSError (undefined symbol: built for another torch), ...
    _LOAD_ERROR = f"the compiled extension pdnet._C could not be loaded: {type(exc).__name__}: {exc}"


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_fakes() -> None:
    lib = "pdnet::"

    @torch.library.register_fake(lib + "part_attention")
    def _(q, k, v, scale, key_mask):
        B, p, Nq, d = q.shape
        return q.new_empty((B, p, Nq, d)), q.new_empty((B, p, Nq), dtype=_opmath(q.dtype))

    @torch.library.register_fake(lib + "part_attention_backward")
    def _(grad_out, grad_lse, q, k, v, out, lse, scale, key_mask, key_mask_grad):
        if key_mask_grad and key_mask is not None:
            dmask = key_mask.new_empty(key_mask.shape)
        else:
            dmask = q.new_empty((0,), dtype=_opmath(q.dtype))
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask

    @torch.library.register_fake(lib + "part_masks")
    def _(part_logits, gate, gate_is_logit):
        return part_logits.new_empty(part_logits.shape)

    @torch.library.register_fake(lib + "part_masks_backward")
    def _(grad_out, part_logits, masks, gate, gate_is_logit, gate_grad):
        return part_logits.new_empty(part_logits.shape), gate.new_empty(gate.shape if gate_grad else (0,))

    @torch.library.register_fake(lib + "assemble_parts")
    def _(p_feats, y_feats, masks):
        B, p, C, h, w = p_feats.shape
        return p_feats.new_empty((B, C, h, w))

    @torch.library.register_fake(lib + "assemble_parts_backward")
    def _(grad_out, p_feats, y_feats, masks, feats_grad, masks_grad):
        gf = p_feats.new_empty(p_feats.shape) if feats_grad else p_feats.new_empty((0,))
        gm = masks.new_empty(masks.shape) if masks_grad else masks.new_empty((0,))
        return gf, gm

    @torch.library.register_fake(lib + "area_variance")
    def _(x):
        B, p = x.shape[:2]
        return x.new_empty(()), x.new_empty((B, p), dtype=_opmath(x.dtype))

    @torch.library.register_fake(lib + "area_variance_backward")
    def _(grad_loss, x, areas):
        return x.new_empty(x.shape[:2])


def _register_autograd() -> None:
    ops = torch.ops.pdnet

    # part_attention: inputs (q, k, v, scale, key_mask), outputs (out, lse)
    def pa_setup(ctx, inputs, output):
        q, k, v, scale, key_mask = inputs
        out, lse = output
        ctx.scale = scale
        ctx.has_mask = key_mask is not None
        ctx.save_for_backward(q, k, v, out, lse, key_mask)

    def pa_backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable formula (_higher_order)
            return _higher_order.backward_by_formula(
                _higher_order.attention_with_lse, (q, k, v, ctx.scale, key_mask), (grad_out, grad_lse),
                ctx.needs_input_grad,
            )
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        mask_grad = ctx.has_mask and ctx.needs_input_grad[4]
        dq, dk, dv, dmask = ops.part_attention_backward(
            grad_out, grad_lse, q, k, v, out, lse, ctx.scale, key_mask, mask_grad
        )
        return dq, dk, dv, None, (dmask if mask_grad else None)

    torch.library.register_autograd("pdnet::part_attention", pa_backward, setup_context=pa_setup)

    # part_masks: inputs (part_logits, gate, gate_is_logit); the output is saved too: the
    # CPU backward takes the softmax from it instead of recomputing p exps per pixel
    def pm_setup(ctx, inputs, output):
        part_logits, gate, gate_is_logit = inputs
        ctx.gate_is_logit = gate_is_logit
        ctx.save_for_backward(part_logits, output, gate)

    def pm_backward(ctx, grad_out):
        part_logits, masks, gate = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _higher_order.backward_by_formula(
                _higher_order.part_masks_formula(ctx.gate_is_logit), (part_logits, gate), (grad_out,),
                ctx.needs_input_grad,
            ) + (None,)
        need_gate = bool(ctx.needs_input_grad[1])
        gl, gg = ops.part_masks_backward(grad_out, part_logits, masks, gate, ctx.gate_is_logit, need_gate)
        return (gl if ctx.needs_input_grad[0] else None, gg if need_gate else None, None)

    torch.library.register_autograd("pdnet::part_masks", pm_backward, setup_context=pm_setup)

    # assemble_parts: inputs (p_feats, y_feats, masks); grad of p_feats == grad of y_feats
    def ap_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def ap_backward(ctx, grad_out):
        p_feats, y_feats, masks = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _higher_order.backward_by_formula(
                _higher_order.assemble_parts_formula, (p_feats, y_feats, masks), (grad_out,), ctx.needs_input_grad
            )
        need_p, need_y, need_m = ctx.needs_input_grad[:3]
        gf, gm = ops.assemble_parts_backward(
            grad_out, p_feats, y_feats, masks, bool(need_p or need_y), bool(need_m)
        )
        return (gf if need_p else None, gf if need_y else None, gm if need_m else None)

    torch.library.register_autograd("pdnet::assemble_parts", ap_backward, setup_context=ap_setup)

    # area_variance: input x, outputs (loss, areas); areas is differentiable through
    # neither formula here and is marked so.
    def av_setup(ctx, inputs, output):
        (x,) = inputs
        loss, areas = output
        ctx.mark_non_differentiable(areas)
        ctx.save_for_backward(x, areas)

    def av_backward(ctx, grad_loss, grad_areas):
        x, areas = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _higher_order.backward_by_formula(
                _higher_order.area_variance_formula, (x,), (grad_loss,), ctx.needs_input_grad
            )[0]
        coef = ops.area_variance_backward(grad_loss, x, areas)  # [B, p]
        # one value per (b, part): broadcast, as torch's sum backward does
        return coef[:, :, None, None].expand(x.shape)

    torch.library.register_autograd("pdnet::area_variance", av_backward, setup_context=av_setup)


# -- backend callables, with the positional signature of pdnet.ops.reference ------------


def part_attention(q, k, v, scale: float, key_mask=None):
    return torch.ops.pdnet.part_attention(q, k, v, float(scale), key_mask)[0]


def part_masks(part_logits, gate, gate_is_logit: bool = True):
    return torch.ops.pdnet.part_masks(part_logits, gate, bool(gate_is_logit))


def assemble_parts(p_feats, y_feats, masks):
    return torch.ops.pdnet.assemble_parts(p_feats, y_feats, masks)


def area_variance(x):
    return torch.ops.pdnet.area_variance(x)[0]


def built_devices() -> tuple:
    """Device types the extension has kernels for (empty when it is not loaded)."""
    if _C is None:
        return ()
    return ("cpu", "cuda") if getattr(_C, "with_cuda", 0) else ("cpu",)


def cpu_isa() -> Optional[str]:
    """Instruction set of the CPU kernels in use ("AVX2" or "DEFAULT"), None when not loaded."""
    return _C.cpu_isa() if _C is not None else None


if _C is None:
    warnings.warn(
        f"pdnet: {_LOAD_ERROR}; the 'cpp' ops backend is unavailable and pdnet uses its "
        "reference ops. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
    mark_unavailable("cpp", _LOAD_ERROR)
else:
    try:
        _register_fakes()
        _register_autograd()
    except Exception as exc:  # e.g. a torch without these registration APIs
        _C = None
        _LOAD_ERROR = f"registering the compiled ops with torch failed: {type(exc).__name__}: {exc}"
        warnings.warn(f"pdnet: {_LOAD_ERROR}; using the reference ops.", RuntimeWarning, stacklevel=2)
        mark_unavailable("cpp", _LOAD_ERROR)
    else:
        register_backend(
            "cpp",
            {
                "part_attention": part_attention,
                "part_masks": part_masks,
                "assemble_parts": assemble_parts,
                "area_variance": area_variance,
            },
            devices=built_devices(),
        )
