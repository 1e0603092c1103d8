"""
In-memory fakes of the gateway's seams, for our tests and for anyone
testing code built on the gateway: a worker client made of Python
functions (L{FakeWorkerClient}), and the whole gateway on a
C{MemoryReactorClock} with workers that speak the real protocol in memory
(L{MemoryGateway}).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from hfendpoint._memory import (
    MemoryWorker,
    MemoryWorkerCall,
    MemoryWorkerProcess,
    MemoryWorkerSpawner,
    handler_replies,
)
from hfendpoint.backend._client import WorkerInfo, single_reply
from hfendpoint.errors import OpenAIError, worker_failed
from hfendpoint.interfaces import IWorkerClient

__all__ = [
    "FakeCall",
    "FakeWorkerClient",
    "MemoryAgent",
    "MemoryGateway",
    "MemoryWorker",
    "MemoryWorkerCall",
    "MemoryWorkerProcess",
    "MemoryWorkerSpawner",
    "demo_handlers",
    "handler_replies",
]

Handler = Callable[[Any], Optional[Iterable[Any]]]


class FakeCall:
    """
    A call the fake worker has not finished: a test answers it by hand.
    """

    def __init__(self, client: "FakeWorkerClient", ident: int, name: str, data: Any, on_reply: Any) -> None:
        self._client = client
        self.ident = ident
        self.name = name
        self.data = data
        self._on_reply = on_reply
        self.deferred: Deferred = Deferred(lambda d: client._cancelled(self))
        self.replies = 0

    @property
    def finished(self) -> bool:
        return self.deferred.called

    def reply(self, data: Any) -> None:
        """
        Deliver one C{data} reply, as the real client would.
        """
        if self.finished:
            raise RuntimeError(f"call {self.ident} is finished")
        self.replies += 1
        try:
            done = self._on_reply(data)
        except OpenAIError as e:
            self._end()
            self.deferred.errback(Failure(e))
            return
        if done:
            self._end()
            self.deferred.callback(None)

    def error(self, message: str) -> None:
        """
        Deliver an C{error} reply.
        """
        self.fail(worker_failed(message))

    def fail(self, error: OpenAIError) -> None:
        self._end()
        self.deferred.errback(Failure(error))

    def _end(self) -> None:
        self._client.pending.pop(self.ident, None)


@implementer(IWorkerClient)
class FakeWorkerClient:
    """
    A worker client whose worker is a dict of Python functions.

    Each handler takes the call's C{data} and returns the replies to
    deliver at once (an iterable), or C{None} to leave the call pending
    in L{pending} for the test to answer. A handler may raise
    L{OpenAIError} to fail the call.

    @ivar requests: every C{(name, data)} asked, in order.
    @ivar pending: unfinished calls by id.
    @ivar cancelled: the ids of calls cancelled by the gateway.
    """

    def __init__(self, handlers: Optional[dict[str, Handler]] = None, info: Optional[WorkerInfo] = None) -> None:
        self.handlers = dict(handlers or {})
        self.info = info or WorkerInfo(calls=frozenset(self.handlers))
        self.requests: list[tuple[str, Any]] = []
        self.pending: dict[int, FakeCall] = {}
        self.cancelled: list[int] = []
        self._next_id = 1

    def pending_count(self) -> int:
        return len(self.pending)

    def request(self, name: str, data: Any, on_reply: Any) -> Deferred:
        self.requests.append((name, data))
        handler = self.handlers.get(name)
        if handler is None:
            return fail(worker_failed(f"No handler implemented for '{name}'"))
        call = FakeCall(self, self._next_id, name, data, on_reply)
        self._next_id += 1
        self.pending[call.ident] = call
        try:
            replies = handler(data)
        except OpenAIError as e:
            call.fail(e)
            return call.deferred
        for reply in replies or ():
            if call.finished:
                break
            call.reply(reply)
        return call.deferred

    def call(self, name: str, data: Any) -> Deferred:
        return single_reply(self, name, data)

    def _cancelled(self, call: FakeCall) -> None:
        if self.pending.pop(call.ident, None) is not None:
            self.cancelled.append(call.ident)


def demo_handlers() -> dict[str, Callable[[Any], Any]]:
    """
    The demo worker's calls, for a L{MemoryWorker}: its own handlers, but
    for images, which it paints in a thread; here they are painted at
    once, with its own functions.
    """
    from hfendpoint.workers import demo

    def generations(data: Any) -> Iterable[Any]:
        prompt, count, width, height = demo.image_request(data)
        for index in range(count):
            colours = demo.palette(demo.image_seed(prompt, index))
            yield {"png": demo.vertical_gradient(width, height, colours)}

    def editions(data: Any) -> Iterable[Any]:
        prompt, count, width, height = demo.image_request(data)
        image = demo.require_png(data, "image", required=True)
        mask = demo.require_png(data, "mask", required=False)
        import zlib

        source = zlib.crc32(mask, zlib.crc32(image)).to_bytes(4, "big")
        for index in range(count):
            colours = demo.palette(demo.image_seed(prompt, index, source))
            yield {"png": demo.horizontal_gradient(width, height, colours)}

    return {
        "chat_completions": demo.chat_completions,
        "tokenize": demo.tokenize,
        "detokenize": demo.detokenize,
        "embeddings": demo.embeddings,
        "images_generations": generations,
        "images_editions": editions,
    }


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body written at once: treq's default producer writes on the
    global reactor's cooperator, which a memory reactor never runs.
    """

    def __init__(self, body: Any) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        self.length = len(self.body)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _body_producer(data: Any) -> Any:
    if IBodyProducer.providedBy(data):
        return data
    return _BytesProducer(data)


