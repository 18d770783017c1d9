"""Public API of PDNet's hot-path ops (DESIGN.md section 5).

Every op takes a ``backend`` argument:

* ``"auto"`` (default): the fastest registered backend for the tensors' device (on
  CUDA, with both kernel backends built, timed once per input signature; see
  :func:`auto_choices` and :mod:`pdnet.ops._dispatch`);
* ``"reference"``: the pure-PyTorch implementation in :mod:`pdnet.ops.reference`;
* ``"triton"`` / ``"cpp"`` (alias ``"cuda"``): the kernel backends, when built.

Asking for a backend that is not available raises an error naming those that are.
All inputs are validated here, before any backend runs.

Every backend gives the reference's results, non-finite values included: NaN and inf
in the inputs (or a NaN / infinite ``scale``) appear at the same places of the output
and of every gradient as with ``backend="reference"``. The one documented exception is
:func:`part_attention`'s fully masked row (see there). Gradients of every order are
exact in every backend: a backward run with ``create_graph=True`` differentiates the
op's PyTorch formula (:mod:`pdnet.ops._higher_order`) instead of the backward kernels.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks, reference
from ._dispatch import (
    KNOWN_BACKENDS,
    auto_choices,
    available_backends,
    mark_unavailable,
    register_backend,
    resolve,
)

__all__ = [
    "part_attention",
    "part_masks",
    "part_masks_gt",
    "assemble_parts",
    "area_variance",
    "available_backends",
    "auto_choices",
    "register_backend",
    "KNOWN_BACKENDS",
]

register_backend(
    "reference",
    {
        "part_attention": reference.part_attention,
        "part_masks": reference.part_masks,
        "assemble_parts": reference.assemble_parts,
        "area_variance": reference.area_variance,
    },
    devices=("cpu", "cuda", "mps", "xpu", "meta"),
)


def part_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float = 1.0,
    key_mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-part cross-attention, all parts at once (parts act as heads).

    Args:
        q (Tensor[B, p, Nq, d]): queries from the target frame.
        k (Tensor[B, p, Nk, d]): keys from the reference frame.
        v (Tensor[B, p, Nk, d]): values from the reference frame.
        scale (float): multiplies q k^T before the softmax (the release uses 1.0).
        key_mask (Tensor[B, p, Nk], optional): additive mask on the keys
            (0 keeps a key, -inf drops it).
        backend (str): see the module docstring.

    Returns:
        Tensor[B, p, Nq, d]: softmax over keys of (q k^T * scale + key_mask) times v.
        A query row whose scores are all -inf (every key masked) has attention weights
        0 in the kernel backends: its output is 0 (0 * v, so NaN only where v is not
        finite) and it passes no gradient; the reference's softmax gives NaN there.
        Otherwise NaN / inf propagate as in the reference (a NaN in a row of k, or
        scale=nan, gives NaN in every query row that attends that key).
    """
    _checks.check_part_attention(q, k, v, scale, key_mask)
    return resolve("part_attention", backend, q.device)(q, k, v, float(scale), key_mask)


def part_masks(part_logits: torch.Tensor, saliency_logit: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Part masks R = softmax over parts(D) * sigmoid(S).

    Args:
        part_logits (Tensor[B, p, h, w]): part logits D.
        saliency_logit (Tensor[B, 1, h, w]): saliency logit S.

    Returns:
        Tensor[B, p, h, w]
    """
    _checks.check_part_masks(part_logits, saliency_logit, "saliency_logit")
    return resolve("part_masks", backend, part_logits.device)(part_logits, saliency_logit, True)


def part_masks_gt(part_logits: torch.Tensor, mask: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Ground-truth variant of :func:`part_masks`: softmax over parts(D) * G.

    Args:
        part_logits (Tensor[B, p, h, w]): part logits D.
        mask (Tensor[B, 1, h, w]): ground-truth foreground in [0, 1] (soft after resizing).

    Returns:
        Tensor[B, p, h, w]
    """
    _checks.check_part_masks(part_logits, mask, "mask")
    return resolve("part_masks", backend, part_logits.device)(part_logits, mask, False)


def assemble_parts(
    p_feats: torch.Tensor, y_feats: torch.Tensor, masks: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Correlation assembly M = sum_k (P^k + Y^k) * R^k.

    Args:
        p_feats (Tensor[B, p, C, h, w]): part features P of the target frame.
        y_feats (Tensor[B, p, C, h, w]): attended features Y.
        masks (Tensor[B, p, h, w]): part masks R.

    Returns:
        Tensor[B, C, h, w]
    """
    _checks.check_assemble_parts(p_feats, y_feats, masks)
    return resolve("assemble_parts", backend, p_feats.device)(p_feats, y_feats, masks)


def area_variance(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Area-variance loss of part probabilities (paper eq. 3-4).

    Args:
        x (Tensor[B, p, H, W]): non-negative part probabilities.

    Returns:
        Tensor[]: mean over the batch of the unbiased variance over parts of the
        L2-normalised part areas (0 when p == 1).
    """
    _checks.check_area_variance(x)
    return resolve("area_variance", backend, x.device)(x)


def _load_kernel_backends() -> None:
    """Register the kernel backends that are installed.

    ``_triton_backend`` (Triton kernels in ``pdnet.kernels``) and ``_cpp_backend``
    (the compiled extension ``pdnet._C``) each register themselves on import, or
    call :func:`mark_unavailable` with the reason they cannot.
    """
    import importlib

    for module, backend in (("_triton_backend", "triton"), ("_cpp_backend", "cpp")):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise
            mark_unavailable(backend, "this version of pdnet does not ship it yet")


_load_kernel_backends()
