"""
The gateway's L{Site}: requests that enforce the body limit while the body
arrives, on the gateway's channel, with its access log.
"""

from __future__ import annotations

from inspect import signature
from typing import Any, Callable, Optional, TextIO, Union

from twisted.web.http import datetimeToLogString
from twisted.web.server import Request, Site

from hfendpoint._twisted_private import DIRECT, site_protocol
from hfendpoint.errors import OpenAIError
from hfendpoint.web._accesslog import AccessLog, combined_line, is_stream
from hfendpoint.web._channel import GatewayChannel
from hfendpoint.web._coalescing import TurnFlusher

#: Whether this Twisted lets a site leave form bodies unparsed; older
#: ones always parsed them.
_FORM_SWITCH = "parsePOSTFormSubmission" in signature(Site.__init__).parameters

DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024


class LimitedRequest(Request):
    """
    A request that refuses a body over its site's C{max_body_size} as soon
    as it is announced (C{Content-Length}) or as soon as it grows past it
    (chunked), with a 413, instead of buffering it whole.
    """

    _rejected = False
    _received = 0

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
        gateway's channel needs, the site uses Twisted's own channel.
    @param logFormatter: as for L{Site}; also formats the lines written to
        an C{access_log} stream (by default, L{combined_line}: the same
        lines as Twisted's C{combinedLogFormatter}).
    """

    requestFactory = LimitedRequest

    def protocol(self) -> Any:
        if self.flusher is None or not DIRECT:
            return super().protocol()
        return site_protocol(GatewayChannel(self.flusher))

    def __init__(
        self,
        resource: Any,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        access_log: Union[bool, TextIO] = True,
        flusher: Optional[TurnFlusher] = None,
        logFormatter: Optional[Callable[[str, Any], str]] = None,
        **kwargs: Any,
    ) -> None:
        if _FORM_SWITCH:
            kwargs["parsePOSTFormSubmission"] = False
        super().__init__(resource, logFormatter=logFormatter, **kwargs)
        self.max_body_size = max_body_size
        self.access_log = access_log
        self.flusher = flusher
        self._line = logFormatter or combined_line
        self._stream: Optional[AccessLog] = None
        self._second: Optional[int] = None
        self._timestamp = ""

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
        if not self.access_log:
            return
        stream = self._stream
        if stream is None:
            super().log(request)
            return
        # The date of a line, to the second, as Twisted's access log has it.
        now = self.reactor.seconds()
        if int(now) != self._second:
            self._second = int(now)
            self._timestamp = datetimeToLogString(now)
        stream.add(self._line, self._timestamp, request)
