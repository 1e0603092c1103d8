"""
C allocator settings for a process that runs the gateway.

Images and batches of vectors pass through the gateway as buffers of
megabytes, allocated and freed many times a second. glibc's malloc maps
such blocks fresh from the kernel and gives them back on free (its mmap
threshold, and the trimming of the heap), so every one is paid again in
page faults: serving 4 MiB images, about 700 faults per image and more
time in the kernel than in Python. Keeping freed blocks in the heap for
the next request removes that for a few megabytes of resident memory.

Like the collector settings, these are applied only by the gateway's own
entry points, never by the library; and not at all when the process was
started with its own malloc settings, or on a C library without mallopt.
"""

from __future__ import annotations

import ctypes
import os
from typing import Mapping, Optional

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap rather than their own
#: mapping (glibc's largest allowed value on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024 * 1024

#: Free memory at the top of the heap kept for reuse rather than returned.
TRIM_THRESHOLD = 256 * 1024 * 1024

#: Environment variables by which an operator sets malloc up themselves.
OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune(environ: Mapping[str, str] = os.environ, libc: Optional[object] = None) -> bool:
    """
    @return: whether the settings were applied.
    """
    if any(name in environ for name in OPERATOR_SETTINGS):
        return False
    mallopt = getattr(libc if libc is not None else _libc(), "mallopt", None)
    if mallopt is None:
        return False
    # mallopt answers 1 when it took the value, 0 when it refused it.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _libc() -> Optional[object]:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None
