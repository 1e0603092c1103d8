"""
What a listening port does when the process is out of file descriptors:
it gives the reserve's descriptors back, accepts the clients waiting and
closes them at once, and takes the reserve back (L{ReservePort}). It
relies on how Twisted's own port accepts its clients, which
L{hfendpoint._twisted_private} checks when it is imported (its C{DIRECT});
the one private name it sets, C{Port._type}, is set there too.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import posixbase, tcp

from hfendpoint import _twisted_private

if TYPE_CHECKING:
    # Not imported at run time: the backend package imports this module.
    from hfendpoint.backend._reserve import DescriptorReserve

#: What C{accept} fails with when the process (or the system) is out of
#: descriptors.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

#: Clients closed at most in one pass of the reactor.
REFUSE_PER_PASS = 100


class RefusingPort:
    """
    A mixin for a Twisted TCP port with a C{descriptor_reserve}, a
    C{refused} count and a C{_resume_call}.
    """

    descriptor_reserve: Any
    refused: int
    _resume_call: Any
    pause: float

    def refuse(self, error: OSError, accept: Callable[[], tuple[socket.socket, Any]]) -> None:
        """
        Close the clients waiting, with the reserve's descriptors, after
        C{accept} (the listening socket's own) failed with C{error} for
        want of descriptors.
        """
        reserve = self.descriptor_reserve
        reserve.ran_out("close the new connections it cannot accept", error)
        reserve.release()
        refused = 0
        stuck = False
        try:
            while refused < REFUSE_PER_PASS:
                try:
                    client, _ = accept()
                except OSError as again:
                    stuck = again.errno in OUT_OF_DESCRIPTORS
                    break
                client.close()
                refused += 1
        finally:
            reserve.hold()
        self.refused += refused
        if stuck and not refused and self._resume_call is None:
            self.stopReading()
            self._resume_call = self.reactor.callLater(self.pause, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def connectionLost(self, reason: Any) -> None:
        if self._resume_call is not None:
            self._resume_call.cancel()
            self._resume_call = None
        super().connectionLost(reason)


class ListeningSocket(socket.socket):
    """
    The listening socket of a L{ReservePort} (the same descriptor, taken
    over from the socket Twisted made): an C{accept} that fails for want
    of descriptors has the port refuse the clients waiting, and then says
    that none is left, which ends Twisted's accept loop quietly.
    """

    def __init__(self, plain: socket.socket, port: Any) -> None:
        super().__init__(plain.family, plain.type, plain.proto, fileno=plain.detach())
        self.setblocking(False)
        self.port = port

    def accept(self) -> Any:
        try:
            accepted = super().accept()
        except OSError as error:
            if error.errno not in OUT_OF_DESCRIPTORS:
                raise
            self.port.refuse(error, super().accept)
            raise BlockingIOError(errno.EAGAIN, "out of file descriptors") from None
        reserve = self.port.descriptor_reserve
        if reserve.short:
            reserve.settle()
        return accepted


class ReservePort(RefusingPort, tcp.Port):
    """
    A TCP listening port that, when the process (or the system) is out of
    file descriptors, accepts the clients waiting and closes them at once
    with the descriptors of a L{DescriptorReserve}, which it then takes
    back: the clients see their connection closed rather than wait in the
    backlog, and the reactor is not woken again and again by a listening
    socket it cannot accept from. The shortage is logged once, by the
    reserve, when it starts and when it ends. Only used when L{hfendpoint._twisted_private.DIRECT}.

    Twisted's own port keeps one spare descriptor of its own for
    C{EMFILE} (not C{ENFILE}) and logs each use of it (three lines to
    close one client); once it fails to take that descriptor back (another
    thread took it, say), it never tries again until it listens anew, and
    from then on logs "Could not accept new connection (EMFILE)" on every
    pass of the reactor while the clients wait in the backlog. This port
    takes its reserve back after every use, and whenever a client is
    accepted during a shortage.

    If even the reserve gives nothing to accept with (another user of the
    reserve could not take it back), the port stops reading for
    C{pause} seconds rather than spin.

    @ivar descriptor_reserve: the reserve, shared with whatever else
        draws on it (the worker spawns).
    @ivar refused: how many clients were closed for want of descriptors.
    """

    pause = 0.1

    def __init__(
        self,
        port: int,
        factory: Any,
        backlog: int = 50,
        interface: str = "",
        reactor: Any = None,
        *,
        reserve: DescriptorReserve,
    ) -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        self.descriptor_reserve = reserve
        self.refused = 0
        self._resume_call: Any = None

    def startListening(self) -> None:
        self.descriptor_reserve.hold()
        super().startListening()

    def createInternetSocket(self) -> socket.socket:
        return ListeningSocket(super().createInternetSocket(), self)


def _reserve_usable(reactor: Any, reserve: Optional[DescriptorReserve]) -> bool:
    return _twisted_private.DIRECT and reserve is not None and isinstance(reactor, posixbase.PosixReactorBase)


def listen_tcp(
    reactor: Any,
    port: int,
    factory: Any,
    backlog: int = 50,
    interface: str = "",
    reserve: Optional[DescriptorReserve] = None,
) -> Any:
    """
    Listen like C{reactor.listenTCP}, on a L{ReservePort} drawing on
    C{reserve} when there is one, the private names are present and the
    reactor is one of Twisted's POSIX reactors; otherwise on Twisted's own
    port (which keeps one spare descriptor of its own, logging each use).
    """
    if not _reserve_usable(reactor, reserve):
        return reactor.listenTCP(port, factory, backlog, interface)
    listening = ReservePort(port, factory, backlog, interface, reactor, reserve=reserve)
    listening.startListening()
    return listening


def listen_tls(
    reactor: Any,
    port: int,
    factory: Any,
    contextFactory: Any,
    backlog: int = 50,
    interface: str = "",
    reserve: Optional[DescriptorReserve] = None,
) -> Any:
    """
    Listen like C{reactor.listenSSL}: TLS over a L{ReservePort}, as
    Twisted's POSIX reactors put TLS over their TCP port, under the same
    conditions as L{listen_tcp}.
    """
    if not _reserve_usable(reactor, reserve):
        return reactor.listenSSL(port, factory, contextFactory, backlog, interface)
    from twisted.protocols.tls import TLSMemoryBIOFactory

    listening = ReservePort(
        port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface, reactor, reserve=reserve
    )
    _twisted_private.name_tls(listening)
    listening.startListening()
    return listening
