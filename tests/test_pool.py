"""
A pool of workers: least-busy dispatch, and a dead member failing alone.
"""

import json

import msgpack
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from hfendpoint.backend._client import WorkerClient
from hfendpoint.errors import OpenAIError
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.backend._pool import WorkerPool
from hfendpoint.backend._protocol import WorkerProtocol

from .gateway import start_memory_gateway


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


class PoolGatewayTests(SynchronousTestCase):
    """
    Three workers in memory behind one gateway.
    """

    def test_least_busy_dispatch_and_a_dead_member(self):
        holding = []

        def worker(env):
            index, total = env["HFENDPOINT_WORKER_INDEX"], env["HFENDPOINT_WORKERS"]

            def chat(data):
                if data["messages"][-1]["content"] == "hold":
                    holding.append(index)
                    return None
                return [
                    {"content": f"{index}/{total}", "finish_reason": None},
                    {"content": "", "finish_reason": "stop"},
                ]

            return {"chat_completions": chat}

        memory = start_memory_gateway(self, worker, workers=3, drain_timeout=0)
        gateway, http, url = memory.service, memory.http, memory.url
        processes = memory.spawner.processes
        self.assertEqual(len({p.pid for p in processes}), 3)
        held = [http.post(url + "/v1/chat/completions", data=chat_body("hold")) for _ in range(3)]
        # Least busy first: each held call went to a different worker.
        self.assertEqual(sorted(holding), ["0", "1", "2"])
        processes[1].exit("was killed by SIGKILL")
        memory.flush()
        failed = self.successResultOf(held[1])
        self.assertEqual(failed.code, 502)
        self.successResultOf(failed.content())
        self.assertEqual(gateway.client.pending_count(), 2)
        response = self.successResultOf(http.post(url + "/v1/chat/completions", data=chat_body("hi")))
        body = json.loads(self.successResultOf(response.content()))
        self.assertIn(body["choices"][0]["message"]["content"], ("0/3", "2/3"))
        ready = gateway.workers[1].whenReady()
        memory.advance(gateway.workers[1].min_delay)
        self.successResultOf(ready)
        self.assertEqual(len(processes), 4)
        response = self.successResultOf(http.post(url + "/v1/chat/completions", data=chat_body("hi")))
        self.assertEqual(json.loads(self.successResultOf(response.content()))["choices"][0]["message"]["content"], "1/3")


def chat_body(text):
    return json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
