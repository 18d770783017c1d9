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

PathLike = str | Path


#: the note a DataError with a path carries (it travels in the worker's traceback text)
_PATH_NOTE = "data file: "


class DataError(ValueError):
    """A problem with a data file or list; the message names the file.

    Raised in a DataLoader worker, it reaches the main process as a DataError again with
    the worker's one-line message and ``path`` (PyTorch re-raises a worker's exception
    as ``type(message)`` where ``message`` is the whole worker traceback; this
    constructor recognises that text and keeps only the original message, and the path
    from the note ``data file: <path>`` that every DataError with a path carries).
    """

    def __init__(self, message: str, path: PathLike | None = None):
        if path is None and isinstance(message, str) and message.startswith("Caught DataError "):
            message, path = _from_worker(message)
        super().__init__(message)
        self.path = None if path is None else str(path)
        if self.path is not None:
            self.add_note(_PATH_NOTE + self.path)


def _from_worker(text: str):
    """(message, path or None) of a DataError from the traceback text a DataLoader
    worker sent (``"Caught DataError in DataLoader worker process 0.\nOriginal
    Traceback ...\npdnet.data.errors.DataError: <message>\ndata file: <path>\n"``)."""
    lines = text.rstrip("\n").split("\n")
    head = max((i for i, line in enumerate(lines) if line.startswith(_HEADS)), default=None)
    if head is None or "\nOriginal Traceback" not in text:
        return text, None
    body = [lines[head].split("DataError: ", 1)[1]]
    path = None
    for line in lines[head + 1 :]:
        if line.startswith(_PATH_NOTE):
            path = line[len(_PATH_NOTE) :]
            break
        body.append(line)
    return "\n".join(body), path


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


_HEADS = (f"{DataError.__module__}.{DataError.__qualname__}: ", "DataError: ")
