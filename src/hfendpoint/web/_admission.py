"""
Admission control: a bound on requests being served and on requests
waiting for a turn, checked before any costly work, and the drain that a
graceful stop waits on.

It wraps the API's resource, so every costly endpoint (every C{POST})
passes through one place; cheap ones (health, models, fetching an image)
are never queued, so probes keep answering under load.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hfendpoint.errors import OpenAIError
from hfendpoint.web._json import send_error
from hfendpoint.web._site import when_done


def too_many_requests(retry_after: int) -> OpenAIError:
    return OpenAIError(
        429,
        "The server is handling as many requests as it can; retry after a short wait.",
        "rate_limit_error",
        None,
        "server_overloaded",
        headers={"Retry-After": str(retry_after)},
    )


def shutting_down() -> OpenAIError:
    return OpenAIError(
        503, "The server is shutting down.", "api_error", None, "shutting_down"
    )


def queue_timed_out(seconds: float) -> OpenAIError:
    return OpenAIError(
        503,
        f"The request waited {seconds:g} seconds for a turn and was given up.",
        "api_error",
        None,
        "server_overloaded",
        headers={"Retry-After": "1"},
    )


class AdmissionResource(Resource):
    """
    Lets at most C{max_in_flight} costly requests be served at once and
    at most C{max_waiting} more wait (first come, first served, for up to
    C{queue_timeout} seconds); past that, a 429 with C{Retry-After}.

    @ivar in_flight: costly requests being served now.
    @ivar waiting: costly requests waiting for a turn.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        inner: Any,
        max_in_flight: int = 4096,
        max_waiting: int = 1024,
        queue_timeout: float = 60.0,
        retry_after: int = 1,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._inner = inner
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.queue_timeout = queue_timeout
        self.retry_after = retry_after
        self.in_flight = 0
        self._queue: deque[_Waiting] = deque()
        self._closing = False
        self._idle_waiters: list[Deferred] = []

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def render(self, request: Any) -> Any:
        if request.method != b"POST":
            return self._inner.render(request)
        if self._closing:
            return send_error(request, shutting_down())
        if self.in_flight < self.max_in_flight and not self._queue:
            self._admit(request)
            return self._inner.render(request)
        if len(self._queue) >= self.max_waiting:
            return send_error(request, too_many_requests(self.retry_after))
        self._enqueue(request)
        return NOT_DONE_YET

    def _admit(self, request: Any) -> None:
        self.in_flight += 1
        when_done(request, self._release)

    def _release(self, result: Any) -> None:
        self.in_flight -= 1
        while self._queue and self.in_flight < self.max_in_flight:
            waiting = self._queue.popleft()
            waiting.timer.cancel()
            self._admit(waiting.request)
            waiting.request.render(self._inner)
        if self.in_flight == 0 and not self._queue:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _enqueue(self, request: Any) -> None:
        waiting = _Waiting(request)
        waiting.timer = self._reactor.callLater(self.queue_timeout, self._expire, waiting)
        self._queue.append(waiting)
        request.notifyFinish().addErrback(lambda _: self._forget(waiting))

    def _forget(self, waiting: "_Waiting") -> bool:
        """
        Take C{waiting} out of the queue (the client left, or its time is
        up); C{False} if it was no longer there.
        """
        try:
            self._queue.remove(waiting)
        except ValueError:
            return False
        if waiting.timer.active():
            waiting.timer.cancel()
        return True

    def _expire(self, waiting: "_Waiting") -> None:
        if self._forget(waiting):
            request = waiting.request
            request.write(send_error(request, queue_timed_out(self.queue_timeout)))
            request.finish()

    # Draining

    def close(self) -> None:
        """
        Refuse new costly requests from now on, with a 503.
        """
        self._closing = True

    def when_idle(self) -> Deferred:
        """
        @return: a Deferred firing once no costly request is served or waiting.
        """
        if self.in_flight == 0 and not self._queue:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        return d


class _Waiting:
    __slots__ = ("request", "timer")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.timer: Any = None
