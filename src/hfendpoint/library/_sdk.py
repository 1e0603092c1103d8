"""
The worker side of the hfendpoint protocol, on asyncio.

A worker is the process that holds the model. The gateway starts it with
one end of a socket pair in C{HFENDPOINT_FD} and sends it MessagePack
requests; see C{PROTOCOL.md}. This module keeps both generations of the
original Python library working unchanged (v0.2: C{run(dict)} with
C{send_chunk}; v0.3: C{@handler} and C{asyncio.run(run())}) and answers the
two extensions our gateway adds, C{hfendpoint.describe} and
C{hfendpoint.cancel}, which an old gateway simply never sends.

It imports nothing but the standard library and msgpack, so that a worker
does not pay for Twisted (nor risk a second event loop) just by importing
C{hfendpoint}.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Optional, TypeGuard, TypeVar, overload

import msgpack

__all__ = [
    "Cancelled",
    "Connection",
    "WorkerError",
    "handler",
    "legacy_calls",
    "modern_calls",
    "run",
    "serve",
]

log = logging.getLogger("hfendpoint")

PROTOCOL_VERSION = 2
DESCRIBE = "hfendpoint.describe"
#: What a gateway lists in the handshake's C{accepts} when it reads embedding
#: vectors sent as float32 bytes.
FLOAT32_VECTORS = "float32_vectors"
CANCEL = "hfendpoint.cancel"
RESERVED_PREFIX = "hfendpoint."
NOT_A_WORKER = (
    "this program is an hfendpoint worker; start it through the hfendpoint gateway"
)
READ_SIZE = 256 * 1024
#: Replies at least this big are written one at a time, in pieces of
#: WRITE_PIECE bytes (see Connection.send).
BIG_MESSAGE = 256 * 1024
WRITE_PIECE = 256 * 1024
#: A handler that sends this many replies in a row, with no other
#: handler's in between, is made to yield to the event loop.
YIELD_EVERY = 16
#: Replies of one round of the event loop written together at most.
WRITE_EVERY = 256

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)


class WorkerError(Exception):
    """
    A request failed for a reason worth telling the client.

    Its message becomes the C{error} reply as it is, so it should make sense
    to whoever sent the HTTP request; unlike other exceptions it is logged
    without a traceback, since it is an expected outcome, not a bug.
    """


class Cancelled(Exception):
    """
    Nothing more may be sent for this request: the gateway cancelled it, or
    the connection to the gateway is gone.

    A v0.2 handler sees it raised by C{send_chunk}; letting it propagate is
    the right reaction, as the request then ends without any reply.
    """


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
    """

    def __init__(self, connection: Connection, request_id: int, name: str) -> None:
        self.connection = connection
        self.id = request_id
        self.name = name
        self.cancelled = False
        self.task: Optional[asyncio.Task[None]] = None

    async def send(self, value: Any) -> None:
        """
        Send one C{data} reply.

        @raise Cancelled: if the request was cancelled or the gateway is gone.
        """
        if self.cancelled:
            raise Cancelled(f"request {self.id} was cancelled")
        if self.name == "embeddings" and self.connection.float32_vectors:
            value = float32_vectors(value)
        await self.connection.send({"id": self.id, "data": value}, self)

    def cancel(self) -> None:
        """
        Stop serving the request and forbid any further reply.
        """
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


Call = Callable[[Request, Any], Awaitable[None]]


