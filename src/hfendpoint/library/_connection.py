"""
The worker's end of the gateway socket: requests read as they come, each
served in its own task, the protocol's own messages (the handshake and
cancels) answered here, whatever the worker's handlers are.
"""

from __future__ import annotations

import asyncio
import contextvars
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Optional, TypeGuard

import msgpack

from hfendpoint.library._errors import Cancelled, WorkerError
from hfendpoint.library._packing import float32_vectors
from hfendpoint.library._writer import ReplyWriter
from hfendpoint.wire import (
    ACCEPTS_KEY,
    CALLS_KEY,
    CANCEL,
    CANCEL_KEY,
    DESCRIBE,
    EMBEDDINGS,
    ERROR_STATUS_KEY,
    FEATURES_KEY,
    FLOAT32_VECTORS,
    MODEL_KEY,
    PING,
    PING_KEY,
    PROTOCOL_KEY,
    PROTOCOL_VERSION,
    REQUEST_ID_KEY,
    is_client_status,
)

log = logging.getLogger("hfendpoint")

#: The most bytes read from the socket at a time.
READ_SIZE = 256 * 1024


#: The id of the HTTP request the running handler serves (C{None} when the
#: gateway sends none): L{hfendpoint.request_id} reads it.
CURRENT_REQUEST_ID: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "hfendpoint_request_id", default=None
)


def request_id() -> Optional[str]:
    """
    The id of the HTTP request the calling handler serves (the gateway's
    C{X-Request-Id}), for the worker's own log lines; C{None} outside a
    handler, or behind a gateway that sends none.
    """
    return CURRENT_REQUEST_ID.get()


class Request:
    """
    One request being served: where its replies go, and whether they still
    may.

    @ivar id: the id the gateway gave the request.
    @ivar name: the call it asked for, for log lines.
    @ivar cancelled: set once the gateway cancelled the request; checked
        before every send because a handler may outlive its task (a thread
        cannot be interrupted).
    @ivar task: the asyncio task serving it, which a cancel cancels.
    @ivar request_id: the id of the HTTP request it serves, when the
        gateway sends one (ours does), else C{None}.
    """

    request_id: Optional[str] = None

    def __init__(self, connection: Connection, request_id: int, name: str) -> None:
        self.connection = connection
        self.id = request_id
        self.name = name
        self.cancelled = False
        self.task: Optional[asyncio.Task[None]] = None

    def tag(self) -> str:
        """
        The HTTP request's id, for a log line: C{", request ID"}.
        """
        return f", request {self.request_id}" if self.request_id else ""

    async def send(self, value: Any) -> None:
        """
        Send one C{data} reply.

        @raise Cancelled: if the request was cancelled or the gateway is gone.
        """
        if self.cancelled:
            raise Cancelled(f"request {self.id} was cancelled")
        if self.name == EMBEDDINGS and self.connection.float32_vectors:
            value = float32_vectors(value)
        await self.connection.send({"id": self.id, "data": value}, self)

    def cancel(self) -> None:
        """
        Stop serving the request and forbid any further reply.
        """
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


#: What serves one call: it sends the request's replies, and raises to
#: fail it (see L{hfendpoint.library._calls} for the handlers' shapes).
Call = Callable[[Request, Any], Awaitable[None]]


