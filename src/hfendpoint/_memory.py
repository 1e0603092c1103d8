"""
A worker that lives in memory and speaks the real protocol: MessagePack
over an in-memory transport (L{twisted.test.iosim}), with the gateway's
own L{WorkerProtocol} and L{WorkerClient} on the other end, so that the
whole gateway can run on a C{MemoryReactorClock} with no process and no
socket. Public through L{hfendpoint.testing}.
"""

from __future__ import annotations

import inspect
from array import array
from itertools import count
from typing import Any, Callable, Iterable, Optional, Sequence

import msgpack
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from hfendpoint.wire import CANCEL, DESCRIBE, PING, PROTOCOL_VERSION
from hfendpoint.interfaces import IWorkerProcess, IWorkerSpawner

WorkerHandler = Callable[[Any], Any]

_pids = count(1000)


def handler_replies(result: Any) -> Iterable[Any]:
    """
    The replies of a handler's result, as the worker library reads them: a
    value is one reply; a generator, sync or async, one reply per item. An
    async handler here must not wait on anything (there is no event loop):
    its coroutine is stepped by hand.
    """
    if inspect.isasyncgen(result):
        return _drive_async(result)
    if inspect.iscoroutine(result):
        return [_step(result)]
    if inspect.isgenerator(result) or isinstance(result, (list, tuple)):
        return result
    return [result]


