"""
Garbage collector settings for a process that runs the gateway.

A request allocates a few hundred container objects, so with CPython's
default thresholds the young generation is collected every request or
two, and the full collections that follow walk every object the process
holds: modules, the routing tables, the OpenAPI document and every open
stream. Under a burst of streams such a pass took 150 ms, a pause every
stream felt. The settings here are applied only by the gateway's own entry
points (the CLI and the twistd plugin), never by the library, because an
application embedding the service owns its process.
"""

from __future__ import annotations

import gc
from typing import Any

#: Young objects allocated between two collections of the youngest
#: generation (CPython's default is 700).
YOUNG_THRESHOLD = 20_000


def tune(reactor: Any) -> None:
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
