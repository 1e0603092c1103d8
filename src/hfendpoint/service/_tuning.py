"""
Settings of the whole process, made only by the gateway's own entry
points (the C{hfendpoint} command and the twistd plugin), never by
L{GatewayService}: an application that embeds the service owns its
process, its collector, its allocator and its limits.

 - The garbage collector: a request allocates a few hundred container
   objects, so with CPython's default thresholds the young generation is
   collected every request or two, and the full collections that follow
   walk every object the process holds (modules, the routing tables, the
   OpenAPI document, every open stream). Under a burst of streams such a
   pass took 150 ms, a pause every stream felt.
 - glibc's malloc: images and batches of vectors pass through as buffers
   of megabytes, allocated and freed many times a second; glibc maps such
   blocks fresh from the kernel and gives them back on free, so every one
   is paid again in page faults (about 700 per 4 MiB image, more time in
   the kernel than in Python). Keeping freed blocks in the heap removes
   that for a few megabytes of resident memory.
 - The file-descriptor limit: every client connection is one, and the
   usual soft limit of 1,024 is reached by an ordinary load long before
   the hard limit the operator allows.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Any, Mapping, Optional

#: Young objects allocated between two collections of the youngest
#: generation (CPython's default is 700).
YOUNG_THRESHOLD = 20_000

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


def tune_process(reactor: Any) -> None:
    """
    Everything below, for a process that runs the gateway and nothing
    else.
    """
    tune_collector(reactor)
    tune_allocator()
    raise_descriptor_limit()


def tune_collector(reactor: Any) -> None:
    """
    Collect the young generation less often, and once the reactor runs
    (start-up is over), move everything alive then out of the collector's
    sight: it lives as long as the process, and walking it again on
    every full collection is pure cost.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    reactor.callWhenRunning(_freeze)


def _freeze() -> None:
    gc.collect()
    gc.freeze()


def tune_allocator(environ: Mapping[str, str] = os.environ, libc: Optional[object] = None) -> bool:
    """
    Keep big freed blocks in the heap, unless the operator set malloc up
    themselves or the C library has no C{mallopt}.

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


def raise_descriptor_limit(resource_module: Any = None) -> Optional[int]:
    """
    Raise the soft limit on open files to the hard limit.

    @return: the new soft limit, or C{None} where there is no such limit
        or it cannot be raised.
    """
    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:
            return None
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    if hard == resource_module.RLIM_INFINITY:
        # Linux refuses an infinite soft limit on files; its own ceiling
        # is the usual hard limit then.
        hard = max(soft, 1024 * 1024)
    if soft >= hard:
        return soft
    try:
        resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return None
    return hard
