"""
Tests for the worker library, L{hfendpoint} and L{hfendpoint._sdk}.

Most tests run the library's asyncio loop in-process, with the test playing
the gateway on the other end of a real socket pair; the v0.2 and v0.3 entry
points, which own the process (environment, event loop, exit), are tested
by starting small worker scripts as real subprocesses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import msgpack
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

import hfendpoint
from hfendpoint.library import _sdk as _sdk

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
    calls: dict[str, _sdk.Call], scenario: Scenario, model: Optional[str] = None
) -> Any:
    """
    Serve C{calls} on one end of a socket pair while C{scenario} plays the
    gateway on the other; then close the gateway's end, as a gateway does,
    and wait for the worker to stop.
    """
    ours, theirs = socket.socketpair()
    worker = asyncio.ensure_future(_sdk.serve(theirs, calls, model=model))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    try:
        return await scenario(Peer(reader, writer, ours, worker))
    finally:
        writer.close()
        await worker


def serve_scenario(
    calls: dict[str, _sdk.Call], scenario: Scenario, model: Optional[str] = None
) -> Any:
    """
    Run L{serving} to completion, bounded by L{TIMEOUT} so a broken worker
    fails the test instead of hanging it.
    """
    return asyncio.run(asyncio.wait_for(serving(calls, scenario, model), TIMEOUT))


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
    ) -> None:
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
            stdin=subprocess.DEVNULL,
            stdout=self.output,
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
        self.output.close()


def write_script(testcase: SynchronousTestCase, source: str) -> str:
    directory = FilePath(testcase.mktemp())
    directory.makedirs()
    script = directory.child("worker.py")
    script.setContent(textwrap.dedent(source).encode("utf-8"))
    return script.path


async def echo(data: Any) -> Any:
    return data


class PublicAPITests(SynchronousTestCase):
    """
    The names workers written for the original library use.
    """

    def test_exports(self) -> None:
        self.assertEqual(
            set(hfendpoint.__all__),
            {"Cancelled", "WorkerError", "__version__", "handler", "run"},
        )
        for name in hfendpoint.__all__:
            self.assertTrue(hasattr(hfendpoint, name), name)
        self.assertEqual(hfendpoint.__version__, "0.4.0")
        self.assertIs(hfendpoint.run, _sdk.run)

    def test_no_twisted(self) -> None:
        """
        A worker importing the library does not load Twisted.
        """
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import hfendpoint, sys; assert 'twisted' not in sys.modules, "
                "sorted(m for m in sys.modules if m.startswith('twisted'))",
            ],
            capture_output=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())

    def test_reserved_names(self) -> None:
        self.assertRaises(ValueError, hfendpoint.handler, "hfendpoint.describe")
        self.assertRaises(ValueError, hfendpoint.handler, "")

    def test_handler_returns_function(self) -> None:
        """
        The decorator leaves the function usable as it was.
        """
        self.patch(_sdk, "_registry", {})

        def tokenize(data: Any) -> Any:
            return data

        self.assertIs(hfendpoint.handler("tokenize")(tokenize), tokenize)
        self.assertEqual(_sdk._registry, {"tokenize": tokenize})


class FramingTests(SynchronousTestCase):
    """
    Requests are whole MessagePack values split anywhere; replies of
    concurrent requests interleave.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_split_anywhere(self) -> None:
        """
        Fed one byte at a time, each request starts exactly when its last
        byte arrives, and all are answered.
        """
        messages = [
            {"id": 1, "name": "echo", "data": {"text": "héllo"}},
            {"id": 2, "name": "echo", "data": {"blob": bytes(range(40))}},
            {"id": 3, "name": "echo", "data": {"list": [1, 2.5, None, True]}},
        ]
        started: list[int] = []

        async def scenario() -> list[Any]:
            ours, theirs = socket.socketpair()
            _, worker_writer = await asyncio.open_unix_connection(sock=theirs)
            connection = _sdk.Connection(worker_writer, _sdk.modern_calls({"echo": echo}))
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            peer = Peer(reader, writer, ours, asyncio.get_running_loop().create_future())
            for message in messages:
                payload = msgpack.packb(message, use_bin_type=True)
                for index in range(len(payload)):
                    connection.feed(payload[index : index + 1])
                    started.append(len(connection.requests))
            replies = [await peer.receive() for _ in messages]
            await connection.close()
            writer.close()
            return replies

        replies = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        sizes = [len(msgpack.packb(m, use_bin_type=True)) for m in messages]
        expected = []
        for count, size in enumerate(sizes):
            expected += [count] * (size - 1) + [count + 1]
        self.assertEqual(started, expected)
        self.assertEqual(
            sorted(replies, key=lambda r: r["id"]),
            [{"id": m["id"], "data": m["data"]} for m in messages],
        )

    def test_many_in_one_read(self) -> None:
        """
        Requests arriving together in one write are all served.
        """

        async def scenario(peer: Peer) -> list[Any]:
            peer.writer.write(
                b"".join(
                    msgpack.packb({"id": i, "name": "echo", "data": {"i": i}})
                    for i in range(1, 51)
                )
            )
            return [await peer.receive() for _ in range(50)]

        replies = serve_scenario(_sdk.modern_calls({"echo": echo}), scenario)
        self.assertEqual(
            sorted(r["id"] for r in replies), list(range(1, 51))
        )
        for reply in replies:
            self.assertEqual(reply["data"], {"i": reply["id"]})

    def test_interleaved(self) -> None:
        """
        A request is served while an earlier one is still streaming, and
        their replies interleave on the wire.
        """
        released = asyncio.Event()

        async def slow(data: Any) -> Any:
            yield "a"
            await released.wait()
            yield "c"

        async def quick(data: Any) -> Any:
            released.set()
            return "b"

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "slow")
            first = await peer.receive()
            await peer.send(2, "quick")
            return [first, await peer.receive(), await peer.receive()]

        replies = serve_scenario(
            _sdk.modern_calls({"slow": slow, "quick": quick}), scenario
        )
        self.assertEqual(
            replies,
            [{"id": 1, "data": "a"}, {"id": 2, "data": "b"}, {"id": 1, "data": "c"}],
        )

    def test_big_replies_one_at_a_time(self) -> None:
        """
        Big replies of concurrent requests all arrive whole and in order,
        and each goes into the socket's buffer only once the previous one
        has left it.
        """
        buffered: list[int] = []
        write = asyncio.StreamWriter.write

        def recording_write(writer: asyncio.StreamWriter, data: bytes) -> None:
            if len(data) >= _sdk.BIG_MESSAGE:
                buffered.append(writer.transport.get_write_buffer_size())
            write(writer, data)

        self.patch(asyncio.StreamWriter, "write", recording_write)

        async def images(data: Any) -> Any:
            for part in range(3):
                yield bytes([data["i"], part]) * (_sdk.BIG_MESSAGE // 2 + 1)
            yield "done"

        async def scenario(peer: Peer) -> list[Any]:
            for i in range(1, 6):
                await peer.send(i, "images", {"i": i})
            return [await peer.receive() for _ in range(20)]

        replies = serve_scenario(_sdk.modern_calls({"images": images}), scenario)
        for i in range(1, 6):
            mine = [r["data"] for r in replies if r["id"] == i]
            expected = [bytes([i, part]) * (_sdk.BIG_MESSAGE // 2 + 1) for part in range(3)]
            self.assertEqual(mine, expected + ["done"])
        self.assertEqual(len(buffered), 15)
        self.assertLess(max(buffered), _sdk.BIG_MESSAGE)

    def test_big_values_and_small_replies_do_not_mix(self) -> None:
        """
        Images written in pieces and tokens of another stream, written at
        the same time, all arrive whole and each stream in its order.
        """
        size = 3 * _sdk.WRITE_PIECE + 5

        async def images(data: Any) -> Any:
            for part in range(3):
                yield {"png": bytes([part]) * size, "index": part}

        async def tokens(data: Any) -> Any:
            for i in range(300):
                yield {"content": str(i), "finish_reason": None}

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "images")
            await peer.send(2, "tokens")
            await peer.send(3, "images")
            return [await peer.receive() for _ in range(306)]

        replies = serve_scenario(_sdk.modern_calls({"images": images, "tokens": tokens}), scenario)
        for ident in (1, 3):
            mine = [r["data"] for r in replies if r["id"] == ident]
            self.assertEqual(mine, [{"png": bytes([part]) * size, "index": part} for part in range(3)])
        self.assertEqual(
            [r["data"]["content"] for r in replies if r["id"] == 2], [str(i) for i in range(300)]
        )

    def test_replies_of_a_round_written_together(self) -> None:
        """
        The replies that streams send in the same round of the event loop
        leave in one write; every one arrives, each stream's in order.
        """
        writes: list[bytes] = []
        write = asyncio.StreamWriter.write

        def recording_write(writer: asyncio.StreamWriter, data: bytes) -> None:
            writes.append(bytes(data))
            write(writer, data)

        self.patch(asyncio.StreamWriter, "write", recording_write)

        async def tokens(data: Any) -> Any:
            for i in range(100):
                yield {"content": f"{data['s']}.{i}", "finish_reason": None}

        async def scenario(peer: Peer) -> list[Any]:
            for s in range(1, 21):
                await peer.send(s, "tokens", {"s": s})
            return [await peer.receive() for _ in range(2000)]

        replies = serve_scenario(_sdk.modern_calls({"tokens": tokens}), scenario)
        for s in range(1, 21):
            self.assertEqual(
                [r["data"]["content"] for r in replies if r["id"] == s], [f"{s}.{i}" for i in range(100)]
            )
        self.assertLess(len(writes), 2000 // 10)

    def test_first_reply_of_a_round_written_at_once(self) -> None:
        """
        A lone reply does not wait for the end of the round; the next ones
        of the same round do, and all arrive in order.
        """

        async def scenario() -> tuple[bytes, bytes]:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            _, writer = await asyncio.open_unix_connection(sock=theirs)
            connection = _sdk.Connection(writer, {})
            await connection.send({"id": 1, "data": "a"})
            await connection.send({"id": 2, "data": "b"})
            first = ours.recv(4096)
            await asyncio.sleep(0)
            rest = ours.recv(4096)
            await connection.close()
            ours.close()
            return first, rest

        first, rest = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        self.assertEqual(first, msgpack.packb({"id": 1, "data": "a"}))
        self.assertEqual(rest, msgpack.packb({"id": 2, "data": "b"}))

    def test_long_round_written_every_write_every_replies(self) -> None:
        """
        A round of thousands of replies (a model's step over thousands of
        streams) is written WRITE_EVERY replies at a time, not only at its
        end, so that the gateway reads the first while the rest are made.
        """

        async def scenario() -> tuple[bytes, bytes]:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            _, writer = await asyncio.open_unix_connection(sock=theirs)
            connection = _sdk.Connection(writer, {})
            count = 1 + _sdk.WRITE_EVERY + 3
            for i in range(count):
                await connection.send({"id": i, "data": "t"}, sender=object())
            before_the_end = ours.recv(1 << 20)
            await asyncio.sleep(0)
            rest = ours.recv(1 << 20)
            await connection.close()
            ours.close()
            return before_the_end, rest

        before_the_end, rest = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        every = _sdk.WRITE_EVERY
        self.assertEqual(
            before_the_end, b"".join(msgpack.packb({"id": i, "data": "t"}) for i in range(1 + every))
        )
        self.assertEqual(rest, b"".join(msgpack.packb({"id": i, "data": "t"}) for i in range(1 + every, 4 + every)))

    def test_streams_stepped_together_keep_their_order(self) -> None:
        """
        Streams that each send one reply per step of a shared clock (a
        model decoding a batch) reply in the same order at every step:
        none is made to yield and fall behind the others.
        """
        waiters: list[asyncio.Future] = []

        async def step() -> None:
            future = asyncio.get_running_loop().create_future()
            waiters.append(future)
            await future

        async def stepped(data: Any) -> Any:
            for i in range(20):
                yield i
                await step()

        async def scenario(peer: Peer) -> list[Any]:
            for ident in range(1, 41):
                await peer.send(ident, "stepped")
            replies = [await peer.receive() for _ in range(40)]
            for _ in range(19):
                while len(waiters) < 40:
                    await asyncio.sleep(0)
                ready = waiters[:]
                del waiters[:]
                for future in ready:
                    future.set_result(None)
                replies += [await peer.receive() for _ in range(40)]
            return replies

        replies = serve_scenario(_sdk.modern_calls({"stepped": stepped}), scenario)
        steps = [replies[i : i + 40] for i in range(0, 800, 40)]
        for number, replies_of_step in enumerate(steps):
            self.assertEqual({r["data"] for r in replies_of_step}, {number})
        orders = [[r["id"] for r in replies_of_step] for replies_of_step in steps[1:]]
        self.assertEqual(orders, [orders[0]] * len(orders))

    def test_malformed_skipped(self) -> None:
        """
        Messages that are not requests get no reply and stop nothing.
        """

        async def scenario(peer: Peer) -> Any:
            for message in [
                5,
                "echo",
                [1, "echo", {}],
                {"id": "1", "name": "echo"},
                {"id": True, "name": "echo"},
                {"id": 2, "name": 7},
                {"name": "echo"},
            ]:
                await peer.send_message(message)
            await peer.send(9, "echo", {"ok": 1})
            return await peer.receive()

        reply = serve_scenario(_sdk.modern_calls({"echo": echo}), scenario)
        self.assertEqual(reply, {"id": 9, "data": {"ok": 1}})
        skipped = [m for m in self.logs.messages() if "malformed" in m]
        self.assertEqual(len(skipped), 7, skipped)

    def test_garbage_stops(self) -> None:
        """
        A stream that is not MessagePack cannot be resynchronised: the
        worker says so and stops rather than guessing.
        """

        async def scenario(peer: Peer) -> None:
            peer.writer.write(b"\xc1")
            await peer.worker

        serve_scenario(_sdk.modern_calls({}), scenario)
        self.assertTrue(any("malformed MessagePack" in m for m in self.logs.messages()))


class ModernHandlerTests(SynchronousTestCase):
    """
    v0.3 handlers: whatever shape they take, they answer.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def call(self, function: Any, data: Any = None, count: int = 1) -> list[Any]:
        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "call", data)
            return [await peer.receive() for _ in range(count)]

        return serve_scenario(_sdk.modern_calls({"call": function}), scenario)

    def test_sync_function(self) -> None:
        """
        A plain function runs off the event loop's thread and its result is
        the one reply.
        """

        def double(data: Any) -> Any:
            return {
                "twice": data["x"] * 2,
                "thread": threading.current_thread() is not threading.main_thread(),
            }

        self.assertEqual(
            self.call(double, {"x": 21}),
            [{"id": 1, "data": {"twice": 42, "thread": True}}],
        )

    def test_coroutine(self) -> None:
        async def double(data: Any) -> Any:
            await asyncio.sleep(0)
            return data["x"] * 2

        self.assertEqual(self.call(double, {"x": 4}), [{"id": 1, "data": 8}])

    def test_returns_awaitable(self) -> None:
        def later(data: Any) -> Any:
            return asyncio.sleep(0, result={"later": data["x"]})

        self.assertEqual(self.call(later, {"x": 1}), [{"id": 1, "data": {"later": 1}}])

    def test_async_generator(self) -> None:
        async def count(data: Any) -> Any:
            for n in range(data["n"]):
                yield {"n": n}

        self.assertEqual(
            self.call(count, {"n": 3}, count=3),
            [{"id": 1, "data": {"n": n}} for n in range(3)],
        )

    def test_returns_async_iterator(self) -> None:
        """
        A plain function handing back an async generator streams it, as a
        decorator may hide what the handler is.
        """

        async def count(data: Any) -> Any:
            for n in range(2):
                yield n

        def wrapped(data: Any) -> Any:
            return count(data)

        self.assertEqual(
            self.call(wrapped, count=2), [{"id": 1, "data": 0}, {"id": 1, "data": 1}]
        )

    def test_exception(self) -> None:
        def broken(data: Any) -> Any:
            raise ValueError("bad value")

        self.assertEqual(self.call(broken), [{"id": 1, "error": "bad value"}])
        self.assertIsNotNone(self.logs.records[-1].exc_info)

    def test_worker_error(self) -> None:
        async def refuse(data: Any) -> Any:
            raise hfendpoint.WorkerError("input must not be empty")

        self.assertEqual(self.call(refuse), [{"id": 1, "error": "input must not be empty"}])

    def test_empty_message(self) -> None:
        """
        An exception without a message still says something.
        """

        async def broken(data: Any) -> Any:
            raise RuntimeError()

        self.assertEqual(self.call(broken), [{"id": 1, "error": "RuntimeError"}])

    def test_generator_fails_midway(self) -> None:
        async def partial(data: Any) -> Any:
            yield 1
            raise hfendpoint.WorkerError("out of memory")

        self.assertEqual(
            self.call(partial, count=2),
            [{"id": 1, "data": 1}, {"id": 1, "error": "out of memory"}],
        )

    def test_unserializable_result(self) -> None:
        """
        A result MessagePack cannot carry fails its request, not the worker.
        """
        [reply] = self.call(lambda data: {"value": object()})
        self.assertEqual(reply["id"], 1)
        self.assertIn("serialize", reply["error"])

    def test_unknown_name(self) -> None:
        async def scenario(peer: Peer) -> Any:
            await peer.send(7, "transcribe")
            return await peer.receive()

        self.assertEqual(
            serve_scenario(_sdk.modern_calls({}), scenario),
            {"id": 7, "error": "No handler implemented for 'transcribe'"},
        )

    def test_describe(self) -> None:
        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "hfendpoint.describe", {"protocol": 2})
            reply = await peer.receive()
            await peer.send(2, "echo", {"after": True})
            return [reply, await peer.receive()]

        calls = _sdk.modern_calls({"tokenize": echo, "echo": echo, "embeddings": echo})
        self.assertEqual(
            serve_scenario(calls, scenario, model="tiny"),
            [
                {
                    "id": 1,
                    "data": {
                        "protocol": 2,
                        "calls": ["echo", "embeddings", "tokenize"],
                        "model": "tiny",
                        "cancel": True,
                    },
                },
                {"id": 2, "data": {"after": True}},
            ],
        )

    def vectors_after(self, handshake: Any, reply: Any) -> Any:
        async def scenario(peer: Peer) -> Any:
            if handshake is not None:
                await peer.send(1, "hfendpoint.describe", handshake)
                await peer.receive()
            await peer.send(2, "embeddings", {"input": [[1], [2]]})
            return (await peer.receive())["data"]

        calls = _sdk.modern_calls({"embeddings": lambda data: reply})
        return serve_scenario(calls, scenario)

    def test_vectors_as_float32_when_the_gateway_accepts_them(self) -> None:
        """
        Lists of floats cross the socket as little-endian float32 bytes when
        the handshake says the gateway reads them.
        """
        handshake = {"protocol": 2, "accepts": ["float32_vectors"]}
        data = self.vectors_after(handshake, {"embeddings": [[0.5, -0.25], (1.0, 2.0)], "extra": 1})
        self.assertEqual(
            data,
            {"embeddings": [struct.pack("<2f", 0.5, -0.25), struct.pack("<2f", 1.0, 2.0)], "extra": 1},
        )

    def test_vectors_as_sent_otherwise(self) -> None:
        """
        An older gateway (no handshake, or one without C{accepts}) gets the
        lists; anything that is not a list of numbers is left as it is.
        """
        reply = {"embeddings": [[0.5, -0.25]]}
        self.assertEqual(self.vectors_after(None, reply), reply)
        self.assertEqual(self.vectors_after({"protocol": 2}, reply), reply)
        accepting = {"protocol": 2, "accepts": ["float32_vectors"]}
        odd = {"embeddings": [[0.5, "x"]]}
        self.assertEqual(self.vectors_after(accepting, odd), odd)
        raw = {"embeddings": [b"\x00\x00\x00\x00"]}
        self.assertEqual(self.vectors_after(accepting, raw), raw)

    def test_model_name(self) -> None:
        """
        The keyword wins over the environment, which wins over nothing.
        """
        self.patch(os, "environ", {"HFENDPOINT_MODEL_NAME": "from-env"})
        self.assertEqual(_sdk.model_name("mine"), "mine")
        self.assertEqual(_sdk.model_name(None), "from-env")
        self.patch(os, "environ", {})
        self.assertIsNone(_sdk.model_name(None))


class CancelTests(SynchronousTestCase):
    """
    C{hfendpoint.cancel} stops a request, which then sends nothing more.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_async_generator(self) -> None:
        """
        A cancelled async generator is closed (its C{finally} runs) and
        sends nothing after the cancel, nor any error.
        """
        closed = asyncio.Event()

        async def ticks(data: Any) -> Any:
            try:
                yield {"n": 0}
                await asyncio.Event().wait()
                yield {"n": 1}
            finally:
                closed.set()

        async def was_closed(data: Any) -> Any:
            await closed.wait()
            return "closed"

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "ticks")
            replies = [await peer.receive()]
            await peer.cancel(2, 1)
            await peer.send(3, "was_closed")
            replies.append(await peer.receive())
            await peer.send(4, "echo", "last")
            replies.append(await peer.receive())
            return replies

        calls = _sdk.modern_calls({"ticks": ticks, "was_closed": was_closed, "echo": echo})
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 1, "data": {"n": 0}},
                {"id": 3, "data": "closed"},
                {"id": 4, "data": "last"},
            ],
        )

    def test_endless_fast_stream(self) -> None:
        """
        A handler that sends without ever waiting still lets the cancel be
        read, and stops.
        """

        async def endless(data: Any) -> Any:
            while True:
                yield "token"

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "endless")
            for _ in range(50):
                await peer.receive()
            await peer.cancel(2, 1)
            await peer.send(3, "echo", "after")
            while True:
                reply = await peer.receive()
                if reply["id"] == 3:
                    return reply

        calls = _sdk.modern_calls({"endless": endless, "echo": echo})
        self.assertEqual(serve_scenario(calls, scenario), {"id": 3, "data": "after"})

    def test_coroutine(self) -> None:
        """
        A cancelled coroutine is cancelled, and even a value it returns
        anyway is not sent.
        """
        cancelled = asyncio.Event()

        async def stubborn(data: Any) -> Any:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
            return "too late"

        async def was_cancelled(data: Any) -> Any:
            await cancelled.wait()
            return "cancelled"

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "stubborn")
            # Once this is answered, the earlier request has started.
            await peer.send(2, "echo", "started")
            replies = [await peer.receive()]
            await peer.cancel(5, 1)
            await peer.send(3, "was_cancelled")
            replies.append(await peer.receive())
            await peer.send(4, "echo", "last")
            replies.append(await peer.receive())
            return replies

        calls = _sdk.modern_calls(
            {"stubborn": stubborn, "was_cancelled": was_cancelled, "echo": echo}
        )
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 2, "data": "started"},
                {"id": 3, "data": "cancelled"},
                {"id": 4, "data": "last"},
            ],
        )

    def test_unknown_target(self) -> None:
        """
        Cancelling a finished or unknown request is no error and no reply.
        """

        async def scenario(peer: Peer) -> Any:
            await peer.cancel(1, 12345)
            await peer.send_message({"id": 2, "name": "hfendpoint.cancel", "data": {}})
            await peer.send(3, "echo", "still here")
            return await peer.receive()

        self.assertEqual(
            serve_scenario(_sdk.modern_calls({"echo": echo}), scenario),
            {"id": 3, "data": "still here"},
        )

    def test_legacy_thread(self) -> None:
        """
        A v0.2 handler cannot be interrupted, but once its request is
        cancelled its C{send_chunk} raises L{_sdk.Cancelled} and nothing
        more goes out.
        """
        proceed = threading.Event()
        finished = threading.Event()
        outcome: list[str] = []

        def slow(data: Any, send_chunk: Any) -> None:
            try:
                send_chunk({"n": 0})
                proceed.wait(TIMEOUT)
                send_chunk({"n": 1})
                outcome.append("sent")
            except _sdk.Cancelled:
                outcome.append("cancelled")
                raise
            finally:
                finished.set()

        def nothing(data: Any, send_chunk: Any) -> None:
            send_chunk(data)

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "slow")
            replies = [await peer.receive()]
            await peer.cancel(2, 1)
            await peer.send(3, "nothing", "barrier")
            replies.append(await peer.receive())
            proceed.set()
            await asyncio.to_thread(finished.wait, TIMEOUT)
            await peer.send(4, "nothing", "last")
            replies.append(await peer.receive())
            return replies

        calls = _sdk.legacy_calls({"slow": slow, "nothing": nothing})
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 1, "data": {"n": 0}},
                {"id": 3, "data": "barrier"},
                {"id": 4, "data": "last"},
            ],
        )
        self.assertEqual(outcome, ["cancelled"])


