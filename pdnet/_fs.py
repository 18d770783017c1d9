"""Temporary files for atomic writes (write beside the target, then ``os.replace``)."""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_umask_lock = threading.Lock()
_umask: int | None = None


def _process_umask() -> int:
    """The process umask (read once: reading it means setting it, so under a lock)."""
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
        return _umask


def temporary_beside(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new empty file ``.<name>.<8 random characters><suffix>`` in ``path``'s folder,
    open for writing (the descriptor is returned), with the mode a plain ``open`` would
    give ``path`` (``0o666 & ~umask``) rather than mkstemp's 0o600, so that the file put
    in place by ``os.replace`` is as readable as any other output.

    Returns:
        (file descriptor, temporary path)
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_process_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)
