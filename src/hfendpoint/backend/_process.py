"""
Launching one worker process: the socket pair, the spawn, and its output.

The launch follows the original gateway (PROTOCOL.md, "Launch"), so a
worker written for it sees the same world: C{HFENDPOINT_FD} naming an
inherited UNIX stream socket with 1 MiB buffers, the whole environment,
stdin from /dev/null, stderr read by the gateway line by line, and stdout
too (unlike the original, which shared its own stdout: here both go
through the gateway's log), and a process group of its own (so a Ctrl-C in the
gateway's terminal reaches the gateway alone, which then stops the worker
in order, and so a stop reaches the worker's own children too).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import struct
import sys
import termios
from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hfendpoint.backend._protocol import DEFAULT_MAX_MESSAGE_SIZE, WorkerProtocolFactory
from hfendpoint.interfaces import IWorkerProcess, IWorkerSpawner
from hfendpoint.wire import FD_ENV, SOCKET_BUFFER_SIZE, WORKER_FD

MAX_STDERR_LINE = 64 * 1024

# Python offers no pre-exec hook through spawnProcess, so a two-line
# trampoline puts the worker in its own process group before exec'ing it.
_TRAMPOLINE = "import os,sys;os.setpgid(0,0);os.execvp(sys.argv[1],sys.argv[1:])"


class WorkerNotFound(Exception):
    """
    The worker command names nothing we can execute.
    """


def demo_worker_command() -> list[str]:
    """
    The built-in demo worker, served when no worker is given.
    """
    return [sys.executable, "-m", "hfendpoint.workers.demo"]


def resolve_worker(argv: Sequence[str]) -> list[str]:
    """
    Check the worker command before the gateway starts, so a typo is a
    clear error rather than a worker that dies at once.

    @raise WorkerNotFound: with a sentence saying what is wrong.
    """
    if not argv:
        raise WorkerNotFound("no worker command was given")
    path = argv[0]
    found = shutil.which(path)
    if found is None:
        if os.sep in path and os.path.exists(path):
            if os.path.isdir(path):
                raise WorkerNotFound(f"worker path {path!r} is a directory")
            raise WorkerNotFound(f"worker path {path!r} is not executable")
        raise WorkerNotFound(f"worker path {path!r} does not exist")
    return [path, *argv[1:]]


class LineLogger:
    """
    Logs what one of the worker's output streams says, line by line, in
    pieces of at most L{MAX_STDERR_LINE} bytes: a line without an end (a
    progress bar, a flood) costs that much memory and no more.
    """

    def __init__(self, log: Logger, stream: str) -> None:
        self._log = log
        self._stream = stream
        self._partial = b""

    def received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        partial = lines.pop()
        while len(partial) >= MAX_STDERR_LINE:
            lines.append(partial[:MAX_STDERR_LINE])
            partial = partial[MAX_STDERR_LINE:]
        self._partial = partial
        for line in lines:
            while len(line) > MAX_STDERR_LINE:
                self._line(line[:MAX_STDERR_LINE])
                line = line[MAX_STDERR_LINE:]
            self._line(line)

    def ended(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if text:
            self._log.info("worker: {line}", line=text, stream=self._stream)


class WorkerProcessProtocol(ProcessProtocol):
    """
    Logs the worker's stdout and stderr line by line and reports its end.

    Both streams go through the log, so that what a worker prints (with
    C{print}, to stdout) lands where its errors do, prefixed, in the log's
    format (JSON lines included), rather than bare among the gateway's
    lines; the event's C{stream} says which it was.

    @ivar how_it_ended: how the process ended, in words, once it has.
    @param log: where the lines go (by default, the global log).
    """

    def __init__(self, log: Optional[Logger] = None) -> None:
        # An instance attribute: a Logger on the class would take the
        # class's name as its namespace, and the worker's lines have one of
        # their own, so that an operator can filter them.
        self._log = log if log is not None else Logger(namespace="hfendpoint.worker", source=self)
        self.how_it_ended: Optional[str] = None
        self._waiters: list[Deferred] = []
        self._out = LineLogger(self._log, "stdout")
        self._err = LineLogger(self._log, "stderr")

    def when_ended(self) -> Deferred:
        """
        @return: a new Deferred firing with L{how_it_ended} once the
            process is gone.
        """
        if self.how_it_ended is not None:
            return succeed(self.how_it_ended)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def outReceived(self, data: bytes) -> None:
        self._out.received(data)

    def errReceived(self, data: bytes) -> None:
        self._err.received(data)

    def processEnded(self, reason: Failure) -> None:
        self._out.ended()
        self._err.ended()
        self.how_it_ended = exit_description(reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.how_it_ended)


@implementer(IWorkerProcess)
class WorkerProcess:
    """
    One running worker: its process and the gateway's end of its socket.

    @ivar pid: the worker's process id (also its process group id).
    """

    _log = Logger()

    def __init__(self, transport: Any, protocol: WorkerProcessProtocol, connection: Any) -> None:
        self._transport = transport
        self.pid: int = transport.pid
        self._process_protocol = protocol
        self._connection = connection
        # The transport forgets its protocol once closed; we need it after.
        self._socket_protocol = connection.protocol

    def when_disconnected(self) -> Deferred:
        """
        @return: a new Deferred firing once the gateway's end of the socket
            is closed (the worker closed it or broke the protocol).
        """
        return self._socket_protocol.when_closed()

    def when_ended(self) -> Deferred:
        """
        @return: a new Deferred firing with how the worker ended, in words,
            once the process is gone and its socket closed.
        """
        return gatherResults(
            [self._process_protocol.when_ended(), self._socket_protocol.when_closed()]
        ).addCallback(lambda results: results[0])

    def close_socket(self) -> None:
        """
        Close our end: a worker reads EOF and should exit by itself.
        """
        if self._connection is not None:
            # What the gateway wrote this turn goes first.
            self._socket_protocol.flush_now()
            self._connection.loseConnection()

    def unread_bytes(self) -> Optional[int]:
        """
        On Linux, what a UNIX socket has sent stays charged to it until the
        peer reads it, so C{TIOCOUTQ} tells whether the worker has read its
        socket (a worker loading its model has not).
        """
        if self._connection is None:
            return None
        try:
            handle = self._connection.getHandle()
            raw = fcntl.ioctl(handle.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, AttributeError, ValueError):
            return None
        return int(struct.unpack("i", raw)[0])

    def signal(self, name: str) -> None:
        """
        Send C{TERM} or C{KILL} to the worker's whole process group.
        """
        number = getattr(signal, f"SIG{name}")
        try:
            os.killpg(self.pid, number)
        except (ProcessLookupError, PermissionError):
            # The group is not there yet (the trampoline has not run) or
            # is gone already: signal the process itself.
            try:
                self._transport.signalProcess(name)
            except ProcessExitedAlready:
                pass


def exit_description(reason: Failure) -> str:
    """
    Say how a worker ended, in words for a log or an error message.
    """
    value = reason.value
    if reason.check(ProcessDone):
        return "exited with status 0"
    if getattr(value, "signal", None):
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = str(value.signal)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


@implementer(IWorkerSpawner)
class ProcessSpawner:
    """
    Starts each worker as a real process on C{reactor}, as the original
    gateway did (see the module's docstring).

    @param reactor: an C{IReactorProcess} and C{IReactorSocket}.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def spawn(self, argv: Sequence[str], env: Optional[dict[str, str]], protocol_factory: Any) -> WorkerProcess:
        reactor = self._reactor
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for end in (ours, theirs):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_SIZE)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_SIZE)
            ours.setblocking(False)
            environment = dict(os.environ)
            environment.update(env or {})
            environment[FD_ENV] = str(WORKER_FD)
            protocol = WorkerProcessProtocol()
            devnull = os.open(os.devnull, os.O_RDONLY)
            try:
                transport = reactor.spawnProcess(
                    protocol,
                    sys.executable,
                    [sys.executable, "-S", "-c", _TRAMPOLINE, *argv],
                    env=environment,
                    childFDs={0: devnull, 1: "r", 2: "r", WORKER_FD: theirs.fileno()},
                )
            finally:
                os.close(devnull)
            connection = reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, protocol_factory)
        finally:
            theirs.close()
            ours.close()
        return WorkerProcess(transport, protocol, connection)


