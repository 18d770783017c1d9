"""glibc ``malloc`` settings that keep freed memory for reuse.

By default glibc serves each block of more than 128 KB (raised dynamically up to 32 MB)
with a fresh ``mmap`` and returns it to the kernel on ``free``, and trims freed heap
beyond 128 KB. A PyTorch process on the CPU allocates and frees tensors of megabytes
every step, so it page-faults (and the kernel zeroes) every page of them again and
again, which can cost as much as the arithmetic of a memory-bound op. These settings
make freed blocks stay in the process instead (after the first few allocations of a
size, while the heap grows: an aligned block does not fit the exact hole its
predecessor left until holes merge). They change nothing but speed and the resident set
(which then stays at its peak) and are process-wide, so nothing applies them on import:
only an explicit request does (``make_loader(keep_freed_memory=True)`` in its workers,
``train.keep_freed_memory: true`` in the trainer, the benchmarks' options).
"""
from __future__ import annotations

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 128 << 20, use_mmap: bool = True) -> bool:
    """Tunes this process's glibc ``malloc``; returns whether it applied (False without glibc).

    Args:
        trim_threshold: bytes of freed memory at the top of the heap kept mapped (at most
            2**31 - 1: mallopt takes a C int).
        use_mmap: keep ``mmap`` for blocks above glibc's largest threshold (32 MB on 64-bit);
            False serves every block from the heap, so that no size is page-faulted afresh
            once the heap has grown to the working set.
    """
    if not 0 <= int(trim_threshold) < 2**31:
        raise ValueError(f"trim_threshold must be in [0, 2**31): mallopt takes a C int, got {trim_threshold}")
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: smaller blocks come from the heap
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
        if not use_mmap:
            ok &= libc.mallopt(_M_MMAP_MAX, 0)
    except (OSError, AttributeError):
        return False
    return bool(ok)