class LegacyHandlerTests(SynchronousTestCase):
    """
    v0.2 handlers, C{handler(data, send_chunk)}, in-process.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_concurrent(self) -> None:
        """
        Two blocking handlers run at once: the first waits for the second.
        """
        arrived = threading.Event()

        def waiter(data: Any, send_chunk: Any) -> None:
            if not arrived.wait(TIMEOUT / 2):
                raise hfendpoint.WorkerError("the other request never ran")
            send_chunk("waited")

        def arriver(data: Any, send_chunk: Any) -> None:
            arrived.set()
            send_chunk("arrived")

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "waiter")
            await peer.send(2, "arriver")
            return [await peer.receive(), await peer.receive()]

        calls = _sdk.legacy_calls({"waiter": waiter, "arriver": arriver})
        self.assertEqual(
            sorted(serve_scenario(calls, scenario), key=lambda r: r["id"]),
            [{"id": 1, "data": "waited"}, {"id": 2, "data": "arrived"}],
        )

    def test_errors(self) -> None:
        def refuse(data: Any, send_chunk: Any) -> None:
            raise hfendpoint.WorkerError("no such model")

        def broken(data: Any, send_chunk: Any) -> None:
            send_chunk("partial")
            raise KeyError("input")

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "refuse")
            first = await peer.receive()
            await peer.send(2, "broken")
            return [first, await peer.receive(), await peer.receive()]

        calls = _sdk.legacy_calls({"refuse": refuse, "broken": broken})
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 1, "error": "no such model"},
                {"id": 2, "data": "partial"},
                {"id": 2, "error": "'input'"},
            ],
        )


class EndTests(SynchronousTestCase):
    """
    The worker ends cleanly when the gateway goes away, whichever way.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_eof_cancels(self) -> None:
        """
        EOF stops the requests in flight and returns normally.
        """
        ended: list[bool] = []

        async def stuck(data: Any) -> Any:
            try:
                await asyncio.Event().wait()
            finally:
                ended.append(True)

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "stuck")
            await peer.send(2, "echo", "started")
            return await peer.receive()

        calls = _sdk.modern_calls({"stuck": stuck, "echo": echo})
        self.assertEqual(serve_scenario(calls, scenario), {"id": 2, "data": "started"})
        self.assertEqual(ended, [True])
        self.assertEqual(self.logs.messages(logging.WARNING), [])

    def test_write_to_closed_socket(self) -> None:
        """
        When replies can no longer be written, the worker says so once and
        stops, even though the gateway never closed its writing side.
        """
        closed = []

        async def flood(data: Any) -> Any:
            try:
                for n in itertools.count():
                    yield {"n": n, "padding": "x" * 1000}
            finally:
                closed.append(True)

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "flood")
            first = await peer.receive()
            peer.sock.shutdown(socket.SHUT_RD)
            await peer.worker
            return first, list(closed)

        reply, closed_then = serve_scenario(_sdk.modern_calls({"flood": flood}), scenario)
        self.assertEqual(reply["data"]["n"], 0)
        self.assertEqual(closed_then, [True])
        warnings = self.logs.messages(logging.WARNING)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("Lost the connection", warnings[0])


