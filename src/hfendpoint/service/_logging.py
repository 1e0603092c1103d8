"""
Structured logs: one JSON object per line, for the log collectors that
read them (C{--log-format json}), the access log included.

For C{twistd}, whose own C{--logger} chooses the observer, the same
observer is C{twistd --logger hfendpoint.service.json_log_observer}.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO

import orjson
from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

#: Event keys copied into the JSON object when an event carries them.
CONTEXT_KEYS = ("request_id", "method", "path", "status", "duration", "tokens", "client", "worker")


def _iso(seconds: float) -> str:
    millis = int(seconds * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each log event as one line of JSON: its time, level, namespace
    and formatted text, the request's context when it has one, and the
    traceback of a failure.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        record = {
            "time": _iso(event.get("log_time") or time.time()),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "event": event.get("log_event") or formatEvent(event),
        }
        for key in CONTEXT_KEYS:
            if key in event:
                record[key] = event[key]
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._stream.write(_dumps(record) + "\n")
        self._stream.flush()


def _dumps(record: dict) -> str:
    return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


def json_log_observer(stream: Optional[TextIO] = None) -> JSONLinesObserver:
    """
    The observer for C{twistd --logger}: JSON lines on stderr, or on
    C{stream}.
    """
    return JSONLinesObserver(stream or sys.stderr)


def json_access_line(timestamp: str, request: Any) -> str:
    """
    An access log line as JSON, for L{twisted.web.http.HTTPFactory}'s
    public C{logFormatter}: what the Combined Log Format says, and the
    request id and duration it cannot.
    """
    address = request.getClientAddress()
    started = getattr(request, "started", None)
    record: dict[str, Any] = {
        "time": _iso(time.time()),
        "level": "info",
        "namespace": "hfendpoint.access",
        "event": "access",
        "request_id": getattr(request, "request_id", None),
        "client": getattr(address, "host", None),
        "method": request.method.decode("latin-1"),
        "path": request.uri.decode("latin-1"),
        "protocol": request.clientproto.decode("latin-1"),
        "status": request.code,
        "bytes": request.sentLength,
        "user_agent": (request.getHeader(b"user-agent") or b"").decode("latin-1") or None,
    }
    if started is not None:
        record["duration"] = round(time.time() - started, 6)
    tokens = getattr(request, "tokens", None)
    if tokens is not None:
        record["tokens"] = tokens
    return _dumps(record)


def access_formatter(log_format: str) -> Callable[[str, Any], str]:
    """
    The C{logFormatter} for C{log_format}: JSON objects, or the Combined
    Log Format with the request's id at the end of the line.
    """
    from hfendpoint.web._accesslog import combined_line_with_id

    return json_access_line if log_format == "json" else combined_line_with_id
