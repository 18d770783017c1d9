"""The trainer's errors: one line each, naming the file, the value or the step."""
from __future__ import annotations


class TrainError(RuntimeError):
    """A problem that stops training (bad checkpoint, bad run folder, a non-finite loss,
    a failed checkpoint write); one line, naming the file, value or step."""


class NonFiniteLoss(TrainError):
    """The loss turned NaN / inf (``train.nonfinite``); names the step and the terms."""


class TrainInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped :meth:`pdnet.train.Trainer.fit`; ``signum`` is the signal,
    the message says which step the run folder's ``last.pt`` holds."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
