"""
A pool of worker processes behind one worker client, for models that are
served faster by several processes (one per GPU, say) than by one.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from hfendpoint.backend._client import WorkerClient, WorkerInfo
from hfendpoint.errors import worker_unavailable
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.backend._supervisor import WorkerService


@implementer(IWorkerClient)
class WorkerPool:
    """
    Sends each call to the least busy worker that can take it.

    Each worker has its own process, socket, client and supervisor, so
    one that dies fails only its own calls while the others keep serving.
    """

    def __init__(self, members: Sequence[tuple[WorkerService, WorkerClient]]) -> None:
        self.members = list(members)

    @property
    def info(self) -> WorkerInfo:
        """
        What the first ready worker said of itself: the workers of a pool
        run the same program.
        """
        for service, client in self.members:
            if service.ready:
                return client.info
        return self.members[0][1].info

    def _pick(self) -> WorkerClient | None:
        best = None
        for service, client in self.members:
            if not client.connected_to_worker:
                continue
            if best is None or client.pending_count() < best.pending_count():
                best = client
        return best

    def request(self, name: str, data: Any, on_reply: Any) -> Deferred:
        client = self._pick()
        if client is None:
            return fail(worker_unavailable("No worker is running."))
        return client.request(name, data, on_reply)

    def call(self, name: str, data: Any) -> Deferred:
        client = self._pick()
        if client is None:
            return fail(worker_unavailable("No worker is running."))
        return client.call(name, data)

    def pending_count(self) -> int:
        return sum(client.pending_count() for _, client in self.members)
