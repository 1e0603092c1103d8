"""
The gateway's L{Site}: requests that enforce the body limit while the body
arrives, on the gateway's hardened channel, with its access log.
"""

from __future__ import annotations

from http import HTTPStatus
from inspect import signature
from io import BytesIO
import tempfile
import time
from typing import Any, Callable, Optional, TextIO, Union
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToLogString, datetimeToString
from twisted.web.resource import getChildForRequest
from twisted.web.server import Request, Site

from hfendpoint._twisted_private import DIRECT, set_header, site_protocol
from hfendpoint.errors import OpenAIError
from hfendpoint.web._accesslog import AccessLog, combined_line, is_stream
from hfendpoint.web._channel import GatewayChannel
from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.web._hardened import (
    DEFAULT_BODY_RATE_GRACE,
    DEFAULT_MIN_BODY_RATE,
    DEFAULT_REQUEST_HEAD_TIMEOUT,
    HardenedChannel,
)

#: Whether this Twisted lets a site leave form bodies unparsed; older
#: ones always parsed them.
_FORM_SWITCH = "parsePOSTFormSubmission" in signature(Site.__init__).parameters

DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
#: Bodies at least this big, or of unknown length, are held in a
#: temporary file rather than in memory while they arrive (Twisted's
#: threshold).
IN_MEMORY_BODY = 100_000

#: What the C{Server} header says: the software, not its version, which
#: would only help an attacker pick an exploit.
SERVER = b"hfendpoint"


_log = Logger()


def _reason(code: int) -> Optional[bytes]:
    """
    The reason phrase of C{code} when Twisted's table has none (it says
    C{Unknown Status} for a 429), from the standard library's.
    """
    if code in RESPONSES:
        return None
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return None


class EverySecond:
    """
    A time formatted by C{format} once a second: every request of the same
    second shares the text.
    """

    __slots__ = ("_format", "_second", "_text")

    def __init__(self, format: Callable[[int], Any]) -> None:
        self._format = format
        self._second: Optional[int] = None
        self._text: Any = None

    def at(self, now: float) -> Any:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = self._format(second)
        return self._text


