"""
The gateway against workers that crash, break the protocol, stall, or
lose their clients: in memory (L{MemoryFaultTests}), and with a real
gateway and real worker processes on loopback where a real process or a
real socket is the point (kill -9, a stubborn worker and its children, a
client that stops reading).
"""

import json
import os
import select
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from .gateway import http_client, start_gateway, start_memory_gateway, write_worker
from .openapi import validate

# A worker on our SDK whose chat streams one token and then waits until
# cancelled, saying so on stderr; "quick" answers at once.
STALLING_WORKER = """
import asyncio, sys
import hfendpoint

@hfendpoint.handler("chat_completions")
async def chat(data):
    text = data["messages"][-1]["content"]
    if text == "quick":
        yield {"content": "done", "finish_reason": "stop"}
        return
    print("started", text, file=sys.stderr, flush=True)
    yield {"content": "first", "finish_reason": None}
    try:
        await asyncio.Event().wait()
    finally:
        print("cancelled", text, file=sys.stderr, flush=True)

@hfendpoint.handler("tokenize")
def tokenize(data):
    return {"tokens": [[1] for _ in data["input"]]}

asyncio.run(hfendpoint.run())
"""


def chat_body(text, stream=False):
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}).encode()


class LineWatcher:
    """
    Waits for lines the worker writes to stderr (the gateway logs them).
    """

    def __init__(self, testcase):
        self.lines = []
        self._waiters = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event):
        if event.get("log_namespace") == "hfendpoint.worker" and "line" in event:
            self.lines.append(event["line"])
            for count, prefix, d in list(self._waiters):
                if self.count(prefix) >= count:
                    self._waiters.remove((count, prefix, d))
                    d.callback(None)

    def count(self, prefix):
        return sum(1 for line in self.lines if line.startswith(prefix))

    def wait_for(self, prefix, count=1):
        d = Deferred()
        if self.count(prefix) >= count:
            d.callback(None)
        else:
            self._waiters.append((count, prefix, d))
        return d


class StreamingClient(Protocol):
    """
    A raw HTTP client that can drop its connection mid-stream.
    """

    def __init__(self, body):
        self._body = body
        self.received = b""
        self.first_event = Deferred()
        self.finished = Deferred()
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(self._body)).encode() + b"\r\n\r\n" + self._body
        )

    def dataReceived(self, data):
        self.received += data
        if b"data: " in self.received and not self.first_event.called:
            self.first_event.callback(self)
        if self.received.endswith(b"\r\n0\r\n\r\n") and not self.finished.called:
            self.finished.callback(self)

    def connectionLost(self, reason):
        self.closed.callback(None)


def open_stream(port, text):
    return Deferred.fromCoroutine(_open_stream(port, text))


async def _open_stream(port, text):
    client = StreamingClient(chat_body(text, stream=True))
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await client.first_event
    return client


class CrashTests(TestCase):
    async def test_kill_9_with_requests_in_flight(self):
        watcher = LineWatcher(self)
        url, gateway = await start_gateway(self, write_worker(self, STALLING_WORKER))
        http = http_client(self)
        port = gateway.ports[0].getHost().port
        streams = await gatherResults([open_stream(port, f"s{i}") for i in range(10)])
        for client in streams:
            self.addCleanup(client.transport.abortConnection)
        plain = [http.post(url + "/v1/chat/completions", data=chat_body(f"p{i}")) for i in range(10)]
        await watcher.wait_for("started p", 10)
        pid = gateway.worker._worker.pid
        self.assertEqual(gateway.client.pending_count(), 20)
        os.kill(pid, signal.SIGKILL)

        for response in await gatherResults(plain):
            self.assertEqual(response.code, 502)
            body = json.loads(await response.content())
            validate("ErrorResponse", body)
            self.assertIn("exited", body["error"]["message"])
        for client in streams:
            await client.finished
            client.transport.loseConnection()
            await client.closed
            last = client.received[client.received.rfind(b"data: ") + 6 :]
            error = json.loads(last[: last.index(b"\n\n")])
            validate("ErrorResponse", error)
            self.assertEqual(error["error"]["code"], "worker_unavailable")
        self.assertEqual(gateway.client.pending_count(), 0)

        await gateway.whenReady()
        self.assertEqual(gateway.worker.restarts, 1)
        self.assertNotEqual(gateway.worker._worker.pid, pid)
        responses = await gatherResults(
            [http.post(url + "/v1/chat/completions", data=chat_body("quick")) for _ in range(10)]
        )
        for response in responses:
            self.assertEqual(response.code, 200)
            body = json.loads(await response.content())
            self.assertEqual(body["choices"][0]["message"]["content"], "done")


