"""
Every name of Twisted's that is not public API and that the gateway uses,
in one place, checked when this module is imported.

Each use buys speed that Twisted's public API does not offer (see
L{send}); none is needed for the gateway to work. When a name is missing
or no longer looks as expected (a Twisted upgrade renamed or reshaped
it), or when the environment variable C{HFENDPOINT_PUBLIC_TWISTED_ONLY}
is set to anything but C{""} or C{"0"}, the gateway takes the public path
instead: plain C{transport.write}, and Twisted's own HTTP channel.
L{PUBLIC_ONLY_REASON} then says why.

The private names, all read here and nowhere else:

 - of a TCP transport (C{twisted.internet.abstract.FileDescriptor}):
   C{dataBuffer}, C{offset}, C{_tempDataLen}, C{_writeDisconnected} (to
   know that the transport holds nothing, so that its socket may be
   written to directly) and C{_maybePauseProducer} (to hand the transport
   what the socket did not take without copying it);
 - of L{twisted.web.http}: C{HTTPChannel._send100Continue} and
   C{HTTPChannel._respondToBadRequestAndDisconnect} (the two writes
   Twisted's channel makes to its transport itself, which must not pass
   what the channel holds, and the second of which also becomes an
   OpenAI-shaped 400), and C{_GenericHTTPChannelProtocol} (the protocol
   Twisted's site wraps its channel in);
 - of L{twisted.web.http_headers.Headers}: C{_rawHeaders}, the table of
   its values by canonical name (C{b"Content-Type"}), read and written
   directly (L{header_table}, L{set_header}) for the few headers every
   request reads or every answer sets: Twisted canonicalizes the name and
   cleans the value again at each call, a third of a microsecond a
   header. Checked by setting a header through Twisted and reading it
   back through the table, and the other way round;
 - of L{twisted.internet.tcp.Port}: that its C{doRead} takes clients
   with C{self.socket.accept()}, on the socket C{createInternetSocket}
   made, and stops quietly at C{EAGAIN} (so that
   L{hfendpoint._refusing.ReservePort} can
   close, with the descriptors of a L{DescriptorReserve}, the clients it
   cannot accept when the process is out of descriptors, saying so once;
   see there what Twisted's own port does), and C{_type} (the "TLS" of a
   TLS port's log lines). Checked by calling C{doRead} on a port that is
   not listening (its C{numberAccepts} set, as C{startListening} would),
   with a socket that only counts.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Mapping, Optional, Sequence

from twisted.internet import abstract, tcp
from twisted.internet.protocol import Factory
from twisted.web import http
from twisted.web.http_headers import Headers


#: The environment variable that forces the public path.
PUBLIC_ONLY_VARIABLE = "HFENDPOINT_PUBLIC_TWISTED_ONLY"

_CHANNEL_WRITES = ("_send100Continue", "_respondToBadRequestAndDisconnect")


class _NoReactor:
    """
    Enough of a reactor for a L{abstract.FileDescriptor} that is only
    looked at.
    """


def missing_names() -> list[str]:
    """
    The private names this module relies on that the installed Twisted
    does not have, or has in another shape.
    """
    missing = []
    try:
        descriptor: Any = abstract.FileDescriptor(reactor=_NoReactor())  # type: ignore[arg-type]
    except Exception:
        return ["FileDescriptor(reactor=...)"]
    for name, kind in (
        ("dataBuffer", bytes),
        ("offset", int),
        ("_tempDataLen", int),
        ("_writeDisconnected", bool),
    ):
        if not isinstance(getattr(descriptor, name, None), kind):
            missing.append(name)
    if not callable(getattr(descriptor, "_maybePauseProducer", None)):
        missing.append("_maybePauseProducer")
    for name in _CHANNEL_WRITES:
        if not callable(getattr(http.HTTPChannel, name, None)):
            missing.append(name)
    if not callable(getattr(http, "_GenericHTTPChannelProtocol", None)):
        missing.append("_GenericHTTPChannelProtocol")
    if not _port_accepts_from_its_socket():
        missing.append("Port.doRead(socket.accept)")
    if not isinstance(getattr(tcp.Port, "_type", None), str):
        missing.append("Port._type")
    if not _headers_keep_a_table():
        missing.append("Headers._rawHeaders")
    return missing


def _headers_keep_a_table() -> bool:
    """
    Whether L{Headers} keeps its values in C{_rawHeaders}, a L{dict} of
    lists of values by canonical name, that its public methods read and
    write.
    """
    try:
        headers: Any = Headers()
        headers.setRawHeaders(b"x-request-id", [b"set"])
        table = headers._rawHeaders
        if type(table) is not dict or table != {b"X-Request-Id": [b"set"]}:
            return False
        table[b"Content-Type"] = [b"put"]
        return bool(
            headers.getRawHeaders(b"content-type") == [b"put"]
            and dict(headers.getAllRawHeaders()) == {b"X-Request-Id": [b"set"], b"Content-Type": [b"put"]}
        )
    except Exception:
        return False


class _CountingSocket:
    """
    A listening socket with no client waiting, that counts the calls to
    its C{accept}.
    """

    accepts = 0

    def accept(self) -> Any:
        self.accepts += 1
        raise BlockingIOError(errno.EAGAIN, "no client")


def _port_accepts_from_its_socket() -> bool:
    """
    Whether L{tcp.Port.doRead} takes its clients from C{self.socket} and
    stops at C{EAGAIN}, and whether the port makes its socket with
    C{createInternetSocket}: what L{hfendpoint._refusing.ReservePort} relies on.
    """
    if not callable(getattr(tcp.Port, "createInternetSocket", None)):
        return False
    try:
        port: Any = tcp.Port(0, Factory(), reactor=_NoReactor())
        listening = _CountingSocket()
        port.socket = listening
        port.numberAccepts = 1
        port.doRead()
    except Exception:
        return False
    return listening.accepts == 1


def _public_only_reason() -> Optional[str]:
    if os.environ.get(PUBLIC_ONLY_VARIABLE, "") not in ("", "0"):
        return f"{PUBLIC_ONLY_VARIABLE} is set"
    missing = missing_names()
    if missing:
        return "this Twisted has no " + ", ".join(missing)
    return None


#: Why the public path is taken, or C{None} when the private names are used.
PUBLIC_ONLY_REASON = _public_only_reason()

#: Whether writes may go straight to a TCP socket, and the site's channel
#: hold what its responses write during a turn.
DIRECT = PUBLIC_ONLY_REASON is None


def direct_transport(transport: Any) -> bool:
    """
    Whether L{send} writes to C{transport}'s socket itself: a TCP (or UNIX
    stream) connection of Twisted's POSIX reactors, with the private names
    present.
    """
    return DIRECT and isinstance(transport, tcp.Connection)


def send(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a transport: straight to its socket when it is a
    L{direct_transport} that holds nothing, and what the socket did not
    take into the transport's buffer, which then sends it as it would have.

    A Twisted transport buffers every write and sends it when the reactor
    next finds the socket writable, registering the socket with epoll and
    removing it again around each write. The gateway's sockets are nearly
    always writable and its writes small (a JSON body, a token's event, a
    call to the worker), so that machinery cost more than the C{send}
    itself, and a trip through the reactor's loop for each response.
    """
    if not (DIRECT and isinstance(transport, tcp.Connection)) or not transport_empty(transport):
        transport.write(data)
        return
    try:
        sent = transport.getHandle().send(data)
    except OSError:
        # Busy, or broken: the transport meets it and handles it its way.
        sent = 0
    if sent < len(data):
        _leave(transport, data, sent)


