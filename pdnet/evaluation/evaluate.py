"""Evaluate folders of mask PNGs, or in-memory predictions, under the DAVIS or MVPS protocol.

Protocols (how predictions and ground truth become binary masks, and which frames count):

- ``davis`` (default, the paper's): foreground where the value is >= 128 on the 0..255
  scale (probability >= 0.5; float arrays: >= 0.5); every frame is evaluated.
- ``mvps`` (compatibility with the MVPS evaluation release): foreground wherever the
  value is non-zero; the first and the last frame of each clip are skipped (and need no
  prediction).

Files are read by the one mask reader (:func:`pdnet.evaluation.io.read_mask`, the
training data's rules, decided per file: a 0/1 file is scaled to 0/255). In-memory
integer inputs are on the 0..255 scale, except a frame whose values are all 0 or 1,
which is read as a 0/1 mask: decided per frame, as for files, so one stray value in a
0/1 sequence changes nothing but its own frame. Sequences may be nested folders
(``category/clip``, the MVPS layout): every folder holding frames, named by its relative
path; the predictions mirror the ground truth's folders. Per sequence: J and F statistics
(Mean, Recall, Decay) and flicker (see :mod:`pdnet.evaluation.metrics`); overall: the
mean of each over the sequences, and J&F = (J mean + F mean) / 2, as the DAVIS toolkit
reports them.
"""
from __future__ import annotations

import csv
import io as _io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .io import EvaluationError, frame_names, read_mask, sequence_dirs, strict_pillow

PROTOCOLS = ("davis", "mvps")


@dataclass
class Stats:
    """Mean, recall (fraction of frames > 0.5) and decay of a per-frame measure."""

    mean: float
    recall: float
    decay: float

    def to_dict(self) -> dict:
        return {"mean": self.mean, "recall": self.recall, "decay": self.decay}


@dataclass
class SequenceResult:
    """One sequence: statistics of J and F, flicker, and the per-frame values (float64 [T])."""

    name: str
    J: Stats
    F: Stats
    flicker: float
    j_frames: np.ndarray = field(repr=False)
    f_frames: np.ndarray = field(repr=False)

    @property
    def frames(self) -> int:
        return int(self.j_frames.size)

    @property
    def JF(self) -> float:
        return (self.J.mean + self.F.mean) / 2

    def to_dict(self) -> dict:
        return {
            "J&F": self.JF, "J": self.J.to_dict(), "F": self.F.to_dict(), "flicker": self.flicker, "frames": self.frames
        }


