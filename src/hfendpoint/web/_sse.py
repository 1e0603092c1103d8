"""
Server-sent events on one response, with flow control.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.web._json import dumps
from hfendpoint.web._metrics import record_usage, stream_timer
from hfendpoint.web._site import when_done

_log = Logger()


@implementer(IPushProducer)
class EventStream:
    """
    Server-sent events on one response, with flow control.

    Events are written at the end of the reactor's turn, all those of the
    turn in one write: a worker's replies arrive many per read, so a
    stream costs one write per read rather than one per token. The turn's
    end is that of the C{flusher} given, or else of the flusher of the
    request's site (L{GatewaySite}); on a site that has none, each event is
    written at once.

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
        self,
        request: Any,
        max_buffer: int = 8 * 1024 * 1024,
        flusher: Optional[TurnFlusher] = None,
    ) -> None:
        if flusher is None:
            site = getattr(request.channel, "site", None)
            flusher = getattr(site, "flusher", None)
        self._flusher = flusher
        self._scheduled = False
        self._request = request
        self._max_buffer = max_buffer
        self._held: list[bytes] = []
        self._held_size = 0
        self._paused = False
        self.started = False
        self.closed = False
        self._timer = stream_timer(request)
        when_done(request, self._ended)
        request.registerProducer(self, True)

    def _ended(self, reason: Any) -> None:
        if reason is not None:
            # The client went away.
            self.closed = True

    def _start(self) -> None:
        self.started = True
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")

    def send(self, value: Any, event: Optional[str] = None) -> None:
        if self._timer is not None and type(value) is dict:
            self._count_usage(value)
        self.write_raw(
            (b"event: " + event.encode("ascii") + b"\n" if event else b"")
            + b"data: "
            + dumps(value)
            + b"\n\n"
        )

    def _count_usage(self, value: dict) -> None:
        """
        Count a stream's usage for the metrics: in its last chunk (chat,
        completions), or in its completed response (responses).
        """
        usage = value.get("usage")
        if usage is None and value.get("type") == "response.completed":
            response = value.get("response")
            usage = response.get("usage") if type(response) is dict else None
        if usage:
            record_usage(self._request, usage)

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
        elif self._flusher is None:
            self._flush()
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
            if self._timer is not None:
                self._timer.event()

    def _overflow(self) -> None:
        self.closed = True
        self._held = []
        self._held_size = 0
        _log.warn(
            "Dropping a client that fell too far behind its event stream (request {request_id})",
            request_id=getattr(self._request, "request_id", None),
        )
        self._request.channel.transport.abortConnection()

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.closed = True
