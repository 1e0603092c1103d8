"""
What a listening port does, with public API only, when the process is
out of file descriptors: the half of L{hfendpoint._twisted_private.ReservePort}
that needs no private name of Twisted's. The port gives the reserve's
descriptors back, accepts the clients waiting and closes them at once,
and takes the reserve back.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

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