def send_parts(transport: Any, parts: list[bytes]) -> None:
    """
    Like L{send}, for a few big parts (an image and its framing), gathered
    by the kernel rather than joined here first: only what the socket does
    not take at once is copied.
    """
    if not (DIRECT and isinstance(transport, tcp.Connection)) or not transport_empty(transport):
        transport.writeSequence(parts)
        return
    try:
        sent = transport.getHandle().sendmsg(parts)
    except OSError:
        sent = 0
    for i, part in enumerate(parts):
        if sent < len(part):
            _leave(transport, b"".join([memoryview(part)[sent:], *parts[i + 1 :]]), 0)
            return
        sent -= len(part)


def _leave(transport: Any, data: bytes, offset: int) -> None:
    """
    Hand what the socket did not take to the transport, whose buffer is
    empty: C{data} from C{offset} becomes that buffer, without a copy, and
    the transport sends it when it can and pauses the producer if it must.
    """
    transport.dataBuffer = data
    transport.offset = offset
    transport.startWriting()
    transport._maybePauseProducer()


def transport_empty(transport: Any) -> bool:
    """
    Whether C{transport} is open and holds nothing, so that its socket may
    be written to directly.
    """
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport_holds(transport)
    )


def transport_holds(transport: Any) -> bool:
    """
    Whether C{transport} holds bytes it has not sent yet.
    """
    return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)