class Connection:
    """
    The worker's end of the gateway socket: reads requests, runs each in its
    own task, writes replies.

    @ivar calls: what each call name runs, already adapted to one shape.
    @ivar model: the model name the handshake reports.
    @ivar requests: the requests in flight by id, so that a cancel can find
        its target and the end of the connection can stop them all.
    @ivar closed: no reply can be written any more.
    """

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        calls: Mapping[str, Call],
        model: Optional[str] = None,
    ) -> None:
        self.writer = writer
        self.calls = dict(calls)
        self.model = model
        self.requests: dict[int, Request] = {}
        self.closed = False
        #: Whether the gateway said it reads embedding vectors as float32
        #: bytes (the handshake's C{accepts}); an older one only has lists.
        self.float32_vectors = False
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._big_writes = asyncio.Lock()
        self._outgoing: list[bytes] = []
        self._round_open = False
        self._sender: Any = None
        self._sender_sends = 0

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
                self.lose(error)
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
        request = Request(self, request_id, name)
        self.requests[request_id] = request
        request.task = asyncio.get_running_loop().create_task(
            self.serve_request(request, self.find(name), data)
        )

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
        if isinstance(error, WorkerError):
            log.warning("Request %d (%s) failed: %s", request.id, request.name, message)
        else:
            log.error(
                "Request %d (%s) failed", request.id, request.name, exc_info=error
            )
        with contextlib.suppress(Cancelled):
            await self.send({"id": request.id, "error": message})

    async def describe(self, request: Request, data: Any) -> None:
        """
        Answer the handshake, so that a gateway that knows it learns which
        calls exist and that cancelling is worth sending.
        """
        accepts = data.get("accepts") if isinstance(data, Mapping) else None
        if isinstance(accepts, (list, tuple)) and FLOAT32_VECTORS in accepts:
            self.float32_vectors = True
        await request.send(
            {
                "protocol": PROTOCOL_VERSION,
                "calls": sorted(self.calls),
                "model": self.model,
                "cancel": True,
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

    async def send(self, message: dict[str, Any], sender: Any = None) -> None:
        """
        Write one whole message and wait until the socket takes it, so that a
        fast producer cannot queue unbounded replies.

        @param sender: what sends it (its L{Request}), to tell a handler that
            sends reply after reply from handlers that take turns.
        @raise Cancelled: if the connection is gone.
        """
        if self.closed:
            raise Cancelled("the connection to the gateway is closed")
        parts = pack_parts(message)
        try:
            if len(parts) == 1 and len(parts[0]) < BIG_MESSAGE and not self._big_writes.locked():
                self._queue(parts[0])
                await self.writer.drain()
            else:
                async with self._big_writes:
                    self._write_outgoing()
                    await self._write_in_pieces(parts)
        except OSError as error:
            self.lose(error)
            raise Cancelled("the connection to the gateway is lost") from error
        # drain() does not yield when the socket keeps up: a handler that
        # sends reply after reply without waiting for anything is made to
        # yield every YIELD_EVERY of them, so that it cannot starve the
        # reading of a cancel. Handlers that take turns (a model stepping
        # its streams) never are, so their order is kept step after step.
        if sender is self._sender:
            self._sender_sends += 1
            if self._sender_sends >= YIELD_EVERY:
                self._sender_sends = 0
                await asyncio.sleep(0)
        else:
            self._sender = sender
            self._sender_sends = 1

    def _queue(self, payload: bytes) -> None:
        """
        Write the first reply of a round of the event loop at once (a lone
        reply should not wait), and the others of the round together at
        its end, in one write: a model stepping a batch of streams sends
        each a token at the same time, and a write, a system call, per
        token would cost more than the token.
        """
        if self._round_open:
            self._outgoing.append(payload)
            if len(self._outgoing) >= WRITE_EVERY:
                self._write_outgoing()
            return
        self._round_open = True
        asyncio.get_running_loop().call_soon(self._end_round)
        if not self.closed:
            self.writer.write(payload)

    def _end_round(self) -> None:
        self._round_open = False
        self._write_outgoing()

    def _write_outgoing(self) -> None:
        if self._outgoing:
            data = b"".join(self._outgoing) if len(self._outgoing) > 1 else self._outgoing[0]
            self._outgoing = []
            if not self.closed:
                self.writer.write(data)

    async def _write_in_pieces(self, parts: list[bytes]) -> None:
        """
        Write a big message a piece at a time, each once the socket took the
        last. asyncio copies what a send leaves over into its buffer and
        moves the rest of that buffer after every partial send, so a whole
        image written at once is copied over and over; pieces of a view are
        not copied at all when the socket keeps up. Other messages wait
        (the caller holds C{_big_writes}) so that none lands in between.
        """
        transport = self.writer.transport
        low, high = transport.get_write_buffer_limits()
        # drain() then waits until the buffer is empty, not merely low.
        transport.set_write_buffer_limits(0, 0)
        try:
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), WRITE_PIECE):
                    self.writer.write(view[start : start + WRITE_PIECE])
                    await self.writer.drain()
        finally:
            transport.set_write_buffer_limits(high, low)

    def lose(self, error: BaseException) -> None:
        """
        The socket failed: say so once (every pending reply would fail the
        same way) and make the reading loop stop.
        """
        if self.closed:
            return
        self.closed = True
        log.warning("Lost the connection to the gateway (%s); stopping.", error)
        self.writer.transport.abort()

    async def close(self) -> None:
        """
        Stop every request still in flight and close the socket: once the
        gateway is gone, no reply can reach anyone.
        """
        self.closed = True
        pending = list(self.requests.values())
        for request in pending:
            request.cancel()
        await asyncio.gather(
            *(request.task for request in pending if request.task is not None),
            return_exceptions=True,
        )
        self._outgoing = []
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


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


