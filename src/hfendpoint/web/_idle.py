"""
The idle timeout of an HTTP connection, Twisted's, kept with one timer per
connection rather than one per request.
"""

from __future__ import annotations

from typing import Any, Optional


def stopped(call: Any) -> None:
    """
    Cancel the delayed C{call}, if any and still to run; C{None}, for the
    attribute that held it.
    """
    if call is not None and call.active():
        call.cancel()
    return None


class IdleState:
    """
    The idle timeout's state of one connection, in an object of its own so
    that the channel's instance dictionary keeps Twisted's attributes
    alone (see L{hfendpoint.web._hardened.HardenedChannel}).
    """

    __slots__ = ("clock", "call", "since", "serving")

    def __init__(self) -> None:
        #: The reactor the connection's site runs on.
        self.clock: Any = None
        self.call: Any = None
        self.since = 0.0
        #: Whether a request is being served (Twisted's channel turns the
        #: idle timeout off meanwhile).
        self.serving = False


class IdleTimeout:
    """
    A mixin for an L{http.HTTPChannel} (before it in the bases) that
    overrides the public methods of its L{TimeoutMixin}: the connection is
    closed once it has sent nothing for C{timeOut} seconds while no request
    of its was being served, as by Twisted's own channel.

    Twisted's channel turns its idle timeout off when a request is whole
    and on again when it is answered, which cancelled a timer and made a
    new one for every request. Here one timer per connection checks, when
    it fires, whether the connection was idle for the whole period, and is
    set again for the rest of it if it was not.

    The channel must set C{self._idle.clock}, the reactor its site runs
    on, before its C{connectionMade} reaches Twisted's.
    """

    timeOut: Optional[float]

    def __init__(self) -> None:
        self._idle = IdleState()
        super().__init__()

    def setTimeout(self, period: Optional[float]) -> Optional[float]:
        previous = self.timeOut
        self.timeOut = period
        idle = self._idle
        if period is not None:
            idle.since = idle.clock.seconds()
            if idle.call is None:
                idle.call = idle.clock.callLater(period, self._check_idle)
        elif not idle.serving:
            # Turned off for good: the connection is lost, or Twisted
            # hands it to its HTTP/2 channel.
            self._cancel_idle()
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None:
            idle = self._idle
            idle.since = idle.clock.seconds()

    def _check_idle(self) -> None:
        idle = self._idle
        idle.call = None
        if self.timeOut is None:
            # Busy with a request: answering it sets the timeout again.
            return
        rest = idle.since + self.timeOut - idle.clock.seconds()
        if rest > 0:
            idle.call = idle.clock.callLater(rest, self._check_idle)
            return
        self.timeoutConnection()  # type: ignore[attr-defined]

    def _cancel_idle(self) -> None:
        self._idle.call = stopped(self._idle.call)

    def allContentReceived(self) -> None:
        self._idle.serving = True
        super().allContentReceived()  # type: ignore[misc]

    def requestDone(self, request: Any) -> None:
        self._idle.serving = False
        super().requestDone(request)  # type: ignore[misc]

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_idle()
        super().connectionLost(reason)  # type: ignore[misc]
