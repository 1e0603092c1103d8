"""
The liveness probe: a worker that speaks our handshake is asked
C{hfendpoint.ping} every so often, and one that does not answer in time
is hung.

A crashed worker is noticed by its exit; a hung one (a handler blocking
its event loop, a deadlock) keeps its socket and its process, so without
a probe every request would wait for its reply timeout while C{/ready}
kept saying 200. Our worker library answers the ping from its event loop
directly, so the answer means "this worker still reads its socket and
runs its loop", not "some handler finished". Old workers never answer
our extensions: they are never probed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from hfendpoint.wire import PING

#: Seconds between two probes, and allowed for an answer: a hung worker is
#: found within their sum (25 s), inside the 30 s a load balancer's
#: readiness check usually allows.
DEFAULT_PING_INTERVAL = 10.0
DEFAULT_PING_TIMEOUT = 15.0


class LivenessProbe:
    """
    Pings one worker through its client until stopped or until a ping is
    missed, which it reports once through C{on_hung}.

    A ping is one more call on the client (its id from the same counter),
    so it needs nothing from the worker beyond answering it. A reply, even
    an C{error}, counts as alive: the worker read the ping and its loop ran.

    @param reactor: an C{IReactorTime}.
    @param client: the L{WorkerClient} of the worker.
    @param on_hung: called with a sentence saying what was missed.
    """

    def __init__(
        self,
        reactor: Any,
        client: Any,
        interval: float,
        timeout: float,
        on_hung: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self._client = client
        self.interval = interval
        self.timeout = timeout
        self._on_hung = on_hung
        self._next: Optional[IDelayedCall] = None
        self._deadline: Optional[IDelayedCall] = None
        self._waiting: Optional[Deferred] = None
        self.sent = 0

    @property
    def running(self) -> bool:
        return self._next is not None or self._waiting is not None

    def start(self) -> None:
        self.stop()
        self._next = self._reactor.callLater(self.interval, self._ping)

    def stop(self) -> None:
        for timer in (self._next, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._next = self._deadline = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            # Silently: the Deferred's errback below sees no waiter.
            waiting.addErrback(lambda _: None)
            waiting.cancel()

    def _ping(self) -> None:
        self._next = None
        self.sent += 1
        d = self._client.call(PING, {})
        if d.called:
            # No socket: the worker is gone, which its supervisor hears of
            # without us.
            d.addErrback(lambda _: None)
            return
        self._waiting = d
        self._deadline = self._reactor.callLater(self.timeout, self._missed)
        d.addBoth(self._answered, d)

    def _answered(self, result: Any, d: Deferred) -> None:
        if self._waiting is not d:
            return None
        self._waiting = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        code = getattr(getattr(result, "value", None), "code", "answered")
        if code == "timeout":
            # The client's own reply timeout came first: missed all the same.
            self._missed()
        elif code in ("answered", "worker_error"):
            # Any answer, an error included, shows the loop runs.
            self._next = self._reactor.callLater(self.interval, self._ping)
        # Otherwise the socket is gone, which the supervisor hears of.
        return None

    def _missed(self) -> None:
        self._deadline = None
        self.stop()
        self._on_hung(
            f"the worker did not answer a liveness probe within {self.timeout:g}s"
        )
