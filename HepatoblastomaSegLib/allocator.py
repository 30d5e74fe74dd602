"""Keep freed memory in the process for reuse (glibc): segmenting a scan allocates the same large arrays each time.

A CT case allocates and frees arrays of tens to hundreds of megabytes (the image, its windowed and resampled copies,
the network's activations, the stitched probabilities, the entropy map). glibc's ``malloc`` serves every block above
32 MiB with a fresh ``mmap`` and gives it back to the kernel on ``free``, so each case touches all of that memory
for the first time again: a page fault, and a zeroed page, every 4 KiB. On small and virtualised machines that costs
as much as the network itself. :func:`retain_freed_memory` tells glibc to serve large blocks from its heap as well
and to keep up to :data:`RETAINED_BYTES` of freed memory, so that the next window, stage or request reuses pages that
are already mapped.

The price is a process that keeps up to about that much memory after its peak until it exits; ``hbseg segment``
(one case or a cohort) and ``hbseg serve`` (the warm worker) use it, training does not. Elsewhere than glibc (macOS,
Windows, musl) this is a no-op. A user who tunes glibc's allocator through its own environment variables
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ...) keeps those settings: they win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: Freed memory glibc keeps at the top of its heap before giving any back (mallopt takes a C int: at most 2 GiB - 1).
RETAINED_BYTES = 2**31 - 1

# mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: glibc's own allocator environment variables; any of them set means the user tunes the allocator themselves.
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                          "GLIBC_TUNABLES")


def retain_freed_memory() -> bool:
    """Serve large blocks from glibc's heap and keep freed memory for reuse; True when applied.

    Not applied (False) off glibc, or when the environment already tunes glibc's allocator. Blocks allocated before
    the call keep their ``mmap``; everything after it is served from the heap (glibc still falls back to ``mmap``
    where the heap cannot grow). Idempotent.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in GLIBC_MALLOC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, RETAINED_BYTES))
