"""Per-frame NumPy transcription of the DAVIS evaluation protocol (the oracle and baseline).

This module restates, frame by frame and with plain NumPy, what the DAVIS toolkit
(davis2017-evaluation: ``db_eval_iou``, ``f_measure`` / ``_seg2bmap``,
``db_statistics``) computes for one binary object without void pixels. It is written
from the toolkit's documented behaviour, not copied from it, and it is what the fast
implementation in :mod:`pdnet.evaluation.metrics` is tested against and benchmarked
against (``bench/bench_eval.py``). It favours faithfulness over speed:

- the boundary dilation is OpenCV's ``cv2.dilate`` with a uint8 disk kernel, as in the
  toolkit, when OpenCV is installed, and otherwise ``scipy.ndimage.binary_dilation``
  with the same disk (identical for a symmetric kernel and zero border; the tests check
  the two agree when both are present);
- :func:`db_statistics` reproduces the toolkit's uint8 cast of the Decay bin indices
  (``uint8_bins=True``, the default here) so that the bug can be demonstrated; pass
  ``uint8_bins=False`` for the corrected indices used by :func:`pdnet.evaluation.statistics`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np


def disk(radius: int) -> np.ndarray:
    """uint8 (2r+1, 2r+1) disk: 1 where x^2 + y^2 <= r^2 (skimage.morphology.disk)."""
    r = int(radius)
    ax = np.arange(-r, r + 1)
    xx, yy = np.meshgrid(ax, ax)
    return (xx**2 + yy**2 <= r * r).astype(np.uint8)


def boundary_radius(shape, bound_th: float = 0.008) -> int:
    """Dilation radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    h, w = shape[-2], shape[-1]
    return int(np.ceil(bound_th * np.linalg.norm((h, w))))


def dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a (H, W) map by :func:`disk` (radius), zero outside the image."""
    k = disk(radius)
    try:
        import cv2  # the toolkit's own dilation
    except ImportError:
        cv2 = None
    if cv2 is not None:
        return cv2.dilate(b.astype(np.uint8), k) > 0
    from scipy.ndimage import binary_dilation

    return binary_dilation(b.astype(bool), structure=k.astype(bool))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """(H, W) bool boundary map: pixels differing from the right, lower or lower-right neighbour.

    Neighbours outside the image do not count: the last row compares only with the right
    neighbour, the last column only with the lower one, and the bottom-right pixel is 0.
    """
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def db_eval_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Jaccard index of one (H, W) frame; 1 when both masks are empty."""
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    inter = np.sum(gt & pred)
    union = np.sum(gt | pred)
    if np.isclose(union, 0):
        return 1.0
    return float(inter / union)


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one (H, W) frame, with the toolkit's empty-boundary cases."""
    radius = boundary_radius(pred.shape, bound_th)
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    fg_dil = dilate(fg_b, radius)
    gt_dil = dilate(gt_b, radius)
    gt_match = gt_b & fg_dil
    fg_match = fg_b & gt_dil
    n_fg = np.sum(fg_b)
    n_gt = np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_statistics(values, uint8_bins: bool = True):
    """(mean, recall, decay) of per-frame values, as the toolkit computes them.

    Recall is the fraction of values > 0.5; Decay is the mean of the first of 4 bins
    minus the mean of the last, the bins' end indices being
    ``round(linspace(1, N, 5) + 1e-10) - 1`` (each bin includes its end index). With
    ``uint8_bins`` the indices are cast to uint8 as in the toolkit, which wraps them
    modulo 256 when N > 256.
    """
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
    ids = np.round(np.linspace(1, len(values), 5) + 1e-10) - 1
    ids = ids.astype(np.uint8 if uint8_bins else np.int64)
    # int(): under the NumPy 1.x the toolkit ran on, uint8 scalar + 1 gave an int64 (256
    # stays 256); NumPy 2 would wrap it to 0 and break N = 256 as well
    bins = [values[int(ids[i]) : int(ids[i + 1]) + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def evaluate_sequence(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008):
    """Per-frame J and F of (T, H, W) binary masks, one frame at a time: two float64 (T,) arrays."""
    j = np.array([db_eval_iou(g, p) for p, g in zip(pred, gt, strict=True)], dtype=np.float64)
    f = np.array([f_measure(p, g, bound_th) for p, g in zip(pred, gt, strict=True)], dtype=np.float64)
    return j, f


def flicker(pred: np.ndarray, gt: np.ndarray) -> float:
    """dtSSD-style flicker of (T, H, W) binary masks, see :func:`pdnet.evaluation.flicker`."""
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    if len(p) < 2:
        return 0.0
    per = [math.sqrt(np.mean(((p[t] - p[t - 1]) - (g[t] - g[t - 1])) ** 2)) for t in range(1, len(p))]
    return float(np.mean(per))