@implementer(IStreamClientEndpoint, IAgentEndpointFactory)
class _SiteEndpoint:
    """
    Every URL leads to C{site}, over an in-memory connection.
    """

    def __init__(self, gateway: "MemoryGateway") -> None:
        self._gateway = gateway

    def endpointForURI(self, uri: Any) -> "_SiteEndpoint":
        return self

    def connect(self, factory: Any) -> Deferred:
        server_address = IPv4Address("TCP", "127.0.0.1", 80)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self._gateway.pumps))
        server = self._gateway.service.site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, server_address, client_address),
            client,
            iosim.FakeTransport(client, False, client_address, server_address),
            greet=False,
            clock=self._gateway.reactor,
        )
        self._gateway.pumps.append(pump)
        return succeed(client)


@implementer(IAgent)
class MemoryAgent:
    """
    An C{IAgent} whose every request reaches the gateway's site in memory
    and is served as far as it can be before C{request} returns: what the
    gateway can answer without the test's help has been answered.
    """

    def __init__(self, gateway: "MemoryGateway") -> None:
        self._gateway = gateway
        self._agent = Agent.usingEndpointFactory(gateway.reactor, _SiteEndpoint(gateway))

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred:
        d = self._agent.request(method, uri, headers, bodyProducer)
        if self._gateway.autoflush:
            self._gateway.flush()
        return d


class MemoryGateway:
    """
    The whole gateway (site, admission, app, clients, protocols,
    supervisors) on a C{MemoryReactorClock}, its workers L{MemoryWorker}s
    that speak the real protocol over in-memory transports: no process, no
    socket, and time moves only when the test advances L{reactor}.

    @param handlers: the workers' calls (L{MemoryWorker}), or a function
        of a worker's extra environment (C{HFENDPOINT_WORKER_INDEX}, ...)
        returning them; by default the demo worker's (L{demo_handlers}),
        under its model name.
    @param worker: more keyword arguments for each L{MemoryWorker}
        (C{handshake}, C{loading}, ...).
    @param options: the fields of the service's L{GatewayConfig}.
    @ivar service: the L{GatewayService}.
    @ivar spawner: the L{MemoryWorkerSpawner} that started the workers.
    @ivar http: a treq C{HTTPClient} on L{MemoryAgent}.
    @ivar autoflush: whether each request is served as far as it can be
        before the client's call returns; false to send several at once
        (then L{flush}).
    """

    url = "http://gateway.test"
    autoflush = True

    def __init__(
        self,
        handlers: Any = None,
        *,
        reactor: Optional[MemoryReactorClock] = None,
        worker: Optional[dict[str, Any]] = None,
        **options: Any,
    ) -> None:
        from hfendpoint.service._config import GatewayConfig
        from hfendpoint.service._service import GatewayService

        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        worker_options = dict(worker or {})
        if handlers is None:
            handlers = demo_handlers()
            worker_options.setdefault("model", "hfendpoint-demo")

        def make_worker(argv: list[str], env: Optional[dict]) -> dict:
            calls = handlers(env or {}) if callable(handlers) else handlers
            return dict(worker_options, handlers=calls)

        self.spawner = MemoryWorkerSpawner(self.reactor, make_worker)
        self.pumps: list[iosim.IOPump] = []
        options.setdefault("listen", ["tcp:80"])
        options.setdefault("access_log", False)
        config = GatewayConfig(worker_command=["memory-worker"], **options)
        self.service = GatewayService(self.reactor, config, spawner=self.spawner)
        self.http = HTTPClient(MemoryAgent(self), data_to_body_producer=_body_producer)

    @property
    def worker(self) -> MemoryWorker:
        """
        The last worker started.
        """
        return self.spawner.processes[-1].worker

    def start(self) -> None:
        self.service.startService()
        self.flush()

    def stop(self) -> Deferred:
        """
        Stop the service; the Deferred has fired if nothing held it up.
        """
        d = self.service.stopService()
        self.flush()
        return d

    def flush(self) -> None:
        """
        Move every byte written and run every call due now, until nothing
        moves any more.
        """
        reactor = self.reactor
        for _ in range(100000):
            reactor.advance(0)
            moved = self.spawner.flush()
            for pump in list(self.pumps):
                moved = pump.pump() or moved
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if not moved and not any(
                call.getTime() <= reactor.seconds() for call in reactor.getDelayedCalls()
            ):
                return
        raise RuntimeError("the gateway in memory never settles")

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, then settle.
        """
        self.reactor.advance(seconds)
        self.flush()
