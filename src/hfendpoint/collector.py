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

#: Collections of the youngest generation between two of the middle one
#: (CPython's default is 10). A collection of the middle generation walks
#: every object that survived the young collections since the last one:
#: at 10, the state of two thousand streams started together (130,000
#: objects) was walked in one pause of 40-50 ms, which every stream felt
#: as a late token; at 2 it is walked in pauses of 10-14 ms.
MIDDLE_THRESHOLD = 2


def tune(reactor: Any) -> None:
    """
    Collect the young generation less often and the middle one in
    smaller steps, and once the reactor runs
    (start-up is over), move everything alive then out of the collector's
    sight: it lives as long as the process, and walking it again on
    every full collection is pure cost.
    """
    old = gc.get_threshold()[2]
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, old)
    reactor.callWhenRunning(_freeze)


def _freeze() -> None:
    gc.collect()
    gc.freeze()
