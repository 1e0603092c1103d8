"""
HTTP plumbing shared by every endpoint: a request that enforces the body
limit while the body arrives, JSON bodies in and out, and server-sent
events.
"""

from __future__ import annotations

import json
import json.encoder
from email import message_from_bytes
from typing import Any, Optional, TextIO, Union

import orjson
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.server import Request, Site
from zope.interface import implementer

from .accesslog import AccessLog, combined_line, is_stream
from .channel import channel_protocol
from .errors import OpenAIError, invalid_request
from .turns import flusher_for

DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024

_log = Logger()

#: A JSON string literal, quotes included, as L{dumps} writes it.
encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def dumps(value: Any) -> bytes:
    """
    Compact JSON in UTF-8, as the OpenAI API sends it, by orjson (five to
    fifteen times the json module's speed). Keys that are not strings (a
    worker's map may have them) are written as strings, as json does; a
    float that is not finite is written as null.
    """
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


UTF8_BOM = b"\xef\xbb\xbf"


def parse_json_body(request: Any) -> dict[str, Any]:
    """
    The request's body as a JSON object.

    @raise OpenAIError: a 400 saying what is wrong with it.
    """
    raw = request.content.read() if request.content is not None else b""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    try:
        # orjson: a third of the time of json on a batch of token ids, and
        # strict where json is lax (NaN, lone surrogates).
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely "
            "means you aren't using your HTTP library correctly. The OpenAI API "
            "expects a JSON payload, but what was sent was not valid JSON.)",
            code="invalid_json",
        )
    if not isinstance(body, dict):
        raise invalid_request(
            "The JSON body of your request must be an object.", code="invalid_json"
        )
    return body


def send_json(request: Any, value: Any, status: int = 200) -> bytes:
    """
    Set the status and headers for a JSON body and return the body for
    Klein to write.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    body = dumps(value)
    set_length(request, len(body))
    return body


def set_length(request: Any, size: int) -> None:
    """
    Send a whole body with its length rather than chunked: clients read it
    in one piece, and the framing costs nothing.
    """
    request.setHeader(b"content-length", b"%d" % size)


def write_parts(request: Any, parts: list[bytes]) -> None:
    """
    Write a big body in the parts it was made of rather than copy megabytes
    into one; the route then returns C{None}, as one that wrote its body.
    """
    set_length(request, sum(len(part) for part in parts))
    for part in parts:
        request.write(part)


def send_error(request: Any, error: OpenAIError) -> bytes:
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    for name, value in error.headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    body = error.to_json()
    set_length(request, len(body))
    return body


@implementer(IPushProducer)
class EventStream:
    """
    Server-sent events on one response, with flow control.

    Events are written at the end of the reactor's turn, all those of the
    turn in one write: a worker's replies arrive many per read, so a
    stream costs one write per read rather than one per token.

    Headers go out with the first event, so a failure before any event
    can still be answered with a proper JSON error and status.

    It is the response's push producer: while the client reads slowly
    (the transport paused us), events are held and then written together
    in one write, so a slow client costs one buffer and not a write per
    token, and never stalls the others. A client that falls more than
    C{max_buffer} bytes behind is disconnected, which cancels its request
    on the worker.

    @ivar started: whether anything was written.
    @ivar closed: whether the client went away (or was dropped).
    """

    def __init__(
        self, request: Any, max_buffer: int = 8 * 1024 * 1024, clock: Optional[IReactorTime] = None
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._flusher = flusher_for(clock)
        self._scheduled = False
        self._request = request
        self._max_buffer = max_buffer
        self._held: list[bytes] = []
        self._held_size = 0
        self._paused = False
        self.started = False
        self.closed = False
        request.notifyFinish().addErrback(self._gone)
        request.registerProducer(self, True)

    def _gone(self, failure: Any) -> None:
        self.closed = True

    def _start(self) -> None:
        self.started = True
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")

    def send(self, value: Any, event: Optional[str] = None) -> None:
        self.write_raw(
            (b"event: " + event.encode("ascii") + b"\n" if event else b"")
            + b"data: "
            + dumps(value)
            + b"\n\n"
        )

    def write_raw(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.started:
            self._start()
        self._held.append(data)
        self._held_size += len(data)
        if self._paused:
            if self._held_size > self._max_buffer:
                self._overflow()
        elif not self._scheduled:
            self._scheduled = True
            self._flusher.add(self)

    def flush_now(self) -> None:
        self._scheduled = False
        if not self._paused:
            self._flush()

    def done(self) -> None:
        """
        The end marker the official client stops on.
        """
        self.write_raw(b"data: [DONE]\n\n")

    def close(self) -> None:
        """
        Write what is held and stop being the response's producer; call it
        before the response finishes.
        """
        self._flush()
        if not self.closed:
            self._request.unregisterProducer()

    def _flush(self) -> None:
        if self._held and not self.closed:
            data = b"".join(self._held)
            self._held = []
            self._held_size = 0
            self._request.write(data)

    def _overflow(self) -> None:
        self.closed = True
        self._held = []
        self._held_size = 0
        _log.warn("Dropping a client that fell too far behind its event stream")
        self._request.channel.transport.abortConnection()

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.closed = True


class FormPart:
    """
    One field of a multipart form.
    """

    def __init__(self, name: str, data: bytes, filename: Optional[str], content_type: str) -> None:
        self.name = name
        self.data = data
        self.filename = filename
        self.content_type = content_type

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_request(f"Field '{self.name}' is not UTF-8 text.", param=self.name)


def parse_form(request: Any) -> dict[str, list[FormPart]]:
    """
    A C{multipart/form-data} body, by field name.

    @raise OpenAIError: a 400 if the body is not such a form.
    """
    content_type = request.getHeader(b"content-type") or b""
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise invalid_request(
            "This endpoint takes a multipart/form-data body.", code="invalid_content_type"
        )
    raw = request.content.read() if request.content is not None else b""
    message = message_from_bytes(
        b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise invalid_request("The multipart/form-data body could not be parsed.")
    form: dict[str, list[FormPart]] = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        data = part.get_payload(decode=True) or b""
        form.setdefault(name, []).append(
            FormPart(name, data, part.get_filename(), part.get_content_type())
        )
    return form


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
