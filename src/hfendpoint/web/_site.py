"""
The gateway's L{Site}: requests that enforce the body limit while the body
arrives, on the gateway's channel, with its access log.
"""

from __future__ import annotations

from typing import Any, Optional, TextIO, Union

from twisted.web.http import combinedLogFormatter
from twisted.web.server import Request, Site

from hfendpoint.errors import OpenAIError
from hfendpoint.web._accesslog import AccessLog, combined_line, is_stream
from hfendpoint.web._channel import channel_protocol
from hfendpoint.web._coalescing import flusher_for

DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024


class LimitedRequest(Request):
    """
    A request that refuses a body over its site's C{max_body_size} as soon
    as it is announced (C{Content-Length}) or as soon as it grows past it
    (chunked), with a 413, instead of buffering it whole.
    """

    _rejected = False
    _received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Form bodies are parsed by the routes that take them, so that a
        # malformed one is an OpenAI error rather than a bare 400.
        self._parsePOSTFormSubmission = False

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
    A L{Site} whose requests enforce C{max_body_size}.

    @param access_log: C{True} for Twisted's access log (a line through the
        global log for each request), C{False} for none, or a text stream to
        write the lines to directly, once per reactor turn (L{AccessLog}).
    """

    requestFactory = LimitedRequest

    def protocol(self) -> Any:
        return channel_protocol(flusher_for(self.reactor))

    def __init__(
        self,
        resource: Any,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        access_log: Union[bool, TextIO] = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
        self.access_log = access_log

    def startFactory(self) -> None:
        super().startFactory()
        if is_stream(self.access_log):
            self._logFile = AccessLog(self.access_log, self.reactor)

    def log(self, request: Any) -> None:
        if not self.access_log:
            return
        log_file = self._logFile
        if isinstance(log_file, AccessLog):
            formatter = self._logFormatter
            if formatter is combinedLogFormatter:
                formatter = combined_line
            log_file.add(formatter, self._logDateTime, request)
        else:
            super().log(request)