@dataclass
class EvalResult:
    """Per-sequence rows and the overall scores (means over sequences)."""

    protocol: str
    sequences: dict[str, SequenceResult]

    def _mean(self, get) -> float:
        return float(np.mean([get(s) for s in self.sequences.values()]))

    @property
    def J(self) -> Stats:
        return Stats(self._mean(lambda s: s.J.mean), self._mean(lambda s: s.J.recall), self._mean(lambda s: s.J.decay))

    @property
    def F(self) -> Stats:
        return Stats(self._mean(lambda s: s.F.mean), self._mean(lambda s: s.F.recall), self._mean(lambda s: s.F.decay))

    @property
    def JF(self) -> float:
        return (self.J.mean + self.F.mean) / 2

    @property
    def flicker(self) -> float:
        return self._mean(lambda s: s.flicker)

    def to_dict(self) -> dict:
        """``{"protocol", "overall": {"J&F", "J": {mean, recall, decay}, "F": {...}, "flicker", "frames"},
        "sequences": {name: {same keys}}}``."""
        overall = {
            "J&F": self.JF,
            "J": self.J.to_dict(),
            "F": self.F.to_dict(),
            "flicker": self.flicker,
            "frames": sum(s.frames for s in self.sequences.values()),
        }
        return {
            "protocol": self.protocol,
            "overall": overall,
            "sequences": {name: s.to_dict() for name, s in self.sequences.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One row per sequence and a last row ``overall``."""
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            ["sequence", "frames", "J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "flicker"]
        )
        for name, row in self._rows():
            w.writerow([name, row["frames"], row["J&F"], *row["J"].values(), *row["F"].values(), row["flicker"]])
        return buf.getvalue()

    def _rows(self):
        d = self.to_dict()
        yield from d["sequences"].items()
        yield "overall", d["overall"]

    def table(self) -> str:
        """A fixed-width text table: one line per sequence, then the overall line."""
        heads = [
            "sequence", "frames", "J&F", "J mean", "J recall", "J decay", "F mean", "F recall", "F decay", "flicker"
        ]
        rows = []
        for name, r in self._rows():
            vals = [r["J&F"], *r["J"].values(), *r["F"].values(), r["flicker"]]
            rows.append([name, str(r["frames"])] + [f"{v:.3f}" for v in vals])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

        def line(cells):
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

        rule = "-" * len(line(heads))
        body = [line(r) for r in rows[:-1]]
        return "\n".join([f"protocol: {self.protocol}", line(heads), rule, *body, rule, line(rows[-1])])


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    return protocol


def binarize(x, protocol: str = "davis", what: str = "masks") -> np.ndarray | torch.Tensor:
    """Masks of one sequence -> bool, under ``protocol``.

    Args:
        x (array or Tensor[T, H, W]): bool; floating point (probabilities in [0, 1]); or
            integers on the 0..255 scale, except that a frame ([H, W] slice) whose values
            are all 0 or 1 is a 0/1 mask (decided per frame).
    Returns:
        bool array or tensor of the same shape: davis: >= 128 (floats >= 0.5; 0/1
        frames: 1); mvps: non-zero.
    """
    _check_protocol(protocol)
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dtype == torch.bool:
        out = t
    elif t.is_floating_point():
        out = t >= 0.5 if protocol == "davis" else t != 0
    elif t.dtype.is_complex:
        raise TypeError(f"{what}: complex values are not masks")
    else:
        if t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi > 255:
                raise ValueError(f"{what}: integer masks must be on the 0..255 scale, got values {lo}..{hi}")
        if protocol == "mvps" or t.numel() == 0:
            out = t != 0
        else:
            frames = t.reshape(-1, *t.shape[-2:]) if t.dim() >= 2 else t.reshape(1, 1, -1)
            zero_one = frames.amax(dim=(-2, -1), keepdim=True) <= 1  # [F, 1, 1]: 0/1 frames
            out = torch.where(zero_one, frames != 0, frames >= 128).reshape(t.shape)
    return out if isinstance(x, torch.Tensor) else out.numpy()


def _frames_to_score(n: int, protocol: str, name: str) -> slice:
    if protocol == "mvps":
        if n < 3:
            raise EvaluationError(
                f"sequence {name}: {n} frame(s); the mvps protocol skips the first and last, leaving none"
            )
        return slice(1, n - 1)
    return slice(0, n)


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def score_sequence(name: str, pred, gt, device=None, bound_th: float = 0.008, backend: str = "auto") -> SequenceResult:
    """J, F and flicker of one sequence of binary masks (bool array or Tensor[T, H, W] each).

    ``backend``: how the counts are computed, see :func:`pdnet.evaluation.metrics.frame_counts`.
    """
    dev = _device(device)
    p = (pred if isinstance(pred, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pred))).to(dev)
    g = (gt if isinstance(gt, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(gt))).to(dev)
    t, h, w = g.shape
    c = metrics.frame_counts(p.contiguous(), g.contiguous(), metrics.boundary_radius(h, w, bound_th), backend=backend)
    j = metrics.j_from_counts(c["inter"], c["union"]).cpu().numpy()
    f = metrics.f_from_counts(c["pred_b"], c["gt_b"], c["pred_match"], c["gt_match"]).cpu().numpy()
    flick = metrics.flicker_from_counts(c["flicker_sq"], h * w)
    return SequenceResult(name, Stats(*metrics.statistics(j)), Stats(*metrics.statistics(f)), flick, j, f)


def evaluate_arrays(
    data: Mapping[str, tuple[object, object]],
    protocol: str = "davis",
    device=None,
    bound_th: float = 0.008,
) -> EvalResult:
    """Evaluate in-memory predictions: ``{sequence: (pred[T, H, W], gt[T, H, W])}``.

    Arrays or tensors: bool, probabilities (float) or 0..255 integers, binarised by
    :func:`binarize` under ``protocol`` (mvps also drops each clip's first and last
    frame). Returns the same :class:`EvalResult` as :func:`evaluate`.
    """
    _check_protocol(protocol)
    if not data:
        raise EvaluationError("no sequences to evaluate")
    out = {}
    for name, pair in data.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise EvaluationError(f"sequence {name}: expected a (pred, gt) pair")
        pred, gt = pair
        ps, gs = tuple(np.shape(pred)), tuple(np.shape(gt))
        if len(gs) != 3 or ps != gs:
            raise EvaluationError(f"sequence {name}: pred {ps} and gt {gs} must both be (T, H, W) of the same shape")
        if 0 in gs:
            raise EvaluationError(f"sequence {name}: empty array of shape {gs}")
        keep = _frames_to_score(gs[0], protocol, name)
        p = binarize(pred, protocol, f"sequence {name} pred")[keep]
        g = binarize(gt, protocol, f"sequence {name} gt")[keep]
        out[name] = score_sequence(name, p, g, device, bound_th)
    return EvalResult(protocol, out)


def _read_all(paths: Sequence[Path | None], pool: ThreadPoolExecutor) -> list:
    """Decode PNGs in parallel (None stays None)."""
    return list(pool.map(lambda p: None if p is None else read_mask(p), paths))


def _stack(frames: list, paths: Sequence[Path | None], shape: tuple[int, int], what: str) -> np.ndarray:
    """(H, W) uint8 frames (None = missing, read as empty) -> [T, H, W] uint8, checking every size."""
    out = np.zeros((len(frames), *shape), dtype=np.uint8)
    for i, (a, path) in enumerate(zip(frames, paths, strict=True)):
        if a is None:
            continue
        if a.shape != shape:
            raise EvaluationError(
                f"{path}: size {a.shape[1]}x{a.shape[0]} (WxH) does not match the {what} size {shape[1]}x{shape[0]}"
            )
        out[i] = a
    return out


def evaluate(
    pred_root,
    gt_root,
    protocol: str = "davis",
    sequences: Iterable[str] | None = None,
    missing_as_empty: bool = False,
    device=None,
    bound_th: float = 0.008,
    progress: bool = False,
    workers: int | None = None,
) -> EvalResult:
    """Evaluate ``pred_root/<sequence>/<frame>.png`` against ``gt_root/<sequence>/<frame>.png``.

    Args:
        pred_root, gt_root: folders of sequences; the ground-truth frames define what is
            scored (extra prediction frames are ignored).
        protocol: ``davis`` or ``mvps`` (see the module docstring).
        sequences: names to evaluate, each a sequence ("cat0/clip3") or a folder of them
            ("cat0": every sequence under it); default: every sequence of ``gt_root``,
            which must then be exactly the sequences of ``pred_root``. A sequence is any
            folder holding frames, at any depth, named by its relative path.
        missing_as_empty: score a missing prediction frame as an empty mask instead of
            raising.
        device: torch device for the metrics (default CUDA when available).
        progress: show a tqdm progress bar over sequences (on a terminal).
        workers: threads decoding PNGs (default min(8, CPUs)).
    Raises:
        EvaluationError: one line naming the file or folder and the problem.
    """
    _check_protocol(protocol)
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    gt_seqs = sequence_dirs(gt_root, "ground-truth")
    pred_seqs = sequence_dirs(pred_root, "prediction")
    if sequences is not None:
        names = []
        for n in sequences:
            n = n.strip("/")
            under = [s for s in gt_seqs if s == n or s.startswith(n + "/")] if n else []
            if not under:
                raise EvaluationError(f"sequence {n}: no folder {gt_root / n} in the ground truth")
            names.extend(s for s in under if s not in names)
        if not names:
            raise EvaluationError("no sequences selected")
        for n in names:
            if n not in pred_seqs:
                raise EvaluationError(f"sequence {n}: no folder {pred_root / n} in the predictions")
    else:
        names = gt_seqs
        for n in gt_seqs:
            if n not in pred_seqs:
                raise EvaluationError(
                    f"sequence {n}: in the ground truth but no folder {pred_root / n} in the predictions"
                )
        for n in pred_seqs:
            if n not in gt_seqs:
                raise EvaluationError(
                    f"sequence {n}: in the predictions but no folder {gt_root / n} in the ground truth"
                )

    from tqdm import tqdm

    out: dict[str, SequenceResult] = {}
    workers = workers or min(8, os.cpu_count() or 1)
    with strict_pillow(), ThreadPoolExecutor(workers) as pool:
        bar = tqdm(names, desc="evaluate", unit="seq", disable=None if progress else True)
        for name in bar:
            bar.set_postfix_str(name, refresh=False)
            out[name] = _evaluate_folder(
                pred_root / name, gt_root / name, name, protocol, missing_as_empty, pool, device, bound_th
            )
    return EvalResult(protocol, out)


def _evaluate_folder(
    pred_dir: Path, gt_dir: Path, name: str, protocol: str, missing_as_empty: bool, pool, device, bound_th
):
    frames = frame_names(gt_dir)
    keep = _frames_to_score(len(frames), protocol, name)
    frames = frames[keep]
    pred_files = {p.name for p in pred_dir.iterdir() if p.suffix.lower() == ".png"}
    if not pred_files:
        raise EvaluationError(f"{pred_dir} is empty: no .png frames")
    pred_paths = []
    for f in frames:
        if f in pred_files:
            pred_paths.append(pred_dir / f)
        elif missing_as_empty:
            pred_paths.append(None)
        else:
            raise EvaluationError(f"{pred_dir / f}: missing prediction frame (ground truth {gt_dir / f}); "
                                  "--missing-as-empty scores missing frames as empty")
    gt_paths = [gt_dir / f for f in frames]
    gt_frames = _read_all(gt_paths, pool)
    shape = gt_frames[0].shape
    gt = _stack(gt_frames, gt_paths, shape, f"sequence's first ground-truth frame ({gt_paths[0].name})")
    pred = _stack(_read_all(pred_paths, pool), pred_paths, shape, "ground-truth")
    p = binarize(pred, protocol, f"sequence {name} predictions")
    g = binarize(gt, protocol, f"sequence {name} ground truth")
    return score_sequence(name, p, g, device, bound_th)
