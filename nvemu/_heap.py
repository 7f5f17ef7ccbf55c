"""Keeping a streaming command's resident memory flat under glibc's allocator.

A command that makes or reads a trace a chunk at a time allocates and frees arrays of tens of MiB
over and over. glibc serves a block that large with its own ``mmap`` and unmaps it on ``free``, but
each such free raises the *dynamic* mmap threshold to the block's size (up to 32 MiB), after which
blocks of that size come from the heap instead. Heap blocks freed in between other allocations
leave holes that the next, slightly different, chunk does not fit, so the heap keeps growing:
``nvemu gen persist-loop`` peaked at 232 MiB for 4 M ops and 294 MiB for 16 M ops.

Setting ``M_MMAP_THRESHOLD`` fixes the threshold (and turns the dynamic adjustment off, mallopt(3)):
every block of at least :data:`MMAP_THRESHOLD` bytes is mapped on its own and returned to the
system when freed, so what stays resident is one chunk's working set, whatever the trace length.
Elsewhere (other C libraries, other systems) :func:`bound_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
"""mallopt(3)'s parameter number for the mmap threshold (glibc's malloc.h)."""
MMAP_THRESHOLD = 1 << 20
"""Blocks of 1 MiB and more get their own mapping: far above the many small objects Python and
numpy allocate (which stay on the heap, where they are cheap), far below a trace chunk (24 MiB)."""

_done: list[bool] = []


def bound_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (once; later calls
    return the first answer). Returns whether the allocator took it: False off glibc.

    Examples
    --------
    >>> isinstance(bound_heap(), bool)
    True
    """
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            gnu = libc.gnu_get_libc_version        # glibc only: musl's mallopt ignores its arguments
        except (OSError, AttributeError):
            mallopt = gnu = None
        if mallopt is not None and gnu is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    _done.append(ok)
    return ok


__all__ = ["MMAP_THRESHOLD", "M_MMAP_THRESHOLD", "bound_heap"]
