"""
The worker library: what a worker imports to serve the gateway's calls
(C{import hfendpoint} re-exports its public names). Standard library and
msgpack only.
"""

from hfendpoint.library._sdk import (
    Cancelled,
    Connection,
    WorkerError,
    handler,
    legacy_calls,
    modern_calls,
    run,
    serve,
)

__all__ = [
    "Cancelled",
    "Connection",
    "WorkerError",
    "handler",
    "legacy_calls",
    "modern_calls",
    "run",
    "serve",
]