def spawn_worker(
    reactor: Any,
    argv: Sequence[str],
    receiver: Any,
    env: Optional[dict[str, str]] = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    flusher: Any = None,
) -> WorkerProcess:
    """
    Start C{argv} as a worker whose socket replies go to C{receiver}: a
    shorthand for L{ProcessSpawner} with the gateway's own protocol.

    @param env: extra environment variables for the worker, on top of the
        gateway's own.
    """
    factory = WorkerProtocolFactory(receiver, max_message_size=max_message_size, flusher=flusher)
    return ProcessSpawner(reactor).spawn(argv, env, factory)


_stop_log = Logger(namespace="hfendpoint.backend._supervisor")


def stop_worker(reactor: Any, worker: IWorkerProcess, stop_timeout: float) -> Deferred:
    """
    Stop C{worker} in order: close its socket (a worker reads EOF and
    should exit by itself), give it C{stop_timeout} seconds, then TERM,
    then after as long again KILL, as Twisted's C{ProcessMonitor} does.

    @return: a Deferred firing once the worker is gone.
    """
    timers: list[Any] = []

    def escalate(signal_name: str, next_step: Optional[str]) -> None:
        _stop_log.warn("The worker has not exited; sending {signal}", signal=signal_name)
        worker.signal(signal_name)
        if next_step is not None:
            timers.append(reactor.callLater(stop_timeout, escalate, next_step, None))

    def cancel_timers(result: Any) -> None:
        for timer in timers:
            if timer.active():
                timer.cancel()
        return None

    worker.close_socket()
    timers.append(reactor.callLater(stop_timeout, escalate, "TERM", "KILL"))
    return worker.when_ended().addBoth(cancel_timers)
