"""
The HTTP/1.1 channel every connection of the gateway's site speaks,
hardened against hostile clients where Twisted's own channel is lenient:

 - a client must send a whole request head within C{request_head_timeout}
   seconds of its first byte, however it drips it (Twisted's idle timeout
   starts again on every byte, so one byte every few seconds kept a
   connection forever); then its body at C{min_body_rate} bytes a second
   or more, after C{body_rate_grace} seconds (Apache's mod_reqtimeout
   rule). Either is answered with a 408 and the connection closed;
 - a request line or a head over Twisted's limits (C{MAX_LENGTH},
   C{totalHeadersSize}, C{maxHeaders}) is answered with a 414 or a 431
   rather than a silent close or a bare 400;
 - the body's framing must be unambiguous (RFC 9112 section 6): one
   C{Transfer-Encoding} header saying C{chunked} and no C{Content-Length}
   with it, or no C{Transfer-Encoding} at all. Anything else (two
   C{Transfer-Encoding} headers, C{identity}, both headers) is how requests
   are smuggled past a proxy that reads the framing another way, and is
   answered with a 400 and the connection closed before any byte after it
   is read.

A head that comes whole in the first bytes of a read, none of it in an
earlier read, and is plain (no framing header but one Content-Length,
well within the limits) is checked at once with a few byte operations,
and its lines go to Twisted unchecked (the channel's C{lineReceived}
hands them on at once); any other is checked line by line.

Every answer is an OpenAI error object. Only Twisted's public hooks of
L{http.HTTPChannel} are overridden here (C{dataReceived},
C{lineReceived}, C{lineLengthExceeded}, C{allHeadersReceived},
C{allContentReceived}, C{requestDone}, C{getHost}; the idle timeout's in
L{hfendpoint.web._idle}); the malformed lines Twisted
refuses itself get an OpenAI-shaped 400 too where its private hook is
available (L{hfendpoint._twisted_private.FlushingHTTPChannel.bad_request}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from hfendpoint._twisted_private import CHANNEL_BASE
from hfendpoint.errors import OpenAIError
from hfendpoint.web._connection_state import (
    DEFAULT_BODY_RATE_GRACE,
    DEFAULT_MIN_BODY_RATE,
    DEFAULT_REQUEST_HEAD_TIMEOUT,
    ConnectionInfo,
    ReadState,
)
from hfendpoint.web._idle import IdleTimeout, stopped

__all__ = [
    "DEFAULT_BODY_RATE_GRACE",
    "DEFAULT_MIN_BODY_RATE",
    "DEFAULT_REQUEST_HEAD_TIMEOUT",
    "HardenedChannel",
    "refusal",
]

_log = Logger(namespace="hfendpoint")

_PHRASES = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def refusal(status: int, message: str, code: str, head_only: bool = False) -> bytes:
    """
    The whole response, closing the connection, that refuses a request
    before any resource saw it; to a C{HEAD} request, without its body.
    """
    body = OpenAIError(status, message, "invalid_request_error", None, code).to_json()
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, _PHRASES[status], len(body), b"" if head_only else body)
    )


class HardenedChannel(IdleTimeout, CHANNEL_BASE):  # type: ignore[misc]
    """
    An L{http.HTTPChannel} with deadlines for a request's head and body,
    answers for what is too long, and strict body framing.

    Its options are read from its site when it connects
    (C{request_head_timeout}, C{min_body_rate}, C{body_rate_grace}; the
    C{DEFAULT_} ones for a site without them); C{None} or C{0} turns one
    off.

    Its state is kept in objects of its own (L{ReadState},
    L{ConnectionInfo}, L{IdleState}), not in the instance's dictionary:
    Twisted's channel keeps some twenty attributes there, and CPython
    keeps an instance's attributes in a compact form, read and written
    faster, only up to thirty names a class. Past it, Twisted's parser
    paid about a microsecond more a request for its own attributes; and
    replacing a method on the instance (C{lineReceived}, as Twisted's own
    channel does) costs more still on a compact one (C{bench/channel.py}).
    """

    def __init__(self) -> None:
        self._read = ReadState()
        super().__init__()

    def connectionMade(self) -> None:
        self._info = ConnectionInfo(self)
        self._idle.clock = self._info.clock
        super().connectionMade()

    def getHost(self) -> Any:
        # Asked for by every request; the connection's address does not
        # change.
        info = self._info
        if info.host is None:
            info.host = super().getHost()
        return info.host

    # The head

    def dataReceived(self, data: bytes) -> None:
        state = self._read
        if state.refused:
            return
        if state.waiting and (data[:1] not in b"\r\n" or data.strip(b"\r\n")):
            # The first byte of a request head (a stray CRLF between
            # requests is not one).
            state.waiting = False
            state.head_start = self._info.clock.seconds()
            if state.fresh and self._plain_head(data):
                # Its lines go straight to Twisted's channel, until the
                # head is over (allHeadersReceived).
                state.plain = True
        elif state.body_start is not None:
            state.body_received += len(data)
        # Twisted's channel calls this again from within itself, with the
        # bytes it held back while a request was served.
        reading, state.reading = state.reading, True
        try:
            super().dataReceived(data)
        finally:
            state.reading = reading
        if state.head_start is not None or state.body_start is not None:
            self._arm()

    def _plain_head(self, data: bytes) -> bool:
        """
        Whether C{data} holds a whole request head that the line checks
        would pass: within the limits with room to spare, no
        C{Transfer-Encoding} and at most one C{Content-Length} (each
        spelled anywhere in it counts). Nearly every client's head is
        whole in its first read and plain: checked here at once, in a few
        byte operations, rather than line by line. Any other head, and
        every head after the first of a read (pipelined), is checked line
        by line, and so is a head that may have begun in an earlier read
        (see L{ReadState.fresh}).
        """
        end = data.find(b"\r\n\r\n")
        if not 0 < end < self._info.plain_limit or data[:1] in b"\r\n":
            return False
        head = data[:end]
        # Lines have two bytes at least: a shorter head has few enough.
        if end >= 2 * self.maxHeaders and head.count(b"\n") >= self.maxHeaders:
            return False
        lowered = head.lower()
        if b"transfer-encoding" in lowered or lowered.count(b"content-length") > 1:
            return False
        self._read.request_start = head
        return True

    def _arm(self) -> None:
        """
        Set the deadline of a head or a body that the bytes read so far
        did not complete. Most requests come whole in one read: they never
        cost a timer, which the reactor would keep until it is cancelled.
        """
        state, info = self._read, self._info
        if state.refused or self.transport.disconnecting:
            return
        if state.head_start is not None and state.head_call is None and info.head_timeout:
            delay = state.head_start + info.head_timeout - info.clock.seconds()
            state.head_call = info.clock.callLater(max(0.0, delay), self._head_too_slow)
        if state.body_start is not None and state.body_call is None:
            delay = state.body_start + info.grace - info.clock.seconds()
            state.body_call = info.clock.callLater(max(0.0, delay), self._check_body_rate)

    def lineReceived(self, line: bytes) -> None:
        """
        Check one line of a head that L{_plain_head} did not pass whole:
        its size, the count of headers, and the framing headers.
        """
        state = self._read
        if state.plain:
            CHANNEL_BASE.lineReceived(self, line)
            return
        if state.refused:
            return
        before = state.head_size
        if not before:
            # The request line (stray empty lines before it count nothing).
            state.request_start = line
            if line and state.waiting:
                # A head Twisted's parser read on to by itself, after a
                # request answered within the read that brought it.
                state.waiting = False
                state.head_start = self._info.clock.seconds()
        elif line and line[:1] not in b" \t" and not self._header_allowed(line):
            return
        # The same count as Twisted's, checked first, so that it answers.
        state.head_size = before + len(line)
        if state.head_size > self.totalHeadersSize:
            self._too_long(not before)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_long(not self._read.head_size)

    def _too_long(self, first: bool) -> None:
        limit = self.totalHeadersSize
        if first:
            self.refuse(414, f"The request line is longer than {limit} bytes.", "request_line_too_long")
        else:
            self.refuse(431, f"The request's headers are longer than {limit} bytes.", "request_headers_too_large")

    def _header_allowed(self, line: bytes) -> bool:
        """
        Count the header starting on C{line} and check the framing it
        says; refuse the request if it may not go on.
        """
        state = self._read
        state.headers += 1
        if state.headers > self.maxHeaders:
            self.refuse(431, f"The request has more than {self.maxHeaders} headers.", "request_headers_too_large")
            return False
        if line[:1] not in b"tTcC":
            # Neither Transfer-Encoding nor Content-Length: most headers.
            return True
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"transfer-encoding":
            # Twisted takes "identity" as no coding at all and a second
            # header as nothing: refused, since a proxy in front may read
            # the framing the other way.
            if state.te_seen or state.cl_seen or value.strip(b" \t").lower() != b"chunked":
                return self._ambiguous()
            state.te_seen = True
        elif name == b"content-length":
            if state.te_seen:
                return self._ambiguous()
            state.cl_seen = True
        return True

    def _ambiguous(self) -> bool:
        self.refuse(
            400,
            "The request's body framing is ambiguous: send one Transfer-Encoding: chunked, "
            "or one Content-Length, not both nor anything else.",
            "invalid_transfer_encoding",
        )
        return False

    def allHeadersReceived(self) -> None:
        state = self._read
        # The next head is checked line by line, unless it starts a read
        # and passes whole.
        state.plain = False
        self._cancel_head()
        state.head_size = state.headers = 0
        state.te_seen = state.cl_seen = False
        super().allHeadersReceived()
        if self.length != 0 and self._info.min_rate and not self.transport.disconnecting and not state.refused:
            state.body_start = self._info.clock.seconds()
            state.body_received = 0

    def _head_too_slow(self) -> None:
        self._read.head_call = None
        _log.info("Closing a client that sent a request head too slowly: {peer}", peer=str(self.transport.getPeer()))
        self.refuse(
            408,
            f"The request's head did not arrive within {self._info.head_timeout:g} seconds.",
            "request_timeout",
        )

    def _cancel_head(self) -> None:
        state = self._read
        state.head_start = None
        state.head_call = stopped(state.head_call)

    # The body

    def _check_body_rate(self) -> None:
        """
        Let the body go on while it has come at C{min_body_rate} bytes a
        second since C{body_rate_grace} seconds after the head, checked
        again only when it may have fallen behind.
        """
        state, info = self._read, self._info
        deadline = state.body_start + info.grace + state.body_received / info.min_rate
        now = info.clock.seconds()
        if now < deadline:
            state.body_call = info.clock.callLater(deadline - now, self._check_body_rate)
            return
        state.body_call = None
        _log.info("Closing a client that sent a request body too slowly: {peer}", peer=str(self.transport.getPeer()))
        self.refuse(
            408,
            f"The request's body arrived slower than {info.min_rate} bytes a second.",
            "request_timeout",
        )

    def _cancel_body(self) -> None:
        state = self._read
        state.body_start = None
        state.body_call = stopped(state.body_call)

    def allContentReceived(self) -> None:
        self._cancel_body()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        state = self._read
        # What arrives from now on starts the next head (Twisted hands the
        # bytes it held back to dataReceived), whose method is not known yet.
        state.waiting = True
        # Answered outside a read, Twisted hands back every byte after the
        # request at once: the next head starts there. Answered within
        # one, the parser reads on past it by itself.
        state.fresh = not state.reading
        state.request_start = b""
        super().requestDone(request)

    # Answers

    def bad_request(self) -> None:
        self.refuse(400, "The request is malformed HTTP.", "invalid_request")

    def refuse(self, status: int, message: str, code: str) -> None:
        """
        Answer C{status} with an OpenAI error, unless the connection is
        closing already, and close it; nothing it sends after is read.
        """
        state = self._read
        if state.refused:
            return
        state.refused = True
        self._cancel_head()
        self._cancel_body()
        if not self.transport.disconnecting:
            self.write(refusal(status, message, code, head_only=state.request_start.startswith(b"HEAD ")))
        self.loseConnection()

    def connectionLost(self, reason: Optional[Any] = None) -> None:
        self._cancel_head()
        self._cancel_body()
        super().connectionLost(reason)
