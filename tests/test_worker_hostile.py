"""
Hostile and careless workers: garbage before the handshake, text on the
socket, replies too big for the memory budget, a crash loop, a flood on
stdout and stderr, and a gateway out of file descriptors. Each time the
gateway survives and says what happened.
"""

from __future__ import annotations

import errno
import io
import json
import os
from types import SimpleNamespace
from typing import Any

import msgpack
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.internet.error import ProcessDone
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.backend._process import MAX_STDERR_LINE, WorkerProcessProtocol
from hfendpoint.backend._protocol import WorkerProtocol
from hfendpoint.backend._reserve import DescriptorReserve
from hfendpoint.backend._supervisor import WorkerStartupError

from .gateway import start_memory_gateway
from .test_supervisor import Harness


class Events:
    """
    The log events of a test.
    """

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def formats(self, level: str) -> list[str]:
        return [e.get("log_format", "") for e in self.events if e.get("log_level") and e["log_level"].name == level]


def chat(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


class Receiver:
    flusher = None

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lost: list[Failure] = []

    def connected(self, protocol: Any) -> None:
        pass

    def message_received(self, message: Any, last: bool, size: int) -> None:
        self.messages.append(message)

    def disconnected(self, protocol: Any, reason: Failure) -> None:
        self.lost.append(reason)


class GarbageTests(SynchronousTestCase):
    def violation(self, *reads: bytes) -> str:
        receiver = Receiver()
        protocol = WorkerProtocol(receiver)
        protocol.makeConnection(StringTransport())
        for data in reads:
            protocol.dataReceived(data)
        protocol.connectionLost(Failure(Exception("closed")))
        return str(receiver.lost[0].value)

    def test_malformed_says_what_and_where(self) -> None:
        why = self.violation(msgpack.packb({"id": 1, "data": 2}), b"\x91\xc1 trailing")
        self.assertIn("at byte 12 of its output", why)
        self.assertIn("byte 0xc1 begins no MessagePack value", why)
        self.assertIn("trailing", why)
        self.assertIn("not UTF-8", self.violation(b"\xa3\xff\xfe\xfd"))
        self.assertIn("nested deeper", self.violation(b"\x91" * 5000))

    def test_text_on_the_socket_is_one_warning_per_read(self) -> None:
        """
        Printed ASCII text is valid MessagePack (an integer per byte): it
        is dropped with one warning per read, not one per byte.
        """
        events = Events(self)
        receiver = Receiver()
        protocol = WorkerProtocol(receiver)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"Loading the model, please wait...\n" * 100)
        self.assertEqual(len([f for f in events.formats("warn") if f.startswith("Dropping")]), 1)
        self.assertEqual(receiver.lost, [])

    def test_garbage_before_the_handshake_is_reported_as_such(self) -> None:
        h = Harness()
        h.service.startService()
        failed = h.service.whenFailed()
        h.worker.protocol.dataReceived(b"\xc1Starting...")
        self.assertTrue(h.worker.transport.disconnecting or h.worker.protocol._violation)
        h.worker.protocol.connectionLost(Failure(Exception("aborted")))
        # It read the EOF it was given and exited cleanly.
        h.worker.exit("exited with status 0")
        why = str(self.successResultOf(failed))
        self.assertTrue(why.startswith("the worker sent malformed MessagePack at byte 0"), why)
        self.assertIn("Starting...", why)
        self.assertTrue(why.endswith("and then exited with status 0 during start-up"), why)
        self.failureResultOf(h.service.whenReady(), WorkerStartupError)


class ReplyMemoryTests(SynchronousTestCase):
    def test_reply_over_the_budget_fails_its_request_alone(self) -> None:
        memory = start_memory_gateway(self, {"chat_completions": lambda data: None}, max_reply_memory=1024 * 1024)
        memory.autoflush = False
        first = memory.http.post(memory.url + "/v1/chat/completions", data=chat("one"))
        second = memory.http.post(memory.url + "/v1/chat/completions", data=chat("two"))
        memory.flush()
        memory.autoflush = True
        one, two = sorted(memory.worker.pending.values(), key=lambda call: call.ident)
        one.reply({"content": "a" * 700_000, "finish_reason": None})
        two.reply({"content": "b" * 700_000, "finish_reason": None})
        memory.flush()
        response = self.successResultOf(second)
        self.assertEqual(response.code, 502)
        error = json.loads(self.successResultOf(response.content()))["error"]
        self.assertEqual(error["code"], "reply_too_large")
        self.assertIn("--max-reply-memory", error["message"])
        self.assertIn("1048576", error["message"])
        self.assertNoResult(first)
        one.reply({"content": "!", "finish_reason": "stop"})
        memory.flush()
        response = self.successResultOf(first)
        self.assertEqual(response.code, 200)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(len(body["choices"][0]["message"]["content"]), 700_001)
        # Every byte counted was given back; the gateway serves on.
        self.assertEqual(memory.service.reply_budget.held, 0)
        self.assertEqual(len(memory.spawner.processes), 1)


class CrashLoopTests(SynchronousTestCase):
    def test_a_worker_that_keeps_dying_never_takes_the_gateway_down(self) -> None:
        memory = start_memory_gateway(self, {"chat_completions": lambda data: {"content": "ok", "finish_reason": "stop"}})
        delays = []
        for _ in range(12):
            memory.spawner.processes[-1].exit("was killed by SIGSEGV")
            memory.flush()
            [restart] = [c for c in memory.reactor.getDelayedCalls() if c.func == memory.service.worker._restart]
            delays.append(restart.getTime() - memory.reactor.seconds())
            response = self.successResultOf(memory.http.get(memory.url + "/ready"))
            self.assertEqual(response.code, 503)
            self.assertIn(b"SIGSEGV", self.successResultOf(response.content()))
            health = self.successResultOf(memory.http.get(memory.url + "/health"))
            self.assertEqual(health.code, 200)
            memory.advance(delays[-1])
        self.assertEqual(delays[:3], [0.5, 1.0, 2.0])
        self.assertEqual(max(delays), 30.0)
        self.assertEqual(memory.service.worker.state, "ready")
        response = self.successResultOf(memory.http.post(memory.url + "/v1/chat/completions", data=chat("x")))
        self.assertEqual(response.code, 200)