def is_coroutine_function(function: Any) -> bool:
    """
    Like L{inspect.iscoroutinefunction}, but also for objects with an
    C{async def __call__}.
    """
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)
    )


def pack_parts(message: dict[str, Any]) -> list[bytes]:
    """
    A message as MessagePack, in parts: the big C{bytes} values of its
    C{data} map (an image) stay apart as they are instead of being copied
    into the packed message, twice, by msgpack. Joined, the parts are
    exactly what C{msgpack.packb} makes.
    """
    data = message.get("data")
    if type(data) is dict:
        for value in data.values():
            if type(value) is bytes and len(value) >= BIG_MESSAGE:
                return _pack_apart(message)
    return [msgpack.packb(message, use_bin_type=True)]


def _pack_apart(message: dict[str, Any]) -> list[bytes]:
    parts: list[bytes] = []
    head = [_packer.pack_map_header(len(message))]
    for key, value in message.items():
        head.append(_packer.pack(key))
        if key != "data":
            head.append(_packer.pack(value))
            continue
        head.append(_packer.pack_map_header(len(value)))
        for name, item in value.items():
            head.append(_packer.pack(name))
            if type(item) is bytes and len(item) >= BIG_MESSAGE:
                # bin 32: the type byte, then the length, big-endian.
                head.append(b"\xc6" + len(item).to_bytes(4, "big"))
                parts += [b"".join(head), item]
                head = []
            else:
                head.append(_packer.pack(item))
    parts.append(b"".join(head))
    return parts


_packer = msgpack.Packer(use_bin_type=True)


def float32_vectors(value: Any) -> Any:
    """
    An C{embeddings} reply with each vector given as a list of floats
    turned into little-endian float32 bytes: a few microseconds in C here
    instead of packing, and the gateway unpacking, a MessagePack float per
    dimension. Anything unexpected is left as it is, for the gateway to
    judge.
    """
    if not isinstance(value, Mapping) or not isinstance(value.get("embeddings"), list):
        return value
    packed = []
    for vector in value["embeddings"]:
        if isinstance(vector, (list, tuple)):
            try:
                vector = struct.pack("<%df" % len(vector), *vector)
            except (struct.error, TypeError, OverflowError):
                return value
        packed.append(vector)
    return {**value, "embeddings": packed}


async def send_all(request: Request, items: Any) -> None:
    """
    Send each item of an async iterable as one reply, closing it whatever
    happens so that the handler's C{finally} runs on cancel.
    """
    try:
        async for item in items:
            await request.send(item)
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def modern_call(function: Handler) -> Call:
    """
    Adapt a v0.3 handler, which takes C{data} and returns, awaits or yields
    its replies.

    A plain function runs in a thread so that a blocking model call does not
    stop the other requests; whatever it returns may still be awaitable or
    an async iterable, for handlers wrapped by decorators that hide what
    they are.
    """
    if inspect.isasyncgenfunction(function):

        async def call(request: Request, data: Any) -> None:
            await send_all(request, function(data))

    elif is_coroutine_function(function):

        async def call(request: Request, data: Any) -> None:
            await request.send(await function(data))

    else:

        async def call(request: Request, data: Any) -> None:
            result = await asyncio.to_thread(function, data)
            if hasattr(result, "__aiter__"):
                await send_all(request, result)
                return
            if inspect.isawaitable(result):
                result = await result
            await request.send(result)

    return call