class Connection:
    """
    The worker's end of the gateway socket: reads requests, runs each in its
    own task, writes replies through its L{ReplyWriter}.

    @ivar calls: what each call name runs, already adapted to one shape.
    @ivar model: the model name the handshake reports.
    @ivar features: the optional abilities the handshake announces (such
        as C{chat_n}: a chat call answers C{n} choices itself).
    @ivar requests: the requests in flight by id, so that a cancel can find
        its target and the end of the connection can stop them all.
    @ivar replies: what writes the replies.
    @ivar float32_vectors: whether the gateway said it reads embedding
        vectors as float32 bytes (the handshake's C{accepts}); an older one
        only has lists.
    """

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        calls: Mapping[str, Call],
        model: Optional[str] = None,
        features: Iterable[str] = (),
    ) -> None:
        self.calls = dict(calls)
        self.model = model
        self.features = sorted(set(features))
        self.requests: dict[int, Request] = {}
        self.float32_vectors = False
        self.replies = ReplyWriter(writer)
        #: Write one whole message (L{ReplyWriter.send}), bound once: every
        #: reply comes this way.
        self.send = self.replies.send
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._pongs: set[asyncio.Task[None]] = set()

    @property
    def closed(self) -> bool:
        """
        Whether no reply can be written any more.
        """
        return self.replies.closed

    async def read_from(self, reader: asyncio.StreamReader) -> None:
        """
        Serve what C{reader} brings until the gateway closes its end (or the
        connection is lost, or the stream stops being MessagePack: nothing
        after that could be trusted).
        """
        while not self.closed:
            try:
                data = await reader.read(READ_SIZE)
            except OSError as error:
                self.replies.lose(error)
                return
            if not data:
                return
            try:
                self.feed(data)
            except (ValueError, msgpack.UnpackException) as error:
                log.error("The gateway sent malformed MessagePack (%s); stopping.", error)
                return

    def feed(self, data: bytes) -> None:
        """
        Take in bytes as they come; a message may be split anywhere, so each
        is dispatched only once it is whole.
        """
        self._unpacker.feed(data)
        for message in self._unpacker:
            self.dispatch(message)

    def dispatch(self, message: Any) -> None:
        """
        Start serving one message, without waiting for it: requests run
        concurrently and their replies interleave.
        """
        parsed = parse_request(message)
        if parsed is None:
            log.warning("Skipping malformed request: %.200r", message)
            return
        request_id, name, data = parsed
        if name == CANCEL:
            self.cancel(data)
            return
        if name == PING:
            self.pong(request_id)
            return
        request = Request(self, request_id, name)
        http_id = message.get(REQUEST_ID_KEY)
        if isinstance(http_id, str):
            request.request_id = http_id[:128]
        self.requests[request_id] = request
        # The task runs in a copy of the current context, with the HTTP
        # request's id in it for the handler's own log lines.
        token = CURRENT_REQUEST_ID.set(request.request_id)
        try:
            request.task = asyncio.get_running_loop().create_task(
                self.serve_request(request, self.find(name), data)
            )
        finally:
            CURRENT_REQUEST_ID.reset(token)

    def pong(self, request_id: int) -> None:
        """
        Answer the gateway's liveness probe from the event loop itself,
        not from a handler's thread: the answer then says that the loop
        runs, and a handler that blocks it (a long computation in an
        C{async def}) makes the worker miss the probe, and be restarted,
        rather than hang every request silently.
        """
        task = asyncio.get_running_loop().create_task(self._pong(request_id))
        # The loop keeps only a weak reference to its tasks.
        self._pongs.add(task)
        task.add_done_callback(self._pongs.discard)

    async def _pong(self, request_id: int) -> None:
        with contextlib.suppress(Cancelled):
            await self.send({"id": request_id, "data": {}})

    def find(self, name: str) -> Call:
        """
        The call serving C{name}; the handshake is built in so that every
        worker answers it, whatever it registered.
        """
        if name == DESCRIBE:
            return self.describe
        call = self.calls.get(name)
        if call is None:
            return unknown_call(name)
        return call

    async def serve_request(self, request: Request, call: Call, data: Any) -> None:
        """
        Run C{call} and turn its failure into an C{error} reply; a cancelled
        request ends silently, since nobody waits for it any more.
        """
        try:
            await call(request, data)
        except (Cancelled, asyncio.CancelledError):
            pass
        except Exception as error:
            if not request.cancelled:
                await self.fail(request, error)
        finally:
            if self.requests.get(request.id) is request:
                del self.requests[request.id]

    async def fail(self, request: Request, error: Exception) -> None:
        """
        Log C{error} and tell the gateway; a bug gets its traceback in the
        log, an expected L{WorkerError} a single line.
        """
        message = str(error) or type(error).__name__
        reply = {"id": request.id, "error": message}
        if isinstance(error, WorkerError):
            log.warning("Request %d (%s%s) failed: %s", request.id, request.name, request.tag(), message)
            if is_client_status(error.status):
                reply[ERROR_STATUS_KEY] = error.status
        else:
            log.error(
                "Request %d (%s%s) failed", request.id, request.name, request.tag(), exc_info=error
            )
        with contextlib.suppress(Cancelled):
            await self.send(reply)

    async def describe(self, request: Request, data: Any) -> None:
        """
        Answer the handshake, so that a gateway that knows it learns which
        calls exist and that cancelling is worth sending. The connection
        exists only once the worker called C{run}, after loading its model,
        so this reply also tells the gateway the worker is ready.
        """
        accepts = data.get(ACCEPTS_KEY) if isinstance(data, Mapping) else None
        if isinstance(accepts, (list, tuple)) and FLOAT32_VECTORS in accepts:
            self.float32_vectors = True
        await request.send(
            {
                PROTOCOL_KEY: PROTOCOL_VERSION,
                CALLS_KEY: sorted(self.calls),
                MODEL_KEY: self.model,
                CANCEL_KEY: True,
                PING_KEY: True,
                FEATURES_KEY: self.features,
            }
        )

    def cancel(self, data: Any) -> None:
        """
        Cancel the request named by C{data}; the target may have finished
        already, which is no error.
        """
        target = data.get("id") if isinstance(data, Mapping) else None
        if not is_id(target):
            log.warning("Skipping malformed cancel: %.200r", data)
            return
        request = self.requests.get(target)
        if request is not None:
            request.cancel()

    async def close(self) -> None:
        """
        Stop every request still in flight and close the socket: once the
        gateway is gone, no reply can reach anyone.
        """
        self.replies.closed = True
        pending = list(self.requests.values())
        for request in pending:
            request.cancel()
        await asyncio.gather(
            *(request.task for request in pending if request.task is not None),
            return_exceptions=True,
        )
        await self.replies.close()


def is_id(value: Any) -> TypeGuard[int]:
    """
    Whether C{value} may be a request id (msgpack booleans are no integers).
    """
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(message: Any) -> Optional[tuple[int, str, Any]]:
    """
    @return: the id, name and data of a request, or L{None} if C{message}
        is not one.
    """
    if not isinstance(message, Mapping):
        return None
    request_id = message.get("id")
    name = message.get("name")
    if not is_id(request_id) or not isinstance(name, str):
        return None
    return request_id, name, message.get("data", {})


def unknown_call(name: str) -> Call:
    """
    The call answering a name nothing serves, in the words of the original
    v0.3 library, which gateways may already match on.
    """

    async def call(request: Request, data: Any) -> None:
        raise WorkerError(f"No handler implemented for '{name}'")

    return call
