"""
The whole gateway as one Twisted service, for twistd, for our command
line, and for any Twisted application that wants to embed it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.server import Site

from hfendpoint.service._listeners import RecordingEndpointService, ReservedListening
from hfendpoint.web._admission import AdmissionResource
from hfendpoint.api._app import GatewayApp
from hfendpoint.backend._batching import EmbeddingBatcher
from hfendpoint.backend._budget import ReplyBudget
from hfendpoint.backend._client import WorkerClient
from hfendpoint.api._imagestore import MemoryImageStore
from hfendpoint.backend._pool import WorkerPool
from hfendpoint.backend._process import demo_worker_command
from hfendpoint.backend._reserve import DescriptorReserve
from hfendpoint.backend._supervisor import WorkerService
from hfendpoint.service._config import GatewayConfig
from hfendpoint.service._logging import access_formatter
from hfendpoint.service._metrics import GatewayMetrics
from hfendpoint.web._auth import ApiKeys, KeyedResource
from hfendpoint.web._metrics import MetricsResource
from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.web._cors import CrossSiteResource
from hfendpoint.web._forwarded import ForwardedResource, TrustedProxies
from hfendpoint.web._request_id import RequestIdResource
from hfendpoint.web._site import GatewaySite
from hfendpoint.wire import WORKERS_ENV, WORKER_INDEX_ENV


class GatewayService(MultiService):
    """
    A worker process behind a worker client, and HTTP listeners serving
    the OpenAI API over it.

    Usage from another application::

        config = GatewayConfig(worker_command=["./worker"], listen=["tcp:3000"])
        gateway = GatewayService(reactor, config)
        gateway.setServiceParent(application)

    C{stopService} stops listening, closes the worker's socket, lets the
    worker exit (TERM, then KILL after C{stop_timeout}), and fires only
    when the worker is gone.

    @ivar workers: the L{WorkerService} of each worker process.
    @ivar worker: the first of them.
    @ivar client: the L{WorkerClient}, or with several workers the
        L{WorkerPool} over theirs.
    @ivar site: the L{GatewaySite} serving the API.
    @ivar flusher: the L{TurnFlusher} that the site, its event streams and
        the worker clients and sockets hold their writes of a turn on.
    @ivar ports: the listening ports once started (for tests that listen
        on port 0).
    @ivar descriptors: the L{DescriptorReserve} that worker spawns draw on
        when the process is out of file descriptors, and that the TCP and
        TLS listeners draw on to close the clients they cannot accept then,
        or C{None} when workers are not real processes.
    @ivar reply_budget: the L{ReplyBudget} bounding the memory that the
        workers' replies hold, shared by every worker.
    @ivar stop_reactor_on_failure: whether to stop the reactor when the
        gateway cannot serve (a port it cannot listen on, a worker that
        fails at start-up or too often), as a program of its own should;
        an embedding application may prefer to watch L{whenFailed}.
    """

    _log = Logger(namespace="hfendpoint")
    stop_reactor_on_failure = False

    def __init__(self, reactor: Any, config: GatewayConfig = GatewayConfig(), spawner: Any = None) -> None:
        super().__init__()
        self._reactor = reactor
        self.config = config
        # The one end of turn that the site, the event streams and the
        # worker clients and sockets hold their writes on.
        self.flusher = TurnFlusher(reactor)
        self.descriptors = DescriptorReserve() if spawner is None else None
        self.reply_budget = ReplyBudget(config.max_reply_memory)
        members = self._start_workers(reactor, config, spawner)
        workers = config.workers
        self.workers = [service for service, _ in members]
        self.worker = self.workers[0]
        self.client = members[0][1] if workers == 1 else WorkerPool(members)
        self.drain_timeout = config.drain_timeout
        self.store = MemoryImageStore(config.max_image_capacity)
        # Read from this gateway's state when scraped: made first, so that
        # the parts below can report to it.
        self.metrics = GatewayMetrics(self) if config.metrics else None
        batcher = EmbeddingBatcher(
            self.client,
            max_tokens=config.batch_tokens or 1,
            # Without batching, every call goes at once.
            max_concurrent=workers if config.batch_tokens else 2**31,
            on_batch=self.metrics.embedding_batch_inputs.of(()).observe if self.metrics is not None else None,
        )
        self.api = GatewayApp(
            self.client,
            self.store,
            model_name=config.model_name,
            is_ready=lambda: any(w.ready for w in self.workers),
            not_ready_reason=lambda: " ".join(w.describe() for w in self.workers),
            batcher=batcher,
        )
        self.admission = AdmissionResource(
            reactor,
            self.api.resource(),
            max_in_flight=config.max_in_flight,
            max_waiting=config.max_waiting,
            queue_timeout=config.queue_timeout,
        )
        self.api_keys = ApiKeys(config.api_keys, config.api_key_file)
        self.site = GatewaySite(
            self._resource(config),
            max_body_size=config.max_body_size,
            access_log=config.access_log,
            logFormatter=access_formatter(config.log_format),
            timeout=config.idle_timeout,
            reactor=reactor,
            flusher=self.flusher,
            request_head_timeout=config.request_head_timeout,
            min_body_rate=config.min_body_rate,
            body_rate_grace=config.body_rate_grace,
        )
        self.site.metrics = self.metrics
        self._failure_waiters: list[Deferred] = []
        self._listeners = []
        for description in config.listen:
            self._listen(description, self.site)
        if self.metrics is not None:
            metrics_site = Site(MetricsResource(self.metrics.registry), reactor=reactor)
            metrics_site.noisy = False
            for description in config.metrics_listen:
                self._listen(description, metrics_site)

    def _listen(self, description: str, site: Any) -> None:
        reactor = self._reactor
        if self.descriptors is not None:
            reactor = ReservedListening(reactor, self.descriptors)
        listener = RecordingEndpointService(serverFromString(reactor, description), site)
        listener.setServiceParent(self)
        self._listeners.append(listener)

    def _resource(self, config: GatewayConfig) -> Any:
        """
        The resources every request passes through, outermost first: the
        forwarded headers believed or removed, its id, cross-site checks,
        its API key (when keys are configured), C{/metrics}, then admission
        control and the API (the site itself counts and times each request
        as it finishes it).
        """
        resource = self.admission
        if self.metrics is not None:
            resource = MetricsResource(self.metrics.registry, resource)
        if self.api_keys:
            # With no key and no key file, none is ever asked for.
            resource = KeyedResource(resource, self.api_keys)
        resource = CrossSiteResource(resource, config.cors_origins)
        return ForwardedResource(RequestIdResource(resource), TrustedProxies(config.forwarded_allow_ips))

    def _start_workers(
        self, reactor: Any, config: GatewayConfig, spawner: Any
    ) -> list[tuple[WorkerService, WorkerClient]]:
        """
        One supervised worker process and its client per C{config.workers},
        each told its index, started by C{spawner} (an L{IWorkerSpawner};
        real processes by default).
        """
        command = list(config.worker_command or demo_worker_command())
        members = []
        for index in range(config.workers):
            client = WorkerClient(
                reactor,
                reply_timeout=config.reply_timeout,
                first_reply_timeout=config.first_reply_timeout,
                request_timeout=config.request_timeout,
                flusher=self.flusher,
                budget=self.reply_budget,
            )
            env = dict(config.worker_env)
            env[WORKER_INDEX_ENV] = str(index)
            env[WORKERS_ENV] = str(config.workers)
            service = WorkerService(
                reactor,
                command,
                client,
                env=env,
                max_message_size=config.max_worker_message_size,
                startup_grace=config.startup_grace,
                stop_timeout=config.stop_timeout,
                max_restarts=config.max_restarts,
                spawner=spawner,
                flusher=self.flusher,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                reserve=self.descriptors,
            )
            service.setServiceParent(self)
            members.append((service, client))
        return members

    def reload_api_keys(self) -> None:
        """
        Read the API key file again (the command does on SIGHUP); if it
        cannot be read, the keys read before stay.
        """
        try:
            self.api_keys.reload()
        except OSError as e:
            self._log.error("Keeping the API keys: cannot read {path}: {error}", path=self.api_keys.path, error=e)
        else:
            self._log.info("API keys read again from {path}", path=self.api_keys.path)

    def startService(self) -> None:
        super().startService()
        if not self.api_keys:
            self._log.warn(
                "No API key is configured: anyone who can reach the gateway can use it "
                "(see --api-key)"
            )
        self.whenListening().addErrback(
            lambda f: self._failed(f"cannot listen: {getattr(f.value, 'subFailure', f).value}")
        )
        for worker in self.workers:
            worker.whenFailed().addCallback(lambda e: self._failed(str(e)))

    def stopService(self) -> Deferred:
        """
        Stop in order: stop listening, refuse new costly requests, let those
        in flight finish (up to C{drain_timeout} seconds), then stop the
        worker, and fire once it is gone.
        """
        Service.stopService(self)
        self.admission.close()
        # Closing its last port stops the site's factory, and a stopped
        # factory drops its access log (Twisted's log file, or our stream):
        # the requests finishing during the drain would lose their lines.
        # Holding it started until the drain is over keeps them.
        self.site.doStart()
        listening = gatherResults(
            [listener.stopService() for listener in self._listeners if listener.running],
            consumeErrors=True,
        )
        listening.addErrback(lambda f: self._log.failure("Stopping a listener failed", f))
        listening.addCallback(lambda _: self._drain())
        listening.addCallback(lambda _: self.site.doStop())
        listening.addCallback(
            lambda _: gatherResults([w.stopService() for w in self.workers], consumeErrors=True)
        )
        if self.descriptors is not None:
            listening.addBoth(self._close_reserve)
        return listening

    def _close_reserve(self, result: Any) -> Any:
        self.descriptors.close()  # type: ignore[union-attr]
        return result

    def _drain(self) -> Deferred:
        if self.admission.in_flight or self.admission.waiting:
            self._log.info(
                "Waiting up to {timeout}s for {count} request(s) in flight",
                timeout=self.drain_timeout,
                count=self.admission.in_flight + self.admission.waiting,
            )
        idle = self.admission.when_idle()
        timer = self._reactor.callLater(self.drain_timeout, idle.cancel)

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()
            else:
                self._log.warn(
                    "Stopping with {count} request(s) still in flight",
                    count=self.admission.in_flight,
                )
            return None

        return idle.addBoth(done)

    def whenFailed(self) -> Deferred:
        """
        @return: a Deferred firing with the reason, as a string, if the
            gateway gives up serving.
        """
        d: Deferred = Deferred()
        self._failure_waiters.append(d)
        return d

    def _failed(self, why: str) -> None:
        self._log.critical("hfendpoint cannot serve: {why}", why=why)
        waiters, self._failure_waiters = self._failure_waiters, []
        for d in waiters:
            d.callback(why)
        if self.stop_reactor_on_failure and self._reactor.running:
            self._reactor.stop()

    @property
    def ports(self) -> list[Any]:
        return [listener.port for listener in self._listeners if listener.port is not None]

    def whenListening(self) -> Deferred:
        """
        @return: a Deferred firing once every listener listens, or failing
            if one cannot (a port taken, say).
        """
        return gatherResults(
            [listener.when_listening() for listener in self._listeners], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure if hasattr(f.value, "subFailure") else f)

    def whenReady(self) -> Deferred:
        """
        @return: a Deferred firing once every worker can take requests, or
            failing if one never will.
        """
        return gatherResults([w.whenReady() for w in self.workers], consumeErrors=True).addErrback(
            lambda f: f.value.subFailure if hasattr(f.value, "subFailure") else f
        )