LEGACY_WORKER = """
    import sys
    import hfendpoint

    def single(data, send_chunk):
        send_chunk({"echo": data})

    def multi(data, send_chunk):
        for n in range(data["n"]):
            send_chunk({"n": n})

    def refuse(data, send_chunk):
        raise hfendpoint.WorkerError("cannot do " + data["what"])

    hfendpoint.run({"single": single, "multi": multi, "refuse": refuse})
    print("run returned", file=sys.stderr)
"""

MODERN_WORKER = """
    import asyncio
    import sys
    import hfendpoint

    @hfendpoint.handler("tokenize")
    def tokenize(data):
        return {"tokens": [[len(text)] for text in data["input"]]}

    @hfendpoint.handler("chat_completions")
    async def chat(data):
        yield {"content": "Hi", "finish_reason": None}
        yield {"content": "", "finish_reason": "stop"}

    asyncio.run(hfendpoint.run())
    print("run returned", file=sys.stderr)
"""


class ProcessTests(SynchronousTestCase):
    """
    Worker scripts written for the original library, run as the gateway
    runs them.
    """

    def test_legacy_worker(self) -> None:
        worker = WorkerProcess(self, [write_script(self, LEGACY_WORKER)])
        self.assertEqual(worker.data("single", {"x": "é"}), [{"echo": {"x": "é"}}])
        self.assertEqual(worker.data("multi", {"n": 3}, 3), [{"n": 0}, {"n": 1}, {"n": 2}])
        self.assertEqual(
            worker.call("refuse", {"what": "that"})[0]["error"], "cannot do that"
        )
        self.assertEqual(
            worker.call("hfendpoint.describe", {"protocol": 2})[0]["data"],
            {
                "protocol": 2,
                "calls": ["multi", "refuse", "single"],
                "model": None,
                "cancel": True,
            },
        )
        self.assertEqual(worker.finish(), 0, worker.log())
        self.assertIn("run returned", worker.log())
        self.assertNotIn("Traceback", worker.log())

    def test_modern_worker(self) -> None:
        worker = WorkerProcess(
            self,
            [write_script(self, MODERN_WORKER)],
            env={"HFENDPOINT_MODEL_NAME": "org/model"},
        )
        self.assertEqual(
            worker.data("tokenize", {"input": ["abc", ""]}), [{"tokens": [[3], [0]]}]
        )
        self.assertEqual(
            worker.data("chat_completions", {"messages": []}, 2),
            [
                {"content": "Hi", "finish_reason": None},
                {"content": "", "finish_reason": "stop"},
            ],
        )
        self.assertEqual(
            worker.call("embeddings", {"input": []})[0]["error"],
            "No handler implemented for 'embeddings'",
        )
        self.assertEqual(
            worker.data("hfendpoint.describe", {"protocol": 2}),
            [
                {
                    "protocol": 2,
                    "calls": ["chat_completions", "tokenize"],
                    "model": "org/model",
                    "cancel": True,
                }
            ],
        )
        self.assertEqual(worker.finish(), 0, worker.log())
        self.assertIn("run returned", worker.log())
        self.assertNotIn("Traceback", worker.log())

    def test_not_started_by_gateway(self) -> None:
        """
        Started by hand, a worker explains itself instead of a traceback.
        """
        environment = {
            key: value for key, value in os.environ.items() if key != "HFENDPOINT_FD"
        }
        result = subprocess.run(
            [sys.executable, write_script(self, MODERN_WORKER)],
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            b"this program is an hfendpoint worker; start it through the "
            b"hfendpoint gateway",
            result.stderr,
        )
        self.assertNotIn(b"Traceback", result.stderr)