def legacy_call(function: Handler) -> Call:
    """
    Adapt a v0.2 handler, C{function(data, send_chunk)}, which blocks: it
    runs in a thread, and its C{send_chunk} hands each reply to the event
    loop and waits until it is written, so that backpressure reaches it.
    """

    async def call(request: Request, data: Any) -> None:
        loop = asyncio.get_running_loop()

        def send_chunk(chunk: Any) -> None:
            if request.cancelled:
                raise Cancelled(f"request {request.id} was cancelled")
            sending = request.send(chunk)
            try:
                future = asyncio.run_coroutine_threadsafe(sending, loop)
            except RuntimeError:
                sending.close()
                raise Cancelled("the worker is shutting down") from None
            try:
                future.result()
            except concurrent.futures.CancelledError:
                raise Cancelled("the worker is shutting down") from None

        await asyncio.to_thread(function, data, send_chunk)

    return call


def modern_calls(handlers: Mapping[str, Handler]) -> dict[str, Call]:
    """
    @return: the calls serving v0.3 C{handlers}.
    """
    return {name: modern_call(function) for name, function in handlers.items()}


def legacy_calls(handlers: Mapping[str, Handler]) -> dict[str, Call]:
    """
    @return: the calls serving v0.2 C{handlers}.
    """
    return {name: legacy_call(function) for name, function in handlers.items()}


_registry: dict[str, Handler] = {}


def handler(name: str) -> Callable[[F], F]:
    """
    Register the decorated function as the handler of the call C{name}, for
    L{run} without arguments (the v0.3 API).

    @raise ValueError: for a name of the C{hfendpoint.} family, which the
        library answers itself.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a handler name must be a non-empty string, not {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{name!r} is reserved for the protocol itself")

    def register(function: F) -> F:
        _registry[name] = function
        return function

    return register


def gateway_socket() -> socket.socket:
    """
    The socket the gateway gave us.

    @raise SystemExit: with a plain explanation if there is none, since the
        usual cause is a person starting the worker by hand, who needs a
        sentence rather than a traceback.
    """
    value = os.environ.get("HFENDPOINT_FD")
    if value is None:
        raise SystemExit(f"{NOT_A_WORKER} (HFENDPOINT_FD is not set)")
    try:
        fd = int(value)
    except ValueError:
        raise SystemExit(f"{NOT_A_WORKER} (HFENDPOINT_FD={value!r} is no number)")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise SystemExit(f"{NOT_A_WORKER} (HFENDPOINT_FD={fd}: {error})")
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SystemExit(
            f"{NOT_A_WORKER} (HFENDPOINT_FD={fd} is not a UNIX stream socket)"
        )
    return sock


def model_name(model: Optional[str]) -> Optional[str]:
    """
    The model name for the handshake: the worker's own word first, then
    what its launcher put in the environment.
    """
    return model or os.environ.get("HFENDPOINT_MODEL_NAME") or None


async def serve(
    sock: socket.socket, calls: Mapping[str, Call], *, model: Optional[str] = None
) -> None:
    """
    Serve C{calls} on C{sock} until the gateway closes it.

    This is L{run} without the environment and without owning the event
    loop, for tests and for programs that embed a worker in their own loop.
    """
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    connection = Connection(writer, calls, model)
    try:
        await connection.read_from(reader)
    finally:
        await connection.close()


@overload
def run(
    handlers: None = None, *, model: Optional[str] = None
) -> Coroutine[Any, Any, None]: ...


@overload
def run(handlers: Mapping[str, Handler], *, model: Optional[str] = None) -> None: ...


def run(
    handlers: Optional[Mapping[str, Handler]] = None, *, model: Optional[str] = None
) -> Optional[Coroutine[Any, Any, None]]:
    """
    Serve the gateway until it closes the connection.

    Both generations of the original library call this one name, so it
    serves both: given a dict (v0.2), it runs its own event loop and blocks;
    given nothing (v0.3), it returns the coroutine serving the
    L{handler}-registered functions, for C{asyncio.run(hfendpoint.run())}.

    @param handlers: v0.2 handlers, C{function(data, send_chunk)} by name.
    @param model: the model name the handshake reports; defaults to
        C{HFENDPOINT_MODEL_NAME} from the environment.
    @raise SystemExit: if the program was not started by a gateway.
    """
    name = model_name(model)
    if handlers is None:
        if not _registry:
            log.warning("No handler is registered: every request will fail.")
        return serve(gateway_socket(), modern_calls(_registry), model=name)
    asyncio.run(serve(gateway_socket(), legacy_calls(handlers), model=name))
    return None
