"""
Supervising the worker: start-up, handshake, restarts with a growing
back-off, and an orderly stop.

Modelled on Twisted's C{ProcessMonitor}: it takes its reactor, sends TERM
then KILL on a timer, and restarts a worker that died with a delay that
doubles while the worker keeps dying quickly.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from hfendpoint.errors import OpenAIError
from hfendpoint.backend._client import WorkerClient, WorkerInfo
from hfendpoint.backend._liveness import DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT, LivenessProbe
from hfendpoint.backend._process import ProcessSpawner, stop_worker
from hfendpoint.backend._protocol import DEFAULT_MAX_MESSAGE_SIZE, WorkerProtocolFactory
from hfendpoint.backend._reserve import DescriptorReserve
from hfendpoint.interfaces import IWorkerProcess, IWorkerSpawner
from hfendpoint.wire import ACCEPTS_KEY, DESCRIBE, FLOAT32_VECTORS, GATEWAY, GATEWAY_KEY, PROTOCOL_KEY, PROTOCOL_VERSION

#: Seconds between two looks at whether a silent worker has read the
#: handshake yet (see L{WorkerService._no_handshake}).
READ_POLL = 0.1

#: What the gateway says of itself in the handshake. C{accepts} lists the
#: protocol extensions it reads: embedding vectors as float32 bytes.
HANDSHAKE = {PROTOCOL_KEY: PROTOCOL_VERSION, GATEWAY_KEY: GATEWAY, ACCEPTS_KEY: [FLOAT32_VECTORS]}


class WorkerStartupError(Exception):
    """
    The worker could not be started, or gave up: the gateway cannot serve.
    """


class WorkerService(Service):
    """
    Keeps one worker process running behind a L{WorkerClient}.

    @ivar state: C{"stopped"}, C{"starting"} (spawned, not yet ready),
        C{"ready"}, C{"unresponsive"} (it missed a liveness probe and is
        being stopped), C{"restarting"} (waiting out the back-off), or
        C{"failed"} (gave up).
    @ivar restarts: how many times the worker was restarted.
    @ivar startup_grace: seconds after which a worker that has read the
        handshake without answering it (one that predates it) is taken as
        ready. A worker that has not read it yet (one still loading its
        model before it reads its socket) is not: it is ready once it
        answers, or once it has read the handshake and stayed silent.
    @ivar stop_timeout: seconds a stopping worker has to exit after its
        socket closes, and again after TERM, before KILL.
    @ivar max_restarts: how many restarts in a row (without a worker that
        stayed up for C{stable_after} seconds) before giving up; C{None}
        for no limit.
    @ivar ping_interval: seconds between two liveness probes of a worker
        that announced it answers them (0: no probe).
    @ivar ping_timeout: seconds a worker has to answer one; a worker that
        misses it is hung, reported as not ready, and restarted.

    @param spawner: the L{IWorkerSpawner} that starts each worker: a real
        process (L{ProcessSpawner}, the default) or, in tests, a worker in
        memory; the supervisor's logic is the same for both.
    @param flusher: the L{TurnFlusher} the worker's protocol coalesces its
        writes with, if any.
    @param reserve: the L{DescriptorReserve} a spawn may draw on when the
        process is out of file descriptors, if any.
    """

    _log = Logger()
    min_delay = 0.5
    max_delay = 30.0
    stable_after = 30.0

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        client: WorkerClient,
        *,
        env: Optional[dict[str, str]] = None,
        max_message_size: Optional[int] = None,
        startup_grace: float = 2.0,
        stop_timeout: float = 10.0,
        max_restarts: Optional[int] = None,
        spawner: Optional[IWorkerSpawner] = None,
        flusher: Any = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        reserve: Optional[DescriptorReserve] = None,
    ) -> None:
        self._reactor = reactor
        self.argv = list(argv)
        self.client = client
        self._env = env
        self._max_message_size = max_message_size
        self.startup_grace = startup_grace
        self.stop_timeout = stop_timeout
        self.max_restarts = max_restarts
        self._spawner = IWorkerSpawner(spawner) if spawner is not None else ProcessSpawner(reactor)
        self._flusher = flusher
        self._reserve = reserve
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._probe = LivenessProbe(reactor, client, ping_interval, ping_timeout, self._hung)
        self._violation: Optional[str] = None
        self.state = "stopped"
        self.restarts = 0
        self._in_a_row = 0
        self._delay = self.min_delay
        self._worker: Optional[IWorkerProcess] = None
        self._started_at = 0.0
        self._pending_restart: Any = None
        self._ready_timer: Any = None
        self._ready_waiters: list[Deferred] = []
        self._failure_waiters: list[Deferred] = []
        self.last_exit: Optional[str] = None
        self._has_been_ready = False
        self._failure_reason = ""

    # Readiness

    def whenReady(self) -> Deferred:
        """
        @return: a Deferred firing once the first worker can take requests,
            or failing with L{WorkerStartupError} if it never will.
        """
        if self.state == "ready":
            return succeed(None)
        if self.state == "failed":
            return self._startup_failure()
        d: Deferred = Deferred()
        self._ready_waiters.append(d)
        return d

    def whenFailed(self) -> Deferred:
        """
        @return: a Deferred firing with a L{WorkerStartupError} when the
            service gives up on the worker (a start-up failure or too many
            restarts), so the program around it can exit.
        """
        d: Deferred = Deferred()
        self._failure_waiters.append(d)
        return d

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def describe(self) -> str:
        """
        The worker's state in a sentence, for readiness checks and logs.
        """
        text = f"The worker is {self.state}"
        if self.restarts:
            text += f" ({self.restarts} restart(s) so far)"
        if self.last_exit and self.state != "ready":
            text += f"; it last {self.last_exit}"
        return text + "."

    # IService

    def startService(self) -> None:
        super().startService()
        if self._reserve is not None:
            self._reserve.hold()
        self._spawn()

    def stopService(self) -> Deferred:
        super().stopService()
        if self._pending_restart is not None and self._pending_restart.active():
            self._pending_restart.cancel()
        self._cancel_ready_timer()
        self._probe.stop()
        worker, self._worker = self._worker, None
        self.state = "stopped"
        if worker is None:
            return succeed(None)
        return self._stop_worker(worker)

    # Start-up

    def _spawn(self) -> None:
        self.state = "starting"
        self._started_at = self._reactor.seconds()
        self._violation = None
        factory = WorkerProtocolFactory(
            self.client, max_message_size=self._max_message_size or DEFAULT_MAX_MESSAGE_SIZE, flusher=self._flusher
        )
        try:
            if self._reserve is None:
                spawned = self._spawner.spawn(self.argv, self._env, factory)
            else:
                spawned = self._reserve.run("start the worker", self._spawner.spawn, self.argv, self._env, factory)
            worker = IWorkerProcess(spawned)
        except Exception as e:
            if not self._has_been_ready:
                self._log.failure("Could not start the worker {argv}", argv=self.argv)
                self._give_up(f"could not start the worker: {e}")
                return
            # The worker ran before, so the command is right: what failed
            # is the moment (no descriptors, no memory, a full process
            # table). Try again later, as after a crash.
            self._log.error("Could not restart the worker: {error}", error=e)
            self.last_exit = f"could not be started ({e})"
            self._schedule_restart()
            return
        self._worker = worker
        self._log.info("Started worker {argv} (pid {pid})", argv=self.argv, pid=worker.pid)
        worker.when_ended().addCallback(lambda how: self._worker_ended(worker, how))
        worker.when_disconnected().addCallback(lambda _: self._socket_closed(worker))
        self._handshake(worker)

    def _handshake(self, worker: IWorkerProcess) -> None:
        self._ready_timer = self._reactor.callLater(
            self.startup_grace, self._no_handshake, worker
        )
        d = self.client.call(DESCRIBE, HANDSHAKE)
        d.addCallbacks(
            lambda reply: self._described(worker, WorkerInfo.from_reply(reply)),
            lambda failure: self._not_described(worker, failure),
        )

    def _not_described(self, worker: IWorkerProcess, failure: Failure) -> None:
        """
        An C{error} reply means an older worker that does not know the
        handshake and is ready; anything else (the worker died, the gateway
        stopped) is handled where the worker's end is.
        """
        error = failure.value
        if isinstance(error, OpenAIError) and error.code == "worker_error":
            self._described(worker, WorkerInfo())

    def _described(self, worker: IWorkerProcess, info: WorkerInfo) -> None:
        if worker is not self._worker:
            return
        self.client.info = info
        if info.ping and self.ping_interval > 0:
            self._probe.start()
        if info.calls is not None:
            self._log.info(
                "Worker serves {calls}{model}",
                calls=", ".join(sorted(info.calls)),
                model=f" (model {info.model})" if info.model else "",
            )
        self._became_ready()

    def _no_handshake(self, worker: IWorkerProcess) -> None:
        """
        The grace is over and the worker has not answered. If it has read
        the handshake, it is an older worker that ignores it, and ready; if
        it has not, it is still starting (loading a model before it reads
        its socket): look again shortly rather than call it ready before
        it can serve.
        """
        self._ready_timer = None
        if worker is not self._worker or self.state != "starting":
            return
        unread = worker.unread_bytes()
        if unread:
            self._ready_timer = self._reactor.callLater(READ_POLL, self._no_handshake, worker)
            return
        self._log.info(
            "The worker read the handshake and did not answer it within {grace}s; "
            "taking it as an older worker that is ready",
            grace=self.startup_grace,
        )
        self._became_ready()

    def _became_ready(self) -> None:
        self._cancel_ready_timer()
        if self.state != "starting":
            return
        self.state = "ready"
        self._has_been_ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def _cancel_ready_timer(self) -> None:
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None

    # Deaths and restarts

    def _socket_closed(self, worker: IWorkerProcess) -> None:
        """
        A worker whose socket is gone (it broke the protocol, or closed it)
        can serve nothing more: stop it so that it can be restarted.
        """
        if worker is not self._worker or self.state == "unresponsive":
            return
        self._probe.stop()
        self._violation = self.client.last_violation
        if self._violation is not None:
            self._log.warn("The worker broke the protocol; stopping the worker")
        else:
            self._log.warn("The worker's socket closed; stopping the worker")
        if self.state != "starting":
            self.state = "restarting"
        self._stop_worker(worker)

    def _hung(self, why: str) -> None:
        """
        The worker missed a liveness probe: it keeps its socket and its
        process but serves nothing. Report it as not ready at once, then
        stop it (what is in flight fails now rather than at its timeout)
        and restart it as after a crash.
        """
        worker = self._worker
        if worker is None or self.state != "ready":
            return
        self._log.warn("The worker is hung ({why}); restarting it", why=why)
        self.state = "unresponsive"
        self._violation = f"stopped answering ({why})"
        self._stop_worker(worker)

    def _worker_ended(self, worker: IWorkerProcess, how: str) -> None:
        if worker is not self._worker:
            return
        self._worker = None
        self._cancel_ready_timer()
        self._probe.stop()
        if self._violation is not None:
            # What ended it matters more than its exit status, which is 0
            # when it read the EOF the gateway gave it.
            how = f"{self._violation.removeprefix('the worker ')} and then {how}"
        self.last_exit = how
        if not self._has_been_ready:
            self._give_up(f"the worker {how} during start-up")
            return
        self._log.error("The worker {how}", how=how)
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        ran_for = self._reactor.seconds() - self._started_at
        if ran_for >= self.stable_after:
            self._in_a_row = 0
            self._delay = self.min_delay
        if self.max_restarts is not None and self._in_a_row >= self.max_restarts:
            self._give_up(
                f"the worker {self.last_exit} and {self._in_a_row} restart(s) "
                f"in a row did not help (--max-restarts {self.max_restarts})"
            )
            return
        self.state = "restarting"
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay)
        self._in_a_row += 1
        self._log.info("Restarting the worker in {delay:.1f}s", delay=delay)
        self._pending_restart = self._reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._pending_restart = None
        self.restarts += 1
        self._spawn()

    def _give_up(self, why: str) -> None:
        self.state = "failed"
        self._failure_reason = why
        self._log.critical("Giving up on the worker: {why}", why=why)
        for d in self._ready_waiters:
            d.errback(WorkerStartupError(why))
        self._ready_waiters = []
        waiters, self._failure_waiters = self._failure_waiters, []
        for d in waiters:
            d.callback(WorkerStartupError(why))

    def _startup_failure(self) -> Deferred:
        d: Deferred = Deferred()
        d.errback(WorkerStartupError(self._failure_reason))
        return d

    # Stopping

    def _stop_worker(self, worker: IWorkerProcess) -> Deferred:
        return stop_worker(self._reactor, worker, self.stop_timeout)