class StopTests(TestCase):
    async def test_stubborn_worker_and_its_children_are_killed(self):
        worker = write_worker(
            self,
            """
            import os, signal, subprocess, sys, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            print("child", child.pid, file=sys.stderr, flush=True)
            time.sleep(600)
            """,
        )
        watcher = LineWatcher(self)
        # The worker never reads its socket, so it never becomes ready.
        url, gateway = await start_gateway(
            self, worker, stop_timeout=0.2, startup_grace=0.1, wait_ready=False
        )
        await watcher.wait_for("child")
        child = int(watcher.lines[-1].split()[1])
        pid = gateway.worker._worker.pid
        await gateway.stopService()
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        # The worker's own child was in its process group, and got KILL
        # with it: it ends (a signal is delivered a moment later).
        self.assertTrue(await deferToThread(wait_for_exit, child, 30))


def wait_for_exit(pid, timeout):
    """
    Wait for a process that is not our child to end, through a pidfd.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


FLOOD_WORKER = """
import asyncio, sys
import hfendpoint

@hfendpoint.handler("chat_completions")
async def chat(data):
    text = data["messages"][-1]["content"]
    if text == "quick":
        yield {"content": "done", "finish_reason": "stop"}
        return
    try:
        for i in range(1_000_000):
            yield {"content": " token %d" % i, "finish_reason": None}
        yield {"content": "", "finish_reason": "stop"}
    finally:
        print("flood ended", file=sys.stderr, flush=True)