class OutputFloodTests(SynchronousTestCase):
    def lines(self, events: Events) -> list[tuple[str, str]]:
        return [(e["stream"], e["line"]) for e in events.events if e.get("log_namespace") == "hfendpoint.worker"]

    def test_stdout_goes_through_the_log(self) -> None:
        events = Events(self)
        protocol = WorkerProcessProtocol()
        protocol.outReceived(b"hello from print\npart")
        protocol.errReceived(b"a warning\n")
        protocol.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(
            self.lines(events), [("stdout", "hello from print"), ("stderr", "a warning"), ("stdout", "part")]
        )

    def test_long_lines_are_cut_at_64_kib(self) -> None:
        """
        A line without an end, however it arrives, is logged in pieces of
        at most 64 KiB, and nothing is lost.
        """
        events = SimpleNamespace(events=[])
        # Not the global log: the test runner's own cannot carry such lines.
        protocol = WorkerProcessProtocol(Logger(namespace="hfendpoint.worker", observer=events.events.append))
        flood = bytes(ord("a") + i % 26 for i in range(300_000))
        for start in range(0, len(flood), 73_786):
            protocol.errReceived(flood[start : start + 73_786])
        protocol.errReceived(b"\n" + b"z" * 200_000 + b"\nend\n")
        protocol.processEnded(Failure(ProcessDone(0)))
        pieces = [line for _, line in self.lines(events)]
        self.assertLessEqual(max(map(len, pieces)), MAX_STDERR_LINE)
        self.assertEqual("".join(pieces), flood.decode() + "z" * 200_000 + "end")


class DescriptorTests(SynchronousTestCase):
    def test_spawn_failure_after_ready_is_retried(self) -> None:
        """
        Out of descriptors when the worker is restarted: the spawn is tried
        again after the back-off, and the gateway never gives up on it.
        """
        h = Harness()
        h.service.startService()
        h.worker.answer_handshake({})
        failed = h.service.whenFailed()
        spawn = h.spawn
        errors = [OSError(errno.EMFILE, "Too many open files")] * 3

        def exhausted(*args: Any) -> Any:
            if errors:
                raise errors.pop()
            return spawn(*args)

        h.spawn = exhausted
        h.worker.exit("was killed by SIGKILL")
        for delay in (0.5, 1.0, 2.0, 4.0):
            self.assertEqual(h.service.state, "restarting")
            h.clock.advance(delay)
        self.assertEqual(h.service.state, "starting")
        self.assertIn("could not be started", h.service.last_exit)
        h.worker.answer_handshake({})
        self.assertTrue(h.service.ready)
        self.assertNoResult(failed)

    def test_reserve_gives_its_descriptors_to_the_call_that_lacks_them(self) -> None:
        events = Events(self)
        opened: list[int] = []

        def opener() -> int:
            fd = os.open(os.devnull, os.O_RDONLY)
            opened.append(fd)
            return fd

        reserve = DescriptorReserve(count=3, opener=opener)
        self.addCleanup(reserve.close)
        reserve.hold()
        self.assertEqual(reserve.held, 3)
        seen = []

        def needs_descriptors() -> str:
            seen.append(reserve.held)
            if reserve.held:
                raise OSError(errno.EMFILE, "Too many open files")
            return "spawned"

        for _ in range(100):
            self.assertEqual(reserve.run("start the worker", needs_descriptors), "spawned")
        # Each time, the first try failed and the second ran with the
        # reserve given back; the reserve is held again after.
        self.assertEqual(seen[:2], [3, 0])
        self.assertEqual(reserve.held, 3)
        self.assertTrue(reserve.short)
        said = [f for f in events.formats("warn") if f.startswith("Out of file descriptors")]
        self.assertEqual(len(said), 1)
        reserve.run("start the worker", lambda: "fine")
        self.assertFalse(reserve.short)

    def test_reserve_passes_other_errors_on(self) -> None:
        reserve = DescriptorReserve(count=1)
        self.addCleanup(reserve.close)

        def broken() -> None:
            raise OSError(errno.ENOENT, "No such file")

        self.assertRaises(OSError, reserve.run, "start the worker", broken)
        self.assertFalse(reserve.short)


class AccessLogDrainTests(SynchronousTestCase):
    def test_requests_finishing_during_the_drain_are_logged(self) -> None:
        stream = io.StringIO()
        memory = start_memory_gateway(self, {"chat_completions": lambda data: None}, access_log=stream)
        site = memory.service.site
        # The in-memory port neither starts nor stops its factory, as a
        # real one does: make it.
        site.doStart()
        [port] = memory.service.ports
        port.stopListening = site.doStop
        answer = memory.http.post(memory.url + "/v1/chat/completions", data=chat("slow"))
        [call] = memory.worker.pending.values()
        stopped = memory.service.stopService()
        memory.flush()
        self.assertNoResult(stopped)
        call.reply({"content": "done", "finish_reason": "stop"})
        memory.flush()
        self.assertEqual(self.successResultOf(answer).code, 200)
        memory.flush()
        self.successResultOf(stopped)
        self.assertIn('"POST /v1/chat/completions HTTP/1.1" 200', stream.getvalue())
