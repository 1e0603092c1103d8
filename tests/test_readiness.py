"""
C{/ready} means that a request will be served: the whole gateway in
memory, with workers that load their model slowly, answer the handshake
late, or predate it, and time on the test's clock.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from .gateway import start_memory_gateway


class ReadinessTests(SynchronousTestCase):
    def start(self, **options):
        self.memory = start_memory_gateway(self, wait_ready=False, startup_grace=2.0, **options)
        return self.memory

    def get(self, path):
        response = self.successResultOf(self.memory.http.get(self.memory.url + path))
        return response.code, json.loads(self.successResultOf(response.content()) or b"null")

    def chat(self):
        body = {"messages": [{"role": "user", "content": "hi"}]}
        return self.memory.http.post(self.memory.url + "/v1/chat/completions", json=body)

    def test_model_loading_for_six_seconds(self):
        """
        A worker of ours that reads nothing while its model loads for 6 s
        is not ready after the 2 s grace; it is ready when it answers the
        handshake, with what it said of itself, and serves.
        """
        memory = self.start(worker={"loading": True})
        ready = memory.service.whenReady()
        memory.advance(6.0)
        self.assertNoResult(ready)
        self.assertEqual(self.get("/ready")[0], 503)
        self.assertEqual(self.get("/health")[0], 200)
        # A request sent meanwhile waits in the socket, and is served.
        answer = self.chat()
        self.assertNoResult(answer)
        memory.worker.finish_loading()
        memory.flush()
        self.successResultOf(ready)
        self.assertEqual(self.get("/ready"), (200, {"status": "ready"}))
        self.assertEqual(self.successResultOf(answer).code, 200)
        self.assertEqual([m["id"] for m in self.get("/v1/models")[1]["data"]], ["hfendpoint-demo"])

    def test_older_worker_loading_for_six_seconds(self):
        """
        An older worker (it never answers the handshake) that loads its
        model first is ready once it has read its socket, not at the grace.
        """
        memory = self.start(worker={"loading": True, "handshake": "ignore"})
        ready = memory.service.whenReady()
        memory.advance(6.0)
        self.assertNoResult(ready)
        memory.worker.finish_loading()
        memory.flush()
        self.assertNoResult(ready)
        memory.advance(0.1)
        self.successResultOf(ready)
        self.assertIsNone(memory.service.client.info.calls)

    def test_older_worker_ready_after_grace(self):
        """
        An older worker that reads its socket at once and ignores the
        handshake is ready after the grace, as before.
        """
        memory = self.start(worker={"handshake": "ignore"})
        ready = memory.service.whenReady()
        memory.advance(1.9)
        self.assertNoResult(ready)
        memory.advance(0.1)
        self.successResultOf(ready)

    def test_late_answer_is_taken_then(self):
        """
        A worker that read the handshake and answers it after the grace
        was taken as an older worker; its late description is taken when
        it comes.
        """
        memory = self.start(worker={"handshake": "hold"})
        memory.advance(2.0)
        self.assertTrue(memory.service.worker.ready)
        self.assertEqual(self.get("/v1/models")[1]["data"][0]["id"], "hfendpoint")
        memory.worker.answer_handshake()
        memory.flush()
        self.assertEqual(memory.service.client.info.model, "hfendpoint-demo")
        self.assertEqual([m["id"] for m in self.get("/v1/models")[1]["data"]], ["hfendpoint-demo"])

    def test_answer_makes_ready_at_once(self):
        memory = self.start()
        self.successResultOf(memory.service.whenReady())
        self.assertEqual(memory.reactor.seconds(), 0)
        self.assertEqual(self.get("/ready"), (200, {"status": "ready"}))
