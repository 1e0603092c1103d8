"""
The HTTP channel of the gateway's site: it sends the bytes of its
responses to the TCP socket itself, all those of a reactor turn in one
C{send} (and a big response as soon as it is whole).

A Twisted TCP transport buffers every write and sends it when the reactor
next finds the socket writable, registering the socket with epoll and
removing it again around each response. The gateway's sockets are nearly
always writable and its responses small (a JSON body, a token's event), so
that machinery cost more than the C{send} itself, and an extra trip
through the reactor's loop for each response. What the socket does not
take at once, and everything while the transport still holds bytes, goes
through the transport as before, which keeps its flow control: a slow
client still pauses a streaming response's producer. Anything but plain
TCP (TLS, HTTP/2) takes Twisted's usual path.

L{HeldWrites} is that holding and sending, for the channel and for the
worker socket's protocol alike.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.internet import tcp
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.http_headers import Headers

from hfendpoint.web._coalescing import TurnFlusher


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
    straight to the socket while the transport holds nothing.
    """

    __slots__ = ("_transport", "_flusher", "_held")

    def __init__(self, transport: tcp.Connection, flusher: TurnFlusher) -> None:
        self._transport = transport
        self._flusher = flusher
        self._held: list[bytes] = []

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


class GatewayChannel(HTTPChannel):
    """
    An L{HTTPChannel} that holds what its requests write during a turn and
    sends it at the end of the turn, straight to the socket when it can.

    Everything that writes to the transport behind the channel's back
    (closing it, the answers Twisted writes itself) sends what is held
    first, so bytes always leave in the order they were written.
    """

    def __init__(self, flusher: TurnFlusher) -> None:
        super().__init__()
        self._flusher = flusher
        self._writes: Optional[HeldWrites] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if type(self.transport) is tcp.Server:
            self._writes = HeldWrites(self.transport, self._flusher)

    _host: Any = None

    def getHost(self) -> Any:
        # Asked for by every request; the socket's address does not change.
        if self._host is None:
            self._host = super().getHost()
        return self._host

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

    def _send100Continue(self) -> None:
        self.flush_now()
        super()._send100Continue()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.flush_now()
        super()._respondToBadRequestAndDisconnect()

    def connectionLost(self, reason: Any) -> None:
        if self._writes is not None:
            self._writes.drop()
        super().connectionLost(reason)


def send(transport: tcp.Server, data: bytes) -> None:
    """
    Write C{data} to a TCP transport: straight to its socket when the
    transport holds nothing, and what the socket did not take into the
    transport's buffer, which then sends it as it would have.
    """
    if not _empty(transport):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # Busy, or broken: the transport meets it and handles it its way.
        sent = 0
    if sent < len(data):
        _leave(transport, data, sent)


def send_parts(transport: tcp.Server, parts: list[bytes]) -> None:
    """
    Like L{send}, for a few big parts (an image and its framing), gathered
    by the kernel rather than joined here first: only what the socket does
    not take at once is copied.
    """
    if not _empty(transport):
        transport.write(b"".join(parts))
        return
    try:
        sent = transport.socket.sendmsg(parts)
    except OSError:
        sent = 0
    for i, part in enumerate(parts):
        if sent < len(part):
            _leave(transport, b"".join([memoryview(part)[sent:], *parts[i + 1 :]]), 0)
            return
        sent -= len(part)


def _leave(transport: tcp.Server, data: bytes, offset: int) -> None:
    """
    Hand what the socket did not take to the transport, whose buffer is
    empty: C{data} from C{offset} becomes that buffer, without a copy, and
    the transport sends it when it can and pauses the producer if it must.
    """
    transport.dataBuffer = data
    transport.offset = offset
    transport.startWriting()
    transport._maybePauseProducer()


def _empty(transport: tcp.Server) -> bool:
    """
    Whether C{transport} is open and holds nothing, so that its socket may
    be written to directly.
    """
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) <= transport.offset
    )


def channel_protocol(flusher: TurnFlusher) -> _GenericHTTPChannelProtocol:
    """
    A protocol for one connection of the site, as Twisted's own site builds
    it (the wrapper that could switch to HTTP/2), around a L{GatewayChannel}.
    """
    return _GenericHTTPChannelProtocol(GatewayChannel(flusher))
