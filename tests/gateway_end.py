"""
The gateway's end of the worker socket, played by the worker library's
tests (and the demo worker's).

Most tests run the library's asyncio loop in-process, with the test playing
the gateway on the other end of a real socket pair (L{serve_scenario}); the
v0.2 and v0.3 entry points, which own the process (environment, event loop,
exit), are tested by starting small worker scripts as real subprocesses
(L{WorkerProcess}).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import msgpack
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.library import serve
from hfendpoint.library._connection import Call

TIMEOUT = 10


class Peer:
    """
    The gateway's end of the socket, driven from inside the worker's own
    event loop.

    @ivar worker: the task serving the worker's end.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sock: socket.socket,
        worker: "asyncio.Future[None]",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.sock = sock
        self.worker = worker
        self._unpacker = msgpack.Unpacker(raw=False)

    async def send(self, request_id: int, name: str, data: Any = None) -> None:
        await self.send_message({"id": request_id, "name": name, "data": data or {}})

    async def send_message(self, message: Any) -> None:
        self.writer.write(msgpack.packb(message, use_bin_type=True))
        await self.writer.drain()

    async def cancel(self, request_id: int, target: int) -> None:
        await self.send(request_id, "hfendpoint.cancel", {"id": target})

    async def receive(self) -> Any:
        while True:
            for message in self._unpacker:
                return message
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("the worker closed the socket")
            self._unpacker.feed(data)


Scenario = Callable[[Peer], Awaitable[Any]]


async def serving(
    calls: dict[str, Call], scenario: Scenario, model: Optional[str] = None, features: Any = ()
) -> Any:
    """
    Serve C{calls} on one end of a socket pair while C{scenario} plays the
    gateway on the other; then close the gateway's end, as a gateway does,
    and wait for the worker to stop.
    """
    ours, theirs = socket.socketpair()
    worker = asyncio.ensure_future(serve(theirs, calls, model=model, features=features))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    try:
        return await scenario(Peer(reader, writer, ours, worker))
    finally:
        writer.close()
        await worker


def serve_scenario(
    calls: dict[str, Call], scenario: Scenario, model: Optional[str] = None, features: Any = ()
) -> Any:
    """
    Run L{serving} to completion, bounded by L{TIMEOUT} so a broken worker
    fails the test instead of hanging it.
    """
    return asyncio.run(asyncio.wait_for(serving(calls, scenario, model, features), TIMEOUT))


class LogCapture(logging.Handler):
    """
    Keeps the library's log records for assertions (and out of the test
    output).
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


def capture_logs(testcase: SynchronousTestCase) -> LogCapture:
    capture = LogCapture()
    logger = logging.getLogger("hfendpoint")
    logger.addHandler(capture)
    testcase.addCleanup(logger.removeHandler, capture)
    return capture


class WorkerProcess:
    """
    A worker started as a real subprocess, the way the gateway starts it,
    with the test on the gateway's end of the socket. Every wait is bounded.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        args: list[str],
        env: Optional[dict[str, str]] = None,
        piped: bool = False,
    ) -> None:
        """
        @param piped: give the worker pipes for stdin and stdout
            (C{process.stdin}, C{process.stdout}), for a test to talk to its
            script outside the protocol; otherwise stdin is C{/dev/null} and
            stdout goes to the log.
        """
        ours, theirs = socket.socketpair()
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("HFENDPOINT_")
        }
        environment.update(env or {})
        environment["HFENDPOINT_FD"] = str(theirs.fileno())
        self.output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, *args],
            env=environment,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else self.output,
            stderr=self.output,
        )
        theirs.close()
        ours.settimeout(TIMEOUT)
        self.sock = ours
        self._ids = itertools.count(1)
        self._unpacker = msgpack.Unpacker(raw=False)
        testcase.addCleanup(self.stop)

    def send(self, message: Any) -> None:
        self.sock.sendall(msgpack.packb(message, use_bin_type=True))

    def receive(self) -> Any:
        while True:
            for message in self._unpacker:
                return message
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the worker closed the socket")
            self._unpacker.feed(data)

    def call(self, name: str, data: Any, count: int = 1) -> list[Any]:
        """
        Send one request and collect C{count} replies to it, which must be
        the only traffic meanwhile.
        """
        request_id = next(self._ids)
        self.send({"id": request_id, "name": name, "data": data})
        replies = [self.receive() for _ in range(count)]
        for reply in replies:
            assert reply["id"] == request_id, (reply, request_id)
        return replies

    def data(self, name: str, data: Any, count: int = 1) -> list[Any]:
        """
        Like L{call}, for replies that must all be successful.
        """
        replies = self.call(name, data, count)
        for reply in replies:
            assert "error" not in reply, reply
        return [reply["data"] for reply in replies]

    def finish(self) -> int:
        """
        Close the gateway's end, as a stopping gateway does.

        @return: the exit code of the worker.
        """
        self.sock.close()
        return self.process.wait(TIMEOUT)

    def log(self) -> str:
        self.output.seek(0)
        return self.output.read().decode("utf-8", "replace")

    def stop(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.output.close()


def write_script(testcase: SynchronousTestCase, source: str) -> str:
    directory = FilePath(testcase.mktemp())
    directory.makedirs()
    script = directory.child("worker.py")
    script.setContent(textwrap.dedent(source).encode("utf-8"))
    return script.path


async def echo(data: Any) -> Any:
    return data
