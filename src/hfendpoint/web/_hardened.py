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
and its lines go to Twisted unchecked (the channel's C{lineReceived} is
Twisted's for that head, as Twisted's own channel replaces its
C{lineReceived} on an instance); any other is checked line by line.

Every answer is an OpenAI error object. Only Twisted's public hooks of
L{http.HTTPChannel} are overridden here (C{dataReceived},
C{lineReceived}, C{lineLengthExceeded}, C{allHeadersReceived},
C{allContentReceived}, C{requestDone}; the idle timeout's in
L{hfendpoint.web._idle}); the malformed lines Twisted
refuses itself get an OpenAI-shaped 400 too where its private hook is
available (L{hfendpoint._twisted_private.FlushingHTTPChannel.bad_request}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from hfendpoint._twisted_private import CHANNEL_BASE
from hfendpoint.errors import OpenAIError
from hfendpoint.web._idle import IdleTimeout, stopped

_log = Logger(namespace="hfendpoint")

#: Defaults of the site's options: nginx cuts a head off after 60 s;
#: Apache's mod_reqtimeout wants 500 bytes a second of a body after 20 s.
DEFAULT_REQUEST_HEAD_TIMEOUT = 60.0
DEFAULT_MIN_BODY_RATE = 500
DEFAULT_BODY_RATE_GRACE = 20.0

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
    defaults above for a site without them); C{None} or C{0} turns one off.
    """

    _refused = False
    #: Whether the channel waits for a request: its next byte starts a head.
    _waiting = True
    #: Whether Twisted's line parser holds no byte of the next head: not so
    #: after a request answered in the middle of a read, whose rest the
    #: parser went on reading by itself.
    _fresh = True
    #: Whether a read is being parsed.
    _reading = False
    _head_call: Any = None
    #: The start of the request being read (its line at least), once it
    #: came.
    _request_start = b""
    _head_size = 0
    _headers = 0
    _te_seen = False
    _cl_seen = False
    #: When the head being read began, until it is whole.
    _head_start: Optional[float] = None
    _body_call: Any = None
    #: When the body being read began, until it is whole (and only when
    #: its rate is checked).
    _body_start: Optional[float] = None
    _body_received = 0

    def connectionMade(self) -> None:
        site = getattr(self, "site", None)
        self._clock = getattr(site, "reactor", None)
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        self._head_timeout = getattr(site, "request_head_timeout", DEFAULT_REQUEST_HEAD_TIMEOUT)
        self._min_rate = getattr(site, "min_body_rate", DEFAULT_MIN_BODY_RATE)
        self._grace = getattr(site, "body_rate_grace", DEFAULT_BODY_RATE_GRACE)
        self._unchecked_line = super().lineReceived
        self._plain_limit = min(self.totalHeadersSize, self.MAX_LENGTH)
        super().connectionMade()

    # The head

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._waiting and (data[:1] not in b"\r\n" or data.strip(b"\r\n")):
            # The first byte of a request head (a stray CRLF between
            # requests is not one).
            self._waiting = False
            self._head_start = self._clock.seconds()
            if self._fresh and self._plain_head(data):
                # Its lines go straight to Twisted's channel, until the
                # head is over (allHeadersReceived).
                self.lineReceived = self._unchecked_line
        elif self._body_start is not None:
            self._body_received += len(data)
        # Twisted's channel calls this again from within itself, with the
        # bytes it held back while a request was served.
        reading, self._reading = self._reading, True
        try:
            super().dataReceived(data)
        finally:
            self._reading = reading
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
        (see L{_fresh}).
        """
        end = data.find(b"\r\n\r\n")
        if not 0 < end < self._plain_limit or data[:1] in b"\r\n":
            return False
        head = data[:end]
        # Lines have two bytes at least: a shorter head has few enough.
        if end >= 2 * self.maxHeaders and head.count(b"\n") >= self.maxHeaders:
            return False
        lowered = head.lower()
        if b"transfer-encoding" in lowered or lowered.count(b"content-length") > 1:
            return False
        self._request_start = head
        return True

    def _arm(self) -> None:
        """
        Set the deadline of a head or a body that the bytes read so far
        did not complete. Most requests come whole in one read: they never
        cost a timer, which the reactor would keep until it is cancelled.
        """
        if self._refused or self.transport.disconnecting:
            return
        if self._head_start is not None and self._head_call is None and self._head_timeout:
            delay = self._head_start + self._head_timeout - self._clock.seconds()
            self._head_call = self._clock.callLater(max(0.0, delay), self._head_too_slow)
        if self._body_start is not None and self._body_call is None:
            delay = self._body_start + self._grace - self._clock.seconds()
            self._body_call = self._clock.callLater(max(0.0, delay), self._check_body_rate)

    def lineReceived(self, line: bytes) -> None:
        """
        Check one line of a head that L{_plain_head} did not pass whole:
        its size, the count of headers, and the framing headers.
        """
        if self._refused:
            return
        before = self._head_size
        if not before:
            # The request line (stray empty lines before it count nothing).
            self._request_start = line
            if line and self._waiting:
                # A head Twisted's parser read on to by itself, after a
                # request answered within the read that brought it.
                self._waiting = False
                self._head_start = self._clock.seconds()
        elif line and line[:1] not in b" \t" and not self._header_allowed(line):
            return
        # The same count as Twisted's, checked first, so that it answers.
        self._head_size = before + len(line)
        if self._head_size > self.totalHeadersSize:
            self._too_long(not before)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_long(not self._head_size)

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
        self._headers += 1
        if self._headers > self.maxHeaders:
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
            if self._te_seen or self._cl_seen or value.strip(b" \t").lower() != b"chunked":
                return self._ambiguous()
            self._te_seen = True
        elif name == b"content-length":
            if self._te_seen:
                return self._ambiguous()
            self._cl_seen = True
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
        if "lineReceived" in self.__dict__:
            # The next head is checked line by line, unless it starts a
            # read and passes whole.
            del self.lineReceived
        self._cancel_head()
        self._head_size = self._headers = 0
        self._te_seen = self._cl_seen = False
        super().allHeadersReceived()
        if self.length != 0 and self._min_rate and not self.transport.disconnecting and not self._refused:
            self._body_start = self._clock.seconds()
            self._body_received = 0

    def _head_too_slow(self) -> None:
        self._head_call = None
        _log.info("Closing a client that sent a request head too slowly: {peer}", peer=str(self.transport.getPeer()))
        self.refuse(
            408,
            f"The request's head did not arrive within {self._head_timeout:g} seconds.",
            "request_timeout",
        )

    def _cancel_head(self) -> None:
        self._head_start = None
        self._head_call = stopped(self._head_call)

    # The body

    def _check_body_rate(self) -> None:
        """
        Let the body go on while it has come at C{min_body_rate} bytes a
        second since C{body_rate_grace} seconds after the head, checked
        again only when it may have fallen behind.
        """
        deadline = self._body_start + self._grace + self._body_received / self._min_rate
        now = self._clock.seconds()
        if now < deadline:
            self._body_call = self._clock.callLater(deadline - now, self._check_body_rate)
            return
        self._body_call = None
        _log.info("Closing a client that sent a request body too slowly: {peer}", peer=str(self.transport.getPeer()))
        self.refuse(
            408,
            f"The request's body arrived slower than {self._min_rate} bytes a second.",
            "request_timeout",
        )

    def _cancel_body(self) -> None:
        self._body_start = None
        self._body_call = stopped(self._body_call)

    def allContentReceived(self) -> None:
        self._cancel_body()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # What arrives from now on starts the next head (Twisted hands the
        # bytes it held back to dataReceived), whose method is not known yet.
        self._waiting = True
        # Answered outside a read, Twisted hands back every byte after the
        # request at once: the next head starts there. Answered within
        # one, the parser reads on past it by itself.
        self._fresh = not self._reading
        self._request_start = b""
        super().requestDone(request)

    # Answers

    def bad_request(self) -> None:
        self.refuse(400, "The request is malformed HTTP.", "invalid_request")

    def refuse(self, status: int, message: str, code: str) -> None:
        """
        Answer C{status} with an OpenAI error, unless the connection is
        closing already, and close it; nothing it sends after is read.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_head()
        self._cancel_body()
        if not self.transport.disconnecting:
            self.write(refusal(status, message, code, head_only=self._request_start.startswith(b"HEAD ")))
        self.loseConnection()

    def connectionLost(self, reason: Optional[Any] = None) -> None:
        self._cancel_head()
        self._cancel_body()
        super().connectionLost(reason)