class LimitedRequest(Request):
    """
    A request that refuses a body over its site's C{max_body_size} as soon
    as it is announced (C{Content-Length}) or as soon as it grows past it
    (chunked), with a 413, instead of buffering it whole.
    """

    # What the gateway adds to Twisted's request is kept in slots, not in
    # the instance's dictionary, which holds some twenty-five attributes of
    # Twisted's already: CPython keeps a dictionary of up to thirty names
    # per class in its compact shared form, and the request id's two more
    # (on top of the rest of the hot path's) cost one to three
    # microseconds of a small request, measured side by side.
    __slots__ = ("_rejected", "_received", "request_id", "started", "_when_done")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rejected = False
        self._received = 0
        #: Its id (L{hfendpoint.web._request_id.RequestIdResource}).
        self.request_id: Optional[str] = None
        #: When its resource was first asked to render it (the same).
        self.started: Optional[float] = None
        self._when_done: Optional[list[Callable[[Optional[Failure]], object]]] = None
        super().__init__(*args, **kwargs)

    def when_done(self, call: Callable[[Optional[Failure]], object]) -> None:
        """
        Call C{call} once: with C{None} when the request is finished, or
        with the reason when its connection is lost first. What
        C{notifyFinish} tells, without its Deferred: a Deferred made,
        called back and run through cost a small request more than any
        other part of the gateway's own work (C{bench/instructions.py}),
        and every request has two or three parts that want to know.
        """
        if self.finished:
            call(None)
        elif self._when_done is None:
            self._when_done = [call]
        else:
            self._when_done.append(call)

    def finish(self) -> None:
        super().finish()
        self._done(None)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._done(reason)

    def _done(self, reason: Optional[Failure]) -> None:
        calls = self._when_done
        if calls is not None:
            self._when_done = None
            for call in calls:
                # Each is told, whatever the one before did; and a failure
                # never reaches the channel that is finishing or losing
                # the request (a Deferred's callback would have kept it).
                try:
                    call(reason)
                except Exception:
                    _log.failure("Could not tell a part of the gateway that a request ended")

    def setResponseCode(self, code: int, message: Optional[bytes] = None) -> None:
        if message is None:
            message = _reason(code)
        super().setResponseCode(code, message)

    def process(self) -> None:
        """
        Twisted's C{Request.process}, but for two headers: C{Server} says
        only L{SERVER}, and C{Date} is formatted once a second by the site
        rather than once a request. Its only other difference: the site's
        resources do not encode their answers (no
        L{twisted.web.server.GzipEncoderFactory} wrapper), so none is
        looked for; a request for C{*} is answered as Twisted answers it.
        """
        self.site = site = self.channel.site
        headers = self.responseHeaders
        set_header(headers, b"Server", SERVER)
        set_header(headers, b"Date", site.http_date())
        if self.path == b"*":
            self._answer_star()
            return
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def _answer_star(self) -> None:
        """
        Twisted's answer to a request for C{*}: C{OPTIONS *} asks what the
        server can do, and is told nothing more than a 200; any other
        method may not ask it.
        """
        if self.method == b"OPTIONS":
            self.setResponseCode(200)
        else:
            self.setResponseCode(405)
            self.setHeader(b"allow", b"OPTIONS")
        self.setHeader(b"content-length", b"0")
        self.finish()

    def gotLength(self, length: Optional[int]) -> None:
        limit = self.channel.site.max_body_size
        if length is not None and length > limit:
            self._too_large(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        self._received += len(data)
        limit = self.channel.site.max_body_size
        if self._received > limit:
            self._too_large(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._rejected:
            return
        super().requestReceived(command, path, version)

    def _too_large(self, limit: int) -> None:
        self._rejected = True
        body = OpenAIError(
            413,
            f"The request body is larger than the limit of {limit} bytes.",
            "invalid_request_error",
            None,
            "request_too_large",
        ).to_json()
        channel = self.channel
        channel.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        channel.loseConnection()


def when_done(request: Any, call: Callable[[Optional[Failure]], object]) -> None:
    """
    Call C{call} with C{None} when C{request} is finished, or with the
    reason when its connection is lost first: by the gateway's own
    L{LimitedRequest.when_done}, or through C{notifyFinish} for any other
    request (Twisted's own, the tests' C{DummyRequest}).
    """
    if isinstance(request, LimitedRequest):
        request.when_done(call)
    else:
        request.notifyFinish().addBoth(call)


class GatewaySite(Site):
    """
    A L{Site} whose requests enforce C{max_body_size}, and that leaves form
    bodies to the routes that take them, so that a malformed one is an
    OpenAI error rather than a bare 400.

    @param access_log: C{True} for Twisted's access log (a line through the
        global log for each request, or to C{logPath}), C{False} for none,
        or a text stream to write the lines to directly, once per reactor
        turn (L{AccessLog}).
    @param flusher: the L{TurnFlusher} that the site's channels hold their
        writes on, shared with the worker clients and the event streams;
        without one, or without the private names of Twisted that the
        direct send needs, the site's channel writes through the transport
        as Twisted's does (L{hfendpoint.web._hardened.HardenedChannel}
        alone).
    @param logFormatter: as for L{Site}; also formats the lines written to
        an C{access_log} stream (by default, L{combined_line}: the same
        lines as Twisted's C{combinedLogFormatter}).
    @param request_head_timeout: seconds a client has, from the first byte
        of a request, to send its whole head, whatever it sends meanwhile;
        C{None} for no limit (L{HardenedChannel}).
    @param min_body_rate: the slowest a body may arrive, in bytes a second
        on average, once C{body_rate_grace} seconds have passed; C{0} for
        no limit.
    """

    requestFactory = LimitedRequest

    def protocol(self) -> Any:
        if not DIRECT:
            # Without Twisted's private wrapper, the channel itself: HTTP/1.1
            # only, which is all a site without the h2 package speaks anyway.
            return HardenedChannel()
        if self.flusher is None:
            return site_protocol(HardenedChannel())
        return site_protocol(GatewayChannel(self.flusher))

    def __init__(
        self,
        resource: Any,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        access_log: Union[bool, TextIO] = True,
        flusher: Optional[TurnFlusher] = None,
        logFormatter: Optional[Callable[[str, Any], str]] = None,
        request_head_timeout: Optional[float] = DEFAULT_REQUEST_HEAD_TIMEOUT,
        min_body_rate: int = DEFAULT_MIN_BODY_RATE,
        body_rate_grace: float = DEFAULT_BODY_RATE_GRACE,
        **kwargs: Any,
    ) -> None:
        if _FORM_SWITCH:
            kwargs["parsePOSTFormSubmission"] = False
        super().__init__(resource, logFormatter=logFormatter, **kwargs)
        self.max_body_size = max_body_size
        self.request_head_timeout = request_head_timeout
        self.min_body_rate = min_body_rate
        self.body_rate_grace = body_rate_grace
        self.access_log = access_log
        self.flusher = flusher
        #: The L{HTTPMetrics} every finished request is counted in, if any.
        self.metrics: Any = None
        self._line = logFormatter or combined_line
        self._stream: Optional[AccessLog] = None
        self._log_time = EverySecond(datetimeToLogString)
        self._date = EverySecond(datetimeToString)

    def getResourceFor(self, request: Any) -> Any:
        """
        Twisted's, without its walk when the root is a leaf, as the
        gateway's is (its own routes take every path below it), and with
        the request's C{sitepath} copied by a slice rather than
        C{copy.copy}.
        """
        request.site = self
        request.sitepath = request.prepath[:]
        root = self.resource
        if root.isLeaf:
            return root
        return getChildForRequest(root, request)

    def getContentFile(self, length: Optional[int]) -> Any:
        """
        Where a request's body is kept while it arrives: Twisted's own
        choice, made here because Twisted's request looks for this method
        on its site and otherwise pays for an AttributeError on every
        request.
        """
        if length is not None and length < IN_MEMORY_BODY:
            return BytesIO()
        return tempfile.TemporaryFile()

    def http_date(self) -> bytes:
        """
        The C{Date} header of an answer given now, formatted once a second.
        """
        return self._date.at(self.reactor.seconds())  # type: ignore[no-any-return]

    def startFactory(self) -> None:
        super().startFactory()
        if is_stream(self.access_log):
            self._stream = AccessLog(self.access_log, self.reactor)

    def stopFactory(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().stopFactory()

    def log(self, request: Any) -> None:
        if self.metrics is not None:
            self.metrics.finished(request, time.time())
        if not self.access_log:
            return
        stream = self._stream
        if stream is None:
            super().log(request)
            return
        # The date of a line, to the second, as Twisted's access log has it.
        stream.add(self._line, self._log_time.at(self.reactor.seconds()), request)
