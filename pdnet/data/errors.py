"""Errors and warnings of the data pipeline.

Every problem with a dataset on disk (a frame without its mask, an unreadable file,
sizes that disagree, a list naming a missing sequence, ...) is a :class:`DataError`
whose message starts with the offending path. Readers check what they cheaply can in
the main process when a dataset is built (see ``validate=`` of the readers); with
``skip_bad=True`` they drop the bad item and emit a :class:`DataWarning` instead.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]


class DataError(ValueError):
    """A problem with a data file or list; the message names the file.

    It takes a single message argument so that PyTorch's DataLoader can re-raise it
    unchanged (same type) in the main process when it happens in a worker.
    """

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class DataWarning(UserWarning):
    """A bad data item that was skipped because ``skip_bad=True``, or a mask file whose
    values fit no rule of :func:`pdnet.data.io.decode_mask` (read anyway)."""


def problem(path: PathLike, what: str) -> DataError:
    """Returns ``DataError("<path>: <what>")``."""
    return DataError(f"{path}: {what}", path=path)


def raise_or_warn(error: DataError, skip_bad: bool, stacklevel: int = 3) -> None:
    """Raises ``error``, or (``skip_bad=True``) warns with its message plus "(skipped)"."""
    if not skip_bad:
        raise error
    warnings.warn(f"{error} (skipped)", DataWarning, stacklevel=stacklevel)