asyncio.run(hfendpoint.run())
"""


class SlowClientTests(TestCase):
    async def test_a_client_that_stops_reading_is_dropped_and_others_are_served(self):
        watcher = LineWatcher(self)
        url, gateway = await start_gateway(self, write_worker(self, FLOOD_WORKER))
        port = gateway.ports[0].getHost().port
        slow = await open_stream(port, "flood")
        self.addCleanup(slow.transport.abortConnection)
        # The slow client stops reading; the kernel buffers fill up, the
        # gateway's transport pauses the event stream, which holds tokens.
        slow.transport.pauseProducing()
        http = http_client(self)
        for _ in range(5):
            response = await http.post(url + "/v1/chat/completions", data=chat_body("quick"))
            self.assertEqual(response.code, 200)
            await response.content()
        # Past the held-bytes bound the gateway drops the slow client and
        # the worker is told to stop generating for it.
        await watcher.wait_for("flood ended")
        self.assertEqual(gateway.client.pending_count(), 0)
        slow.transport.resumeProducing()
        await slow.closed
        self.assertFalse(slow.received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"))


class HangUp(Protocol):
    """
    A response body reader that drops the connection at the first bytes.
    """

    def __init__(self):
        self.first = Deferred()
        self.lost = Deferred()

    def dataReceived(self, data):
        if not self.first.called:
            self.first.callback(data)
            self.transport.stopProducing()

    def connectionLost(self, reason):
        self.lost.callback(None)


class MemoryFaultTests(SynchronousTestCase):
    """
    The whole gateway in memory against a worker that stalls, breaks the
    protocol, sends strays or never replies.
    """

    def start(self, handlers, **options):
        self.memory = start_memory_gateway(self, handlers, **options)
        return self.memory

    def post(self, text, stream=False):
        response = self.successResultOf(
            self.memory.http.post(self.memory.url + "/v1/chat/completions", data=chat_body(text, stream))
        )
        return response, self.successResultOf(response.content())

    def test_clients_leaving_mid_stream_cancel_on_the_worker(self):
        def chat(data):
            if data["messages"][-1]["content"] == "quick":
                return {"content": "done", "finish_reason": "stop"}
            return None

        memory = self.start({"chat_completions": chat})
        gateway, worker = memory.service, memory.worker
        memory.autoflush = False
        answers = [
            memory.http.post(memory.url + "/v1/chat/completions", data=chat_body(f"s{i}", stream=True))
            for i in range(20)
        ]
        memory.flush()
        memory.autoflush = True
        self.assertEqual(gateway.client.pending_count(), 20)
        calls = list(worker.pending.values())
        for call in calls:
            call.reply({"content": "first", "finish_reason": None})
        memory.flush()
        readers = []
        for answer in answers:
            response = self.successResultOf(answer)
            self.assertEqual(response.code, 200)
            reader = HangUp()
            response.deliverBody(reader)
            self.assertIn(b"first", self.successResultOf(reader.first))
            readers.append(reader)
        memory.flush()
        for reader in readers:
            self.successResultOf(reader.lost)
        self.assertEqual(sorted(worker.cancelled), sorted(call.ident for call in calls))
        self.assertEqual(
            sorted(call.data["messages"][-1]["content"] for call in calls), sorted(f"s{i}" for i in range(20))
        )
        self.assertEqual(worker.pending, {})
        self.assertEqual(gateway.client.pending_count(), 0)
        # The gateway still serves.
        response, _ = self.post("quick")
        self.assertEqual(response.code, 200)

    def test_garbage_from_the_worker(self):
        def chat(data):
            if data["messages"][-1]["content"] == "garbage":
                self.memory.worker.transport.write(b"\xc1\xc1\xc1")
                return None
            return {"content": "fine", "finish_reason": "stop"}

        memory = self.start({"chat_completions": chat})
        response, body = self.post("garbage")
        self.assertEqual(response.code, 502)
        self.assertIn("malformed", json.loads(body)["error"]["message"])
        ready = memory.service.whenReady()
        memory.advance(memory.service.worker.min_delay)
        self.successResultOf(ready)
        self.assertEqual(len(memory.spawner.processes), 2)
        response, body = self.post("hello")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "fine")

    def test_unknown_ids_and_huge_messages(self):
        def chat(data):
            text = data["messages"][-1]["content"]
            if text == "stray":
                self.memory.worker.send({"id": 999999, "data": {"content": "nobody"}})
            if text == "huge":
                return {"content": "x" * (2 * 1024 * 1024), "finish_reason": "stop"}
            return {"content": "ok", "finish_reason": "stop"}

        memory = self.start({"chat_completions": chat}, max_worker_message_size=1024 * 1024)
        response, body = self.post("stray")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "ok")
        response, body = self.post("huge")
        self.assertEqual(response.code, 502)
        self.assertIn("exceeds", json.loads(body)["error"]["message"])
        ready = memory.service.whenReady()
        memory.advance(memory.service.worker.min_delay)
        self.successResultOf(ready)
        response, _ = self.post("after")
        self.assertEqual(response.code, 200)

    def test_worker_that_never_replies(self):
        memory = self.start({"chat_completions": lambda data: None}, reply_timeout=0.5)
        answer = memory.http.post(memory.url + "/v1/chat/completions", data=chat_body("x"))
        self.assertNoResult(answer)
        memory.advance(0.5)
        response = self.successResultOf(answer)
        self.assertEqual(response.code, 504)
        body = json.loads(self.successResultOf(response.content()))
        validate("ErrorResponse", body)
        self.assertEqual(body["error"]["code"], "timeout")
        self.assertEqual(memory.service.client.pending_count(), 0)
        # The worker was told to stop it.
        self.assertEqual(memory.worker.cancelled, [memory.worker.received[-2]["id"]])
