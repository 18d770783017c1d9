"""DAVIS region (J) and boundary (F) measures, statistics and flicker, vectorised in torch.

Definitions (DAVIS protocol, as the davis2017-evaluation toolkit computes them for one
binary object without void pixels):

- **J** (region similarity) of a frame: |P & G| / |P | G|, and 1 when both masks are empty.
- **F** (boundary F-measure) of a frame: the boundary of a mask is the set of pixels that
  differ from their right, lower or lower-right neighbour (neighbours outside the image
  do not count). Boundary pixels of P within a disk of radius
  ``r = ceil(bound_th * sqrt(H^2 + W^2))`` (``r = bound_th`` when ``bound_th >= 1``) of a
  boundary pixel of G are matched, and vice versa. precision = matched P-boundary /
  P-boundary, recall = matched G-boundary / G-boundary, F = 2 P R / (P + R), 0 when
  P + R = 0. Empty boundaries: P empty and G not: precision 1, recall 0 (F = 0); G empty
  and P not: precision 0, recall 1 (F = 0); both empty: F = 1.
- **statistics** of a sequence's per-frame values: Mean, Recall (fraction of frames
  > 0.5), Decay (4 bins, mean of the first minus mean of the last; bin i spans indices
  ``ids[i] .. ids[i+1]`` inclusive, ``ids = round(linspace(1, N, 5)) - 1`` with halves
  rounded up).
- **flicker** (temporal stability, dtSSD-style): for consecutive evaluated frames,
  e_t = (P_t - P_{t-1}) - (G_t - G_{t-1}) per pixel (values -2..2), the change of the
  prediction that the ground truth does not explain; per frame pair the root mean
  square sqrt(mean_pixels e_t^2); flicker of a sequence = mean over its frame pairs
  (0 with fewer than two frames). 0 is perfectly stable (any change follows the
  ground truth); a mask that toggles an area a (as a fraction of the image) on and off
  every frame against a static ground truth scores sqrt(a). Lower is better. Unlike
  matting's dtSSD it is computed on the binarised masks and normalised by the pixel
  count, so that it does not depend on the resolution.

Differences from the toolkit, on purpose:

- Decay with more than 256 evaluated frames: the toolkit casts the bin indices to
  ``uint8``, so they wrap modulo 256: its last bin is then empty (Decay NaN, and the
  overall Decay, a mean over sequences, NaN with it) or covers the wrong frames (e.g.
  a linear 1 -> 0 ramp of 400 frames gets 0.11 instead of 0.75). Here the indices are
  exact integers at any length; up to 256 frames the two agree exactly.
- Void pixels and multiple objects are not handled: portrait masks are one binary
  object.

Speed: masks are bit-packed (64 pixels per word), boundaries come from word shifts,
the disk dilation is the OR of the disk's rows (horizontal widenings of the boundary
rows, then row shifts), counts are popcounts. Two implementations compute the same
integer counts (:func:`frame_counts`):

- ``cpp``: a fused CPU kernel in pdnet's compiled extension (``csrc/eval/``,
  ``torch.ops.pdnet.eval_frame_counts``), one frame per thread at a time, streaming
  over the rows and touching only the words that hold boundary pixels; used for CPU
  tensors when the extension is built;
- ``torch``: eager torch ops on bit-packed tensors (:mod:`pdnet.evaluation._bits`), all
  frames of a chunk together; used on CUDA, and on the CPU without the extension.

All divisions are done in float64 in the same order as the toolkit, so the results are
bit-identical to it. ``bench/bench_eval.py`` times both against the per-frame toolkit path
(NumPy ``seg2bmap`` + OpenCV's ``cv2.dilate``); ``torch`` is the slower of the two because
each eager op makes a pass over memory and a dilation takes dozens of them.
"""
from __future__ import annotations

import functools
import importlib
import math
import warnings

import numpy as np
import torch

from . import _bits

ArrayLike = np.ndarray | torch.Tensor