def _table(headers: Any) -> Mapping[bytes, Sequence[bytes]]:
    return headers._rawHeaders  # type: ignore[no-any-return]


def _table_copy(headers: Any) -> Mapping[bytes, Sequence[bytes]]:
    return dict(headers.getAllRawHeaders())


def _set_in_table(headers: Any, name: bytes, value: bytes) -> None:
    headers._rawHeaders[name] = [value]


def _set_through_twisted(headers: Any, name: bytes, value: bytes) -> None:
    headers.setRawHeaders(name, [value])


#: C{header_table(headers)}: the values of C{headers} (a L{Headers}) by
#: canonical name (C{b"X-Request-Id"}), to be read only, as lists (empty
#: or missing when the header is not there): Twisted's own table when
#: L{DIRECT}, a copy from C{getAllRawHeaders} (whose names are canonical)
#: otherwise.
header_table = _table if DIRECT else _table_copy

#: C{set_header(headers, name, value)}: set header C{name}, given in its
#: canonical form (C{b"Content-Length"}), to the one C{value}, which the
#: caller knows holds no line break: straight into Twisted's table when
#: L{DIRECT}, through C{setRawHeaders} otherwise.
set_header = _set_in_table if DIRECT else _set_through_twisted


class FlushingHTTPChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} that calls C{self.flush_now()} before each write
    Twisted's channel makes to its transport itself, so that what a
    subclass holds leaves first and bytes go out in the order written.
    Only used when L{DIRECT}.
    """

    def flush_now(self) -> None:
        """
        Send what is held.
        """

    def _send100Continue(self) -> None:
        self.flush_now()
        super()._send100Continue()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.flush_now()
        self.bad_request()

    def bad_request(self) -> None:
        """
        Answer a request Twisted's parser refused (a malformed line or
        header), and close: by default with Twisted's bare 400; a
        subclass answers as it likes.
        """
        super()._respondToBadRequestAndDisconnect()


#: The class the gateway's channels derive from: L{FlushingHTTPChannel}
#: when L{DIRECT}, Twisted's own L{http.HTTPChannel} on the public path
#: (where Twisted's malformed-request 400 stays bare).
CHANNEL_BASE: Any = FlushingHTTPChannel if DIRECT else http.HTTPChannel


def site_protocol(channel: http.HTTPChannel) -> Any:
    """
    The protocol of one connection of a site around C{channel}, as
    Twisted's own site builds it (the wrapper that can switch to HTTP/2
    after TLS negotiation). Only used when L{DIRECT}.
    """
    return http._GenericHTTPChannelProtocol(channel)


def name_tls(port: Any) -> None:
    """
    Have a TCP port that carries TLS say so in its log lines, as the ports
    of Twisted's C{listenSSL} do (C{Port._type}).
    """
    port._type = "TLS"