def _step(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("an in-memory worker's handler cannot wait for anything")


def _drive_async(generator: Any) -> Iterable[Any]:
    while True:
        try:
            item = _step(generator.__anext__())
        except StopAsyncIteration:
            return
        yield item


def _error_text(error: BaseException) -> str:
    # As the worker library says it.
    return str(error) or type(error).__name__


class MemoryWorkerCall:
    """
    A call the in-memory worker has not finished: a test answers it by hand.

    @ivar ident: the id the gateway gave it.
    """

    def __init__(self, worker: "MemoryWorker", ident: int, name: str, data: Any) -> None:
        self._worker = worker
        self.ident = ident
        self.name = name
        self.data = data

    def reply(self, data: Any) -> None:
        self._worker.send({"id": self.ident, "data": self._worker.encode(self.name, data)})

    def error(self, message: str) -> None:
        self._worker.pending.pop(self.ident, None)
        self._worker.send({"id": self.ident, "error": message})

    def done(self) -> None:
        """
        The worker is done with it (its last reply was sent).
        """
        self._worker.pending.pop(self.ident, None)


class MemoryWorker(Protocol):
    """
    The worker's end of the socket, answering as a worker written on the
    worker library does: the handshake, each call from its handler, errors
    as C{error} replies, cancels, embeddings as float32 bytes for a
    gateway that accepts them.

    A handler takes the call's C{data} and returns its reply, or an
    iterable (a generator, sync or async) of replies; it raises to fail
    the call; it returns C{None} to leave the call in L{pending} for the
    test to answer by hand (L{MemoryWorkerCall}).

    @ivar handshake: C{"answer"} (a worker of ours), C{"error"} (the
        original v0.3 library), C{"ignore"} (an older worker: never
        answers), or C{"hold"} (answered when the test calls
        L{answer_handshake}, as a worker still loading its model would).
    @ivar loading: while true, the worker reads nothing from its socket,
        as one loading its model before it runs the library; see
        L{finish_loading}.
    @ivar received: every message received, in order.
    @ivar pending: calls left for the test to answer, by id.
    @ivar cancelled: the ids the gateway cancelled.
    @ivar pings: the liveness probes answered. A worker whose event loop
        is blocked answers none: set L{loading} to make it read nothing
        more, as such a worker does.
    """

    def __init__(
        self,
        handlers: dict[str, WorkerHandler],
        model: Optional[str] = None,
        handshake: str = "answer",
        loading: bool = False,
        features: Sequence[str] = (),
    ) -> None:
        self.handlers = dict(handlers)
        self.model = model
        self.handshake = handshake
        self.loading = loading
        self.features = list(features)
        self.received: list[dict] = []
        self.pending: dict[int, MemoryWorkerCall] = {}
        self.cancelled: list[int] = []
        self.pings = 0
        self.float32 = False
        self._describe_id: Optional[int] = None
        self._unread: list[bytes] = []
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def unread_bytes(self) -> int:
        return sum(map(len, self._unread))

    def finish_loading(self) -> None:
        """
        Start reading the socket, and what waited in it.
        """
        self.loading = False
        data, self._unread = b"".join(self._unread), []
        if data:
            self.dataReceived(data)

    def description(self) -> dict:
        return {
            "protocol": PROTOCOL_VERSION,
            "calls": sorted(self.handlers),
            "model": self.model,
            "cancel": True,
            "ping": True,
            "features": self.features,
        }

    def answer_handshake(self) -> None:
        """
        Answer a handshake held back (C{handshake="hold"}).
        """
        if self._describe_id is None:
            raise RuntimeError("no handshake is waiting for an answer")
        ident, self._describe_id = self._describe_id, None
        self.send({"id": ident, "data": self.description()})

    def send(self, message: dict) -> None:
        self.transport.write(msgpack.packb(message, use_bin_type=True))

    def encode(self, name: str, data: Any) -> Any:
        """
        Embedding vectors as float32 bytes once the gateway accepts them,
        as the library sends them.
        """
        if name == "embeddings" and self.float32 and isinstance(data, dict):
            vectors = data.get("embeddings")
            if isinstance(vectors, list):
                data = dict(
                    data,
                    embeddings=[
                        array("f", v).tobytes() if isinstance(v, (list, tuple)) else v
                        for v in vectors
                    ],
                )
        return data

    def dataReceived(self, data: bytes) -> None:
        if self.loading:
            self._unread.append(data)
            return
        self._unpacker.feed(data)
        for message in self._unpacker:
            self.received.append(message)
            self._handle(message)

    def _handle(self, message: dict) -> None:
        ident, name, data = message.get("id"), message.get("name"), message.get("data")
        if name == DESCRIBE:
            self._describe(ident, data)
        elif name == PING:
            self.pings += 1
            self.send({"id": ident, "data": {}})
        elif name == CANCEL:
            target = data.get("id") if isinstance(data, dict) else None
            self.cancelled.append(target)
            self.pending.pop(target, None)
        elif name not in self.handlers:
            self.send({"id": ident, "error": f"No handler implemented for '{name}'"})
        else:
            self._serve(MemoryWorkerCall(self, ident, name, data))

    def _describe(self, ident: int, data: Any) -> None:
        accepts = data.get("accepts", ()) if isinstance(data, dict) else ()
        self.float32 = "float32_vectors" in accepts
        if self.handshake == "answer":
            self.send({"id": ident, "data": self.description()})
        elif self.handshake == "error":
            self.send({"id": ident, "error": f"No handler implemented for '{DESCRIBE}'"})
        elif self.handshake == "hold":
            self._describe_id = ident

    def _serve(self, call: MemoryWorkerCall) -> None:
        try:
            result = self.handlers[call.name](call.data)
            if result is None:
                self.pending[call.ident] = call
                return
            for reply in handler_replies(result):
                call.reply(reply)
        except Exception as error:
            call.error(_error_text(error))


@implementer(IWorkerProcess)
class MemoryWorkerProcess:
    """
    An in-memory worker as its supervisor sees it. It exits (status 0)
    when it reads EOF, unless it is C{stubborn}; a signal ends it.

    @ivar worker: the L{MemoryWorker} answering the gateway.
    @ivar signals: the signals the gateway sent, by name.
    @ivar argv: the command it was started with.
    @ivar env: the extra environment it was given.
    """

    def __init__(self, worker: MemoryWorker, gateway_end: Any, argv: list[str], env: Optional[dict]) -> None:
        self.pid = next(_pids)
        self.worker = worker
        self.argv = argv
        self.env = env
        self.signals: list[str] = []
        self.stubborn = False
        self.how_it_ended: Optional[str] = None
        self._gateway_end = gateway_end
        self._waiters: list[Deferred] = []

    def unread_bytes(self) -> int:
        return self.worker.unread_bytes()

    def when_disconnected(self) -> Deferred:
        return self._gateway_end.when_closed()

    def when_ended(self) -> Deferred:
        exited: Deferred = Deferred()
        if self.how_it_ended is not None:
            exited.callback(self.how_it_ended)
        else:
            self._waiters.append(exited)
        return gatherResults([exited, self._gateway_end.when_closed()]).addCallback(
            lambda results: results[0]
        )

    def close_socket(self) -> None:
        self._gateway_end.flush_now()
        self._gateway_end.transport.loseConnection()

    def signal(self, name: str) -> None:
        self.signals.append(name)
        self.exit(f"was killed by SIG{name}")

    def exit(self, how: str = "exited with status 1") -> None:
        """
        End the worker as a crash does: its socket closes and it is gone.
        """
        self.worker.transport.loseConnection()
        if self.how_it_ended is None:
            self.how_it_ended = how
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(how)

    def read_eof(self) -> None:
        if not self.stubborn:
            self.exit("exited with status 0")


class _WorkerEnd(MemoryWorker):
    process: Optional[MemoryWorkerProcess] = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.process is not None:
            self.process.read_eof()


@implementer(IWorkerSpawner)
class MemoryWorkerSpawner:
    """
    Starts L{MemoryWorker}s connected to the gateway by in-memory
    transports on C{clock}; L{flush} moves the bytes.

    @param make_worker: called with the command and the environment, it
        returns the keyword arguments of the L{MemoryWorker} to start
        (C{handlers}, C{model}, ...), so that one spawner can start a
        different worker for each command.
    @ivar processes: every L{MemoryWorkerProcess} started, in order.
    """

    def __init__(self, clock: Any, make_worker: Callable[[list[str], Optional[dict]], dict]) -> None:
        self._clock = clock
        self._make_worker = make_worker
        self.processes: list[MemoryWorkerProcess] = []
        self.pumps: list[iosim.IOPump] = []

    def spawn(self, argv: Sequence[str], env: Optional[dict[str, str]], protocol_factory: Any) -> MemoryWorkerProcess:
        argv = list(argv)
        worker = _WorkerEnd(**self._make_worker(argv, env))
        address = UNIXAddress(None)
        gateway_end = protocol_factory.buildProtocol(address)
        process = MemoryWorkerProcess(worker, gateway_end, argv, env)
        worker.process = process
        self.pumps.append(
            iosim.connect(
                worker,
                iosim.FakeTransport(worker, isServer=True, hostAddress=address, peerAddress=address),
                gateway_end,
                iosim.FakeTransport(gateway_end, isServer=False, hostAddress=address, peerAddress=address),
                greet=False,
                clock=self._clock,
            )
        )
        self.processes.append(process)
        return process

    def flush(self) -> bool:
        """
        Move what both ends wrote, once.

        @return: whether anything moved.
        """
        moved = False
        for pump in list(self.pumps):
            moved = pump.pump() or moved
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self.pumps.remove(pump)
        return moved
