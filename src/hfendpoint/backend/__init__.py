"""
The worker side of the gateway: the worker processes it starts and
supervises, the MessagePack protocol on their sockets, and the clients
that send them calls (one per worker, a pool over several, a batcher for
embeddings).
"""

from hfendpoint.backend._batching import EmbeddingBatcher
from hfendpoint.backend._client import WorkerClient, WorkerInfo
from hfendpoint.backend._pool import WorkerPool
from hfendpoint.backend._process import (
    ProcessSpawner,
    WorkerProcess,
    demo_worker_command,
    spawn_worker,
)
from hfendpoint.backend._protocol import IMessageReceiver, ProtocolViolation, WorkerProtocol
from hfendpoint.backend._supervisor import WorkerService, WorkerStartupError

__all__ = [
    "EmbeddingBatcher",
    "IMessageReceiver",
    "ProcessSpawner",
    "ProtocolViolation",
    "WorkerClient",
    "WorkerInfo",
    "WorkerPool",
    "WorkerProcess",
    "WorkerProtocol",
    "WorkerService",
    "WorkerStartupError",
    "demo_worker_command",
    "spawn_worker",
]
