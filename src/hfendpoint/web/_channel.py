"""
The HTTP channel of the gateway's site: it holds the bytes of its
responses during a reactor turn and sends them at the end of the turn,
all those of the turn in one C{send} straight to the TCP socket (and a
big response as soon as it is whole).

Writing to the socket directly needs names Twisted keeps private; they
are all in L{hfendpoint._twisted_private}, which says why they are worth
it. Where it cannot use them, the site takes the channel this one
derives from (L{hfendpoint.web._hardened.HardenedChannel}) instead. What the socket does not take at once, and everything while the
transport still holds bytes, goes through the transport as before, which
keeps its flow control: a slow client still pauses a streaming response's
producer. Anything but plain TCP (TLS, HTTP/2) writes through the
transport at once, as Twisted's channel does.

L{HeldWrites} is that holding and sending, for the channel and for the
worker socket's protocol alike.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.internet import tcp
from twisted.web.http_headers import Headers

from hfendpoint._twisted_private import direct_transport, send, send_parts
from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.web._hardened import HardenedChannel

#: Held parts are sent with one C{sendmsg} rather than joined first when
#: they are few (the kernel takes at most 1024) and add up to this many bytes.
MAX_GATHER = 64
BIG = 256 * 1024

#: A finished response at least this big is sent at once, not at the end
#: of the turn.
SEND_AT_ONCE = 64 * 1024


class HeldWrites:
    """
    What is written to one transport during a reactor turn, held and sent
    at the end of the turn (or when C{flush_now} is called) in one send,
    straight to the socket while the transport holds nothing and the
    private names allow it, through C{transport.write} otherwise.
    """

    __slots__ = ("_transport", "_flusher", "_held")

    def __init__(self, transport: Any, flusher: TurnFlusher) -> None:
        self._transport = transport
        self._flusher = flusher
        self._held: list[bytes] = []

    def attach(self, transport: Any) -> None:
        """
        Send to C{transport} (for a holder made before its transport was).
        """
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not self._held:
            self._flusher.add(self)
        self._held.append(data)

    def extend(self, parts: Iterable[bytes]) -> None:
        if not self._held:
            self._flusher.add(self)
        self._held.extend(parts)

    def size(self) -> int:
        return sum(map(len, self._held))

    def held(self) -> int:
        """
        How many writes are held.
        """
        return len(self._held)

    def alone(self) -> bool:
        """
        Whether nothing else in the turn would join these writes
        (L{TurnFlusher.alone}).
        """
        return self._flusher.alone(self)

    def flush_now(self) -> None:
        """
        Send what is held.
        """
        held = self._held
        if not held:
            return
        self._held = []
        if len(held) == 1:
            send(self._transport, held[0])
        elif len(held) <= MAX_GATHER and sum(map(len, held)) >= BIG:
            send_parts(self._transport, held)
        else:
            send(self._transport, b"".join(held))

    def drop(self) -> None:
        """
        Forget what is held: the connection is gone.
        """
        self._held = []


class GatewayChannel(HardenedChannel):
    """
    A L{HardenedChannel} that holds what its requests write during a turn and
    sends it at the end of the turn, straight to the socket when it can.

    Everything that writes to the transport behind the channel's back
    (closing it, the answers Twisted writes itself) sends what is held
    first, so bytes always leave in the order they were written.
    """

    def __init__(self, flusher: TurnFlusher) -> None:
        super().__init__()
        # Given its transport once connected, if it can send straight to it.
        self._writes: Optional[HeldWrites] = HeldWrites(None, flusher)

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._writes is not None and type(self.transport) is tcp.Server and direct_transport(self.transport):
            self._writes.attach(self.transport)
        else:
            self._writes = None

    def write(self, data: bytes) -> None:
        writes = self._writes
        if writes is None:
            self.transport.write(data)
        elif data:
            writes.write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._writes is None:
            self.transport.writeSequence(iovec)
        else:
            self._writes.extend(iovec)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        # Twisted's writes the header block to the transport itself.
        if self._writes is None or not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        block = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                block.extend((name, b": ", value, b"\r\n"))
        block.append(b"\r\n")
        self._writes.extend(block)

    def flush_now(self) -> None:
        """
        Send what is held.
        """
        if self._writes is not None:
            self._writes.flush_now()

    def requestDone(self, request: Any) -> None:
        # A big response leaves as soon as it is whole rather than at the
        # end of the turn: when a batch of embeddings completes many
        # requests in one turn, each client reads its answer while the
        # next is written. Small ones still wait, so that under load the
        # requests that come back arrive together and are batched together.
        # And so does one that nothing else in the turn would join.
        writes = self._writes
        if writes is not None and (writes.alone() or writes.size() >= SEND_AT_ONCE):
            writes.flush_now()
        super().requestDone(request)

    def loseConnection(self) -> None:
        self.flush_now()
        super().loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._writes is not None:
            self._writes.drop()
        super().connectionLost(reason)
