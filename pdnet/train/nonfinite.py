"""What a run does with a NaN / inf loss (``train.nonfinite``).

``stop``: the losses of finished steps are kept on the device and checked together (one
synchronisation) at each log line, before each checkpoint and at least every 64 steps;
the first non-finite one stops the run with :class:`NonFiniteLoss` naming the step and
the loss terms. ``skip``: the step itself detects it (no update is made) and it is
counted here; ``train.max_skips`` of them in a row stop the run. Ranks check at the same
steps and stop together.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .distributed import agree
from .errors import NonFiniteLoss

#: pending steps that force a check
CHECK_EVERY = 64


class NonFiniteGuard:
    """Counts skipped steps and checks the pending losses of a run.

    Args:
        mode: ``train.nonfinite`` (stop or skip).
        max_skips: ``train.max_skips``.
        world, device: the run's processes (the check agrees across ranks).
        on_disk: what the run folder holds, for the messages.
        echo: prints the message of a skipped step (main process only: ``None`` elsewhere).
    """

    def __init__(self, mode: str, max_skips: int, world: int, device: torch.device, on_disk: Callable[[], str],
                 echo: Callable[[str], Any] | None) -> None:
        self.mode, self.max_skips, self.world, self.device = mode, max_skips, world, device
        self.on_disk, self.echo = on_disk, echo
        #: non-finite steps skipped so far, and in a row
        self.skipped_steps, self.in_row = 0, 0
        self._pending: list[tuple[int, bool, dict[str, torch.Tensor]]] = []  # not yet checked

    def record(self, step: int, image: bool, terms: dict[str, torch.Tensor]) -> None:
        """A finished step (``terms`` from :meth:`pdnet.train.Trainer.train_step`).

        Raises:
            NonFiniteLoss: as :meth:`check`, or too many skipped steps in a row.
        """
        if "skipped" in terms:
            self._skipped(step, image, terms)
            return
        self.in_row = 0
        if self.mode == "stop":
            self._pending.append((step, image, terms))
            if len(self._pending) >= CHECK_EVERY:
                self.check(step)

    def check(self, step: int) -> None:
        """Raise NonFiniteLoss for the first pending step whose total loss is NaN / inf
        (one device sync for all of them); ``step`` is the run's current step."""
        if not self._pending and self.world == 1:
            return
        pending, self._pending = self._pending, []
        totals = torch.stack([t["total"].float() for _, _, t in pending]) if pending else torch.zeros(0)
        finite = torch.isfinite(totals)
        ok = bool(finite.all())
        everywhere = agree(int(ok), dist.ReduceOp.MIN, self.world, self.device)  # ranks stop together
        if ok and not everywhere:
            raise NonFiniteLoss(
                f"step {step}: the loss turned non-finite on another process; training stopped, {self.on_disk()}"
            )
        if ok:
            return
        bad_step, image, terms = pending[int((~finite).nonzero()[0, 0])]
        raise NonFiniteLoss(
            f"step {bad_step} ({'image' if image else 'video'} step): the loss is not finite "
            f"({bad_terms(terms, image)}); training stopped, {self.on_disk()} "
            "(train.nonfinite=skip skips such steps instead)"
        )

    def _skipped(self, step: int, image: bool, terms: dict[str, torch.Tensor]) -> None:
        self.skipped_steps += 1
        self.in_row += 1
        what = bad_terms(terms, image)
        if self.in_row >= self.max_skips:
            raise NonFiniteLoss(
                f"step {step}: the loss was not finite for {self.in_row} steps in a row "
                f"(train.max_skips={self.max_skips}; last: {what}); training stopped, {self.on_disk()}"
            )
        if self.echo is not None:
            self.echo(f"step {step}: the loss is not finite ({what}); step skipped "
                      f"({self.skipped_steps} so far, {self.in_row} in a row)")


def bad_terms(terms: dict[str, torch.Tensor], image: bool) -> str:
    """``name=value`` of the non-finite loss terms (the parts before the total)."""
    prefix = "image." if image else "video."
    bad = [(k, v) for k, v in terms.items() if k not in ("total", "skipped") and not bool(torch.isfinite(v).all())]
    bad = bad or [("total", terms["total"])]
    shown = ", ".join(f"{prefix}{k}={float(v)}" for k, v in bad[:6])
    return shown + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
