"""
In-memory fakes of the gateway's seams, for our tests and for anyone
testing code built on the gateway.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from zope.interface import implementer

from hfendpoint.backend._client import WorkerInfo, single_reply
from hfendpoint.errors import OpenAIError, worker_failed
from hfendpoint.interfaces import IWorkerClient

Handler = Callable[[Any], Optional[Iterable[Any]]]


class FakeCall:
    """
    A call the fake worker has not finished: a test answers it by hand.
    """

    def __init__(self, client: "FakeWorkerClient", ident: int, name: str, data: Any, on_reply: Any) -> None:
        self._client = client
        self.ident = ident
        self.name = name
        self.data = data
        self._on_reply = on_reply
        self.deferred: Deferred = Deferred(lambda d: client._cancelled(self))
        self.replies = 0

    @property
    def finished(self) -> bool:
        return self.deferred.called

    def reply(self, data: Any) -> None:
        """
        Deliver one C{data} reply, as the real client would.
        """
        if self.finished:
            raise RuntimeError(f"call {self.ident} is finished")
        self.replies += 1
        try:
            done = self._on_reply(data)
        except OpenAIError as e:
            self._end()
            self.deferred.errback(Failure(e))
            return
        if done:
            self._end()
            self.deferred.callback(None)

    def error(self, message: str) -> None:
        """
        Deliver an C{error} reply.
        """
        self.fail(worker_failed(message))

    def fail(self, error: OpenAIError) -> None:
        self._end()
        self.deferred.errback(Failure(error))

    def _end(self) -> None:
        self._client.pending.pop(self.ident, None)


@implementer(IWorkerClient)
class FakeWorkerClient:
    """
    A worker client whose worker is a dict of Python functions.

    Each handler takes the call's C{data} and returns the replies to
    deliver at once (an iterable), or C{None} to leave the call pending
    in L{pending} for the test to answer. A handler may raise
    L{OpenAIError} to fail the call.

    @ivar requests: every C{(name, data)} asked, in order.
    @ivar pending: unfinished calls by id.
    @ivar cancelled: the ids of calls cancelled by the gateway.
    """

    def __init__(self, handlers: Optional[dict[str, Handler]] = None, info: Optional[WorkerInfo] = None) -> None:
        self.handlers = dict(handlers or {})
        self.info = info or WorkerInfo(calls=frozenset(self.handlers))
        self.requests: list[tuple[str, Any]] = []
        self.pending: dict[int, FakeCall] = {}
        self.cancelled: list[int] = []
        self._next_id = 1

    def pending_count(self) -> int:
        return len(self.pending)

    def request(self, name: str, data: Any, on_reply: Any) -> Deferred:
        self.requests.append((name, data))
        handler = self.handlers.get(name)
        if handler is None:
            return fail(worker_failed(f"No handler implemented for '{name}'"))
        call = FakeCall(self, self._next_id, name, data, on_reply)
        self._next_id += 1
        self.pending[call.ident] = call
        try:
            replies = handler(data)
        except OpenAIError as e:
            call.fail(e)
            return call.deferred
        for reply in replies or ():
            if call.finished:
                break
            call.reply(reply)
        return call.deferred

    def call(self, name: str, data: Any) -> Deferred:
        return single_reply(self, name, data)

    def _cancelled(self, call: FakeCall) -> None:
        if self.pending.pop(call.ident, None) is not None:
            self.cancelled.append(call.ident)
