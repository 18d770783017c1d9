"""What a run shows while it trains: ``metrics.jsonl``, TensorBoard events and the progress bar.

Loss terms stay on the device between log lines: they are summed as tensors and read
back once per line (one synchronisation every ``log.every`` steps).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .errors import TrainError


class MetricLog:
    """The main process's record of a run in ``out`` (on other ranks every call does nothing
    but count).

    Args:
        out: the run folder (``metrics.jsonl``, ``tb/``).
        enabled: whether this process writes (the main process).
        tensorboard: also write TensorBoard events (when tensorboard is installed).
        progress: show a progress bar of ``total`` steps, starting at ``initial``.
    """

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, progress: bool, total: int, initial: int,
                 echo=print) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.writer = self._tensorboard(out, echo) if enabled and tensorboard else None
        self.bar = None
        if enabled and progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=min(initial, total), desc="train", unit="step", dynamic_ncols=True)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._pairs, self._since = 0, time.perf_counter()

    @staticmethod
    def _tensorboard(out: Path, echo):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            echo("tensorboard is not installed: metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(str(out / "tb"))

    def add(self, pairs: int, terms: dict[str, torch.Tensor] | None, image: bool) -> None:
        """Count a step of ``pairs`` training pairs (all ranks) and its loss ``terms``
        (None: a skipped step, counted in pairs/s only)."""
        self._pairs += pairs
        if terms is None:
            return
        named = {"total": terms["total"], ("image." if image else "video.") + "total": terms["total"]}
        if not image:
            named.update((f"video.{k}", v) for k, v in terms.items() if k != "total")
        for k, v in named.items():
            self._sums[k] = self._sums.get(k, 0) + v
            self._counts[k] = self._counts.get(k, 0) + 1

    def log(self, step: int, epoch: int, lr: float, skipped_steps: int) -> None:
        """Write the line of ``step``: the mean of each loss term since the last line, lr,
        pairs/s (and the count of skipped steps, when there are any)."""
        now = time.perf_counter()
        pairs_per_s = self._pairs / max(now - self._since, 1e-9)
        line = {k: float(v) / self._counts[k] for k, v in self._sums.items()}  # one sync per log line
        line.update(step=step, epoch=epoch, lr=lr, pairs_per_s=pairs_per_s)
        if skipped_steps:
            line["skipped_steps"] = skipped_steps
        self.write(line)
        if self.bar is not None and "total" in line:
            self.bar.set_postfix(_bar_terms(line, lr, pairs_per_s), refresh=False)
        self._sums, self._counts, self._pairs, self._since = {}, {}, 0, time.perf_counter()

    def write(self, line: dict[str, Any]) -> None:
        """Append ``line`` (with its ``step``) to metrics.jsonl and TensorBoard.

        Raises:
            TrainError: metrics.jsonl cannot be written.
        """
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as exc:
            raise TrainError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        if self.writer is not None:
            for k, v in line.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, line["step"])

    def advance(self) -> None:
        """One step done (the progress bar)."""
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _bar_terms(line: dict[str, Any], lr: float, pairs_per_s: float) -> dict[str, str]:
    """The progress bar's postfix: total loss, the main loss terms of the logged steps
    (segmentation of the final prediction, part losses of the target frame, the image
    steps' total), lr and pairs/s."""
    out = {"loss": f"{line['total']:.3f}"}
    pred = [line[k] for k in ("video.pred.wbce", "video.pred.l1") if k in line]
    if pred:
        out["seg"] = f"{pred[0] + 0.8 * pred[1]:.3f}" if len(pred) == 2 else f"{pred[0]:.3f}"
    if "video.parts_t.total" in line:
        out["parts"] = f"{line['video.parts_t.total']:.3f}"
    if "image.total" in line:
        out["image"] = f"{line['image.total']:.3f}"
    out["lr"] = f"{lr:.2e}"
    out["pairs_s"] = f"{pairs_per_s:.1f}"
    return out
