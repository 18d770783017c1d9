"""Test helpers: files whose writes fail or send a signal part-way (disk full, Ctrl-C mid-write)."""
import errno
import os


class FailingFile:
    """Wraps a binary file; its ``at``-th ``write`` first runs ``action`` (raise ENOSPC,
    send a signal ...), then writes as usual."""

    def __init__(self, f, at, action):
        self.f, self.at, self.action, self.writes = f, at, action, 0

    def write(self, data):
        self.writes += 1
        if self.writes == self.at:
            self.action()
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def enospc():
    """An action: the disk is full."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
