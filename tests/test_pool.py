"""
A pool of workers: least-busy dispatch, and a dead member failing alone.
"""

import json
import os
import signal

import msgpack
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from hfendpoint.backend._client import WorkerClient
from hfendpoint.errors import OpenAIError
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.backend._pool import WorkerPool
from hfendpoint.backend._protocol import WorkerProtocol

from .gateway import http_client, start_gateway, write_worker
from .test_reliability import LineWatcher


class Member:
    ready = True

    def __init__(self, clock):
        self.client = WorkerClient(clock)
        self.protocol = WorkerProtocol(self.client)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self):
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(self.transport.value())
        return list(unpacker)


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.members = [Member(self.clock) for _ in range(3)]
        self.pool = WorkerPool([(m, m.client) for m in self.members])

    def test_interface(self):
        verifyObject(IWorkerClient, self.pool)

    def test_least_busy(self):
        calls = [self.pool.request("chat_completions", {}, lambda c: False) for _ in range(9)]
        self.assertEqual([m.client.pending_count() for m in self.members], [3, 3, 3])
        self.assertEqual(self.pool.pending_count(), 9)
        # Finish two calls on the second worker: it gets the next two.
        second = self.members[1]
        for request in second.sent()[:2]:
            second.protocol.dataReceived(msgpack.packb({"id": request["id"], "error": "x"}))
        self.pool.call("tokenize", {})
        self.pool.call("tokenize", {})
        self.assertEqual([m.client.pending_count() for m in self.members], [3, 3, 3])
        self.assertEqual(len([self.failureResultOf(d, OpenAIError) for d in calls if d.called]), 2)
        self.assertEqual([r["name"] for r in second.sent()][-2:], ["tokenize", "tokenize"])

    def test_dead_member_is_skipped(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.members[0].protocol.connectionLost(Failure(ConnectionDone()))
        for _ in range(4):
            self.pool.call("tokenize", {})
        self.assertEqual([m.client.pending_count() for m in self.members], [0, 2, 2])

    def test_no_member(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        for m in self.members:
            m.protocol.connectionLost(Failure(ConnectionDone()))
        error = self.failureResultOf(self.pool.call("tokenize", {}), OpenAIError).value
        self.assertEqual(error.status, 503)


INDEX_WORKER = """
import asyncio, os, sys
import hfendpoint

INDEX = os.environ["HFENDPOINT_WORKER_INDEX"]

@hfendpoint.handler("chat_completions")
async def chat(data):
    yield {"content": INDEX + "/" + os.environ["HFENDPOINT_WORKERS"], "finish_reason": None}
    if data["messages"][-1]["content"] == "hold":
        print("holding", INDEX, file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    yield {"content": "", "finish_reason": "stop"}

asyncio.run(hfendpoint.run())
"""


def chat_body(text):
    return json.dumps({"messages": [{"role": "user", "content": text}]}).encode()


class PoolGatewayTests(TestCase):
    async def test_least_busy_dispatch_and_a_dead_member(self):
        watcher = LineWatcher(self)
        url, gateway = await start_gateway(
            self, write_worker(self, INDEX_WORKER), workers=3, drain_timeout=0
        )
        self.assertEqual(len({w._worker.pid for w in gateway.workers}), 3)
        http = http_client(self)
        held = []
        for expected in range(3):
            held.append(http.post(url + "/v1/chat/completions", data=chat_body("hold")))
            await watcher.wait_for("holding", expected + 1)
        # Least busy first: each held call went to a different worker.
        self.assertEqual(sorted(line.split()[1] for line in watcher.lines if line.startswith("holding")), ["0", "1", "2"])
        os.kill(gateway.workers[1]._worker.pid, signal.SIGKILL)
        failed = await gatherResults(held[1:2])
        self.assertEqual(failed[0].code, 502)
        await failed[0].content()
        self.assertEqual(gateway.client.pending_count(), 2)
        response = await http.post(url + "/v1/chat/completions", data=chat_body("hi"))
        body = json.loads(await response.content())
        self.assertIn(body["choices"][0]["message"]["content"], ("0/3", "2/3"))
        await gateway.workers[1].whenReady()
        response = await http.post(url + "/v1/chat/completions", data=chat_body("hi"))
        self.assertEqual(json.loads(await response.content())["choices"][0]["message"]["content"], "1/3")
