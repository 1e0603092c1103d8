"""
The gateway's listeners: each endpoint description a service that keeps
its port and tells every caller whether listening worked, and the TCP and
TLS ones drawing on the descriptor reserve when the process runs out.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from hfendpoint._refusing import listen_tcp, listen_tls
from hfendpoint.backend._reserve import DescriptorReserve


class ReservedListening:
    """
    The reactor, as the endpoints of the listen descriptions see it: its
    TCP ports (C{tcp:}, C{tcp6:}) and the TCP ports under its TLS ones
    (C{ssl:}) refuse the clients they cannot accept when the process is
    out of descriptors, with the descriptors of C{reserve}, and say so
    once (see L{listen_tcp}). Everything else (C{unix:}, C{systemd:}, ...)
    is the reactor's own.
    """

    def __init__(self, reactor: Any, reserve: DescriptorReserve) -> None:
        self._reactor = reactor
        self._reserve = reserve
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return listen_tcp(self._reactor, port, factory, backlog, interface, self._reserve)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        return listen_tls(self._reactor, port, factory, contextFactory, backlog, interface, self._reserve)


class RecordingEndpointService(Service):
    """
    A listener on an endpoint, like Twisted's C{StreamServerEndpointService},
    that keeps its port and reports whether listening worked, instead of
    only logging a failure to listen.
    """

    port: Any = None

    def __init__(self, endpoint: Any, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._listen: Optional[Deferred] = None
        #: The port, or the failure to listen, once known.
        self._outcome: Any = None
        self._waiters: list[Deferred] = []

    def when_listening(self) -> Deferred:
        """
        @return: a new Deferred firing with the port, or failing as
            listening failed: each caller gets the outcome.
        """
        d: Deferred = Deferred()
        if self._outcome is None:
            self._waiters.append(d)
        elif isinstance(self._outcome, Failure):
            d.errback(self._outcome)
        else:
            d.callback(self._outcome)
        return d

    def _settle(self, outcome: Any) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen = self.endpoint.listen(self.factory)
        self._listen.addCallbacks(self._listening, self._failed)

    def startService(self) -> None:
        super().startService()
        if self._listen is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred:
        """
        Stop listening, or stop trying to; fires once the port is closed.
        """
        super().stopService()
        listen, self._listen = self._listen, None
        if listen is None:
            return succeed(None)
        listen.cancel()
        return listen.addCallback(lambda port: port.stopListening() if port is not None else None)

    def _listening(self, port: Any) -> Any:
        self.port = port
        self._settle(port)
        return port

    def _failed(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return None
        self._settle(failure)
        return None
