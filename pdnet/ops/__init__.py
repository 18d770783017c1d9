"""Public API of PDNet's hot-path ops (DESIGN.md section 5).

One module per op (torchvision style), holding the public function, whose docstring is
the op's contract (outputs, dtypes, saved tensors, non-finite values, empty inputs,
gradients), the call to its input checks (:mod:`pdnet.ops._checks`, the only
validation, before any backend runs) and the registration of its kernels with
``torch.library`` (fake kernels and one autograd formula shared by the C++ and the
Triton op):

* :func:`part_attention` (``part_attention.py``);
* :func:`part_masks`, :func:`part_masks_gt` (``part_masks.py``);
* :func:`assemble_parts` (``assemble_parts.py``);
* :func:`area_variance` (``area_variance.py``).

Every op takes a ``backend`` argument:

* ``"auto"`` (default): the registered backend that the static table of
  :mod:`pdnet.ops.auto_table` names for the inputs' device, dtype and problem size
  (``PDNET_AUTO=tune``: timed once per input signature instead; see :func:`auto_choices`
  and :mod:`pdnet.ops._auto`);
* ``"reference"``: the pure-PyTorch implementation in :mod:`pdnet.ops.reference`;
* ``"triton"`` (:mod:`pdnet.kernels`) / ``"cpp"`` (alias ``"cuda"``; ``pdnet._C``): the
  kernel backends, when built.

Asking for a backend that is not available raises an error naming those that are.
Every backend follows the op's contract: the same outputs and saved tensors, the same
non-finite values at the same places of the output and of every gradient, and exact
gradients of every order (a backward with ``create_graph=True`` differentiates the
reference formula, :mod:`pdnet.ops._higher_order`).
"""
from __future__ import annotations

from . import _cpp_backend, _library, _triton_backend, reference
from ._auto import auto_choices
from ._dispatch import KNOWN_BACKENDS, available_backends, register_backend
from .area_variance import area_variance
from .assemble_parts import assemble_parts
from .part_attention import part_attention
from .part_masks import part_masks, part_masks_gt

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
_cpp_backend.register(_library.IMPLS["cpp"])
_triton_backend.register(_library.IMPLS["triton"])