class PackPartsTests(SynchronousTestCase):
    """
    Big bytes values of a reply's data go out as they are, the rest packed
    around them, and the whole is what msgpack would have packed.
    """

    def test_small_messages_packed_whole(self) -> None:
        for message in (
            {"id": 1, "data": {"content": "x", "finish_reason": None}},
            {"id": 2, "data": [b"a" * _sdk.BIG_MESSAGE]},
            {"id": 3, "data": b"b" * _sdk.BIG_MESSAGE},
            {"id": 4, "error": "no"},
        ):
            self.assertEqual(_sdk.pack_parts(message), [msgpack.packb(message, use_bin_type=True)])

    def test_big_values_apart(self) -> None:
        first = bytes(range(256)) * (_sdk.BIG_MESSAGE // 256)
        second = b"z" * (_sdk.BIG_MESSAGE + 3)
        message = {
            "id": 7,
            "data": {"a": 1, "png": first, "small": b"s" * 10, "more": second, "t": "é"},
        }
        parts = _sdk.pack_parts(message)
        self.assertEqual(b"".join(parts), msgpack.packb(message, use_bin_type=True))
        self.assertIs(parts[1], first)
        self.assertIs(parts[3], second)
        self.assertEqual(len(parts), 5)
        self.assertEqual(msgpack.unpackb(b"".join(parts)), message)