#: pixels (per mask) processed together: about 8 frames of 480p on the CPU (the chunk's
#: packed maps stay small), 256 on CUDA (bounded memory for long, large sequences)
CPU_CHUNK_PIXELS = 8 * 480 * 854
CUDA_CHUNK_PIXELS = 256 * 480 * 854


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Matching radius in pixels: ``bound_th`` when >= 1 (an integer), else ceil(bound_th * diagonal)."""
    if bound_th <= 0 or not math.isfinite(bound_th):
        raise ValueError(f"bound_th must be a positive number, got {bound_th!r}")
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th!r}")
        return int(bound_th)
    return int(math.ceil(bound_th * math.sqrt(height * height + width * width)))


def _to_mask(x, name: str, fn: str) -> torch.Tensor:
    """Array or tensor of rank 2 or 3 -> bool Tensor[T, H, W] (nonzero = foreground), no copy when bool."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if t.dim() not in (2, 3):
        raise ValueError(f"{fn}: {name} must have shape (H, W) or (T, H, W), got {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"{fn}: {name} must be boolean, integer or floating point, got {t.dtype}")
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"{fn}: {name} is an empty image of shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        t = t != 0
    return t if t.dim() == 3 else t.unsqueeze(0)


def _check_pair(pred, gt, fn: str) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
    """Validated bool Tensor[T, H, W] pair, whether the input was torch, and whether it was one frame."""
    is_torch = isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor)
    p = _to_mask(pred, "pred", fn)
    g = _to_mask(gt, "gt", fn)
    single = np.ndim(pred) == 2 if not isinstance(pred, torch.Tensor) else pred.dim() == 2
    if p.shape != g.shape:
        raise ValueError(
            f"{fn}: pred and gt must have the same shape, got {tuple(np.shape(pred))} and {tuple(np.shape(gt))}"
        )
    if p.device != g.device:
        raise ValueError(f"{fn}: pred is on {p.device} but gt is on {g.device}")
    return p, g, is_torch, single


_COUNT_NAMES = ("inter", "union", "pred_b", "gt_b", "pred_match", "gt_match")
BACKENDS = ("auto", "cpp", "torch")


@functools.cache
def compiled_counts_reason() -> str | None:
    """None when the fused CPU kernel ``torch.ops.pdnet.eval_frame_counts`` is usable, else why not."""
    try:
        importlib.import_module("pdnet._C")  # registers torch.ops.pdnet.*
    except Exception as exc:  # not built, or built against another torch
        return f"the compiled extension pdnet._C could not be loaded ({type(exc).__name__}: {exc})"
    try:
        _ = torch.ops.pdnet.eval_frame_counts  # the lookup raises when the op is not registered
    except (AttributeError, RuntimeError):
        return "the compiled extension pdnet._C has no eval_frame_counts (rebuild it: pip install -e .)"
    return None


def frame_counts(
    pred: torch.Tensor, gt: torch.Tensor, radius: int, chunk: int | None = None, backend: str = "auto"
) -> dict:
    """Integer counts behind J, F and flicker, for every frame at once.

    Args:
        pred, gt (Tensor[T, H, W] bool): binary masks on one device.
        radius (int): boundary matching radius in pixels (see :func:`boundary_radius`).
        chunk (int, optional): ``torch`` backend: frames processed together; default
            :data:`CPU_CHUNK_PIXELS` / :data:`CUDA_CHUNK_PIXELS` pixels' worth.
        backend (str): ``cpp`` (the fused CPU kernel of the compiled extension, CPU
            tensors only), ``torch`` (any device) or ``auto`` (``cpp`` for CPU tensors
            when the extension is built, else ``torch``).
    Returns:
        dict of int64 Tensor[T] on the masks' device: ``inter``, ``union`` (J),
        ``pred_b``, ``gt_b`` (boundary pixel counts), ``pred_match``, ``gt_match``
        (boundary pixels matched within the disk) and Tensor[T - 1]: ``flicker_sq``
        (sum over pixels of e_t^2, see the module docstring).

    ``cpp`` runs on torch's intra-op threads (frames split among them); ``torch`` on the
    CPU runs on one thread (torch's setting is restored afterwards).
    """
    if backend not in BACKENDS:
        raise ValueError(f"frame_counts: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "torch" and pred.device.type == "cpu":
        reason = compiled_counts_reason()
        if reason is None:
            t = pred.shape[0]
            c = torch.ops.pdnet.eval_frame_counts(pred, gt, int(radius))  # [7, T]
            out = {k: c[i] for i, k in enumerate(_COUNT_NAMES)}
            out["flicker_sq"] = c[6, : max(t - 1, 0)]
            return out
        if backend == "cpp":
            raise RuntimeError(f"frame_counts: backend 'cpp' is not available: {reason}")
    elif backend == "cpp":
        raise ValueError(f"frame_counts: backend 'cpp' runs on the CPU only, the masks are on {pred.device}")
    if pred.device.type == "cpu" and torch.get_num_threads() > 1:
        # the ops are small and memory-bound: splitting each over threads costs more than
        # it saves, so run on one
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return frame_counts(pred, gt, radius, chunk, "torch")
        finally:
            torch.set_num_threads(threads)
    t, h, w = pred.shape
    dev = pred.device
    if chunk is None:
        chunk = max(1, (CPU_CHUNK_PIXELS if dev.type == "cpu" else CUDA_CHUNK_PIXELS) // (h * w))
    chunk = max(1, min(chunk, t))
    wp = _bits.packed_width(w, radius)
    counts = torch.empty(7, t, dtype=torch.int64, device=dev)
    # frame-major [slot, pred|gt, H, Wp]; slot 0 holds the frame before the chunk (flicker)
    packed = torch.empty(chunk + 1, 2, h, wp, dtype=torch.int64, device=dev)
    for s in range(0, t, chunk):
        e = min(t, s + chunk)
        c = e - s
        pg = packed[1 : c + 1]  # [c, 2, H, Wp], contiguous, zero padding
        _bits.pack(pred[s:e], wp, out=pg[:, 0])
        _bits.pack(gt[s:e], wp, out=pg[:, 1])
        p, g = pg[:, 0], pg[:, 1]
        area = _bits.popcount(pg)  # [c, 2]
        counts[0, s:e] = _bits.popcount(p & g)
        counts[1, s:e] = area[:, 0] + area[:, 1] - counts[0, s:e]  # |P | G| = |P| + |G| - |P & G|
        b = _bits.boundary(pg.view(2 * c, h, wp), w)  # [2c, H, Wp], pred and gt interleaved
        counts[2:4, s:e] = _bits.popcount(b).view(c, 2).T
        counts[4:6, s:e] = _bits.boundary_matches(b, radius)
        first = 1 if s == 0 else 0
        seq = packed[first : c + 1]  # [c (+1), 2, H, Wp]
        if seq.shape[0] > 1:
            counts[6, s - 1 + first : e - 1] = _flicker_sq(seq[:, 0], seq[:, 1])
        packed[0] = packed[c]
    out = {k: counts[i] for i, k in enumerate(_COUNT_NAMES)}
    out["flicker_sq"] = counts[6, : max(t - 1, 0)]
    return out


def _flicker_sq(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Packed Tensor[T, H, Wp] x2 (zero padding) -> Tensor[T - 1] int64: sum over pixels of e_t^2."""
    cp = p[1:] ^ p[:-1]  # prediction changed
    cg = g[1:] ^ g[:-1]  # ground truth changed
    # exactly one changed: e^2 = 1; both changed in opposite directions (P_t != G_t): e^2 = 4
    return _bits.popcount(cp ^ cg) + 4 * _bits.popcount(cp & cg & (p[1:] ^ g[1:]))


def j_from_counts(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Tensor[T] int64 x2 -> J Tensor[T] float64 (1 where the union is empty)."""
    j = inter.to(torch.float64) / union.to(torch.float64)
    return torch.where(union == 0, torch.ones_like(j), j)


def f_from_counts(pred_b, gt_b, pred_match, gt_match) -> torch.Tensor:
    """Boundary counts (int64 Tensor[T] each) -> F Tensor[T] float64, with the toolkit's empty cases."""
    nf = pred_b.to(torch.float64)
    ng = gt_b.to(torch.float64)
    precision = pred_match.to(torch.float64) / nf
    recall = gt_match.to(torch.float64) / ng
    one, zero = torch.ones_like(nf), torch.zeros_like(nf)
    precision = torch.where(pred_b == 0, one, torch.where(gt_b == 0, zero, precision))
    recall = torch.where(gt_b == 0, one, torch.where(pred_b == 0, zero, recall))
    denom = precision + recall
    f = 2 * precision * recall / denom
    return torch.where(denom == 0, zero, f)


def flicker_from_counts(flicker_sq: torch.Tensor, pixels: int) -> float:
    """Per-pair sums of e_t^2 (Tensor[T-1] int64) -> mean over pairs of sqrt(mean_pixels e_t^2)."""
    if flicker_sq.numel() == 0:
        return 0.0
    return float(torch.sqrt(flicker_sq.to(torch.float64) / pixels).mean())


def _out(v: torch.Tensor, is_torch: bool, single: bool):
    if single:
        return float(v[0])
    return v if is_torch else v.cpu().numpy()


def jaccard(pred: ArrayLike, gt: ArrayLike):
    """Region similarity J per frame.

    Args:
        pred, gt (array or Tensor[H, W] or [T, H, W]): masks, nonzero = foreground.
    Returns:
        float for one frame; else float64 J per frame, Tensor[T] on the input's device
        for tensors, np.ndarray[T] otherwise. J = 1 when both masks are empty.
    """
    p, g, is_torch, single = _check_pair(pred, gt, "jaccard")
    pg = _bits.pack(torch.stack([p, g]), _bits.packed_width(p.shape[-1]))  # [2, T, H, Wp]
    j = j_from_counts(_bits.popcount(pg[0] & pg[1]), _bits.popcount(pg[0] | pg[1]))
    return _out(j, is_torch, single)


def boundary_f(pred: ArrayLike, gt: ArrayLike, bound_th: float = 0.008, chunk: int | None = None):
    """DAVIS boundary F-measure per frame.

    Args:
        pred, gt (array or Tensor[H, W] or [T, H, W]): masks, nonzero = foreground.
        bound_th (float): matching radius as a fraction of the image diagonal (< 1),
            or in pixels (an integer >= 1).
    Returns:
        float for one frame; else float64 F per frame (Tensor[T] for tensors on their
        device, np.ndarray[T] otherwise).
    """
    p, g, is_torch, single = _check_pair(pred, gt, "boundary_f")
    radius = boundary_radius(p.shape[-2], p.shape[-1], bound_th)
    c = frame_counts(p, g, radius, chunk)
    f = f_from_counts(c["pred_b"], c["gt_b"], c["pred_match"], c["gt_match"])
    return _out(f, is_torch, single)


def flicker(pred: ArrayLike, gt: ArrayLike) -> float:
    """dtSSD-style flicker of a (T, H, W) sequence (see the module docstring); lower is better."""
    p, g, _, _ = _check_pair(pred, gt, "flicker")
    if p.shape[0] < 2:
        return 0.0
    pg = _bits.pack(torch.stack([p, g]), _bits.packed_width(p.shape[-1]))  # [2, T, H, Wp]
    sq = _flicker_sq(pg[0], pg[1])
    return flicker_from_counts(sq, p.shape[-2] * p.shape[-1])


def decay_bins(n: int) -> list[int]:
    """End indices of the 4 Decay bins of ``n`` frames: round(linspace(1, n, 5)) - 1, halves up."""
    # linspace(1, n, 5)[k] = 1 + k (n - 1) / 4; rounding half up of (4 + k (n - 1)) / 4, exactly
    return [(4 + k * (n - 1) + 2) // 4 - 1 for k in range(5)]


def statistics(values) -> tuple[float, float, float]:
    """(mean, recall, decay) of a sequence's per-frame values (J or F).

    Args:
        values (array or Tensor[N]): per-frame values; NaNs are ignored, as the toolkit does.
    Returns:
        mean, recall (fraction > 0.5) and decay (mean of the first of 4 bins minus the
        mean of the last), as floats. Decay is exact for any N (see the module
        docstring for the toolkit's uint8 problem beyond 256 frames).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("statistics: no values (a sequence with no evaluated frame)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # an all-NaN bin gives NaN
        mean = float(np.nanmean(v))
        recall = float(np.mean(v > 0.5))  # as the toolkit: a NaN frame counts as not recalled
        ids = decay_bins(v.size)
        decay = float(np.nanmean(v[ids[0] : ids[1] + 1]) - np.nanmean(v[ids[3] : ids[4] + 1]))
    return mean, recall, decay
