"""
Prometheus metrics, scraped through real HTTP after a known sequence of
requests and parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.web._metrics import endpoint_of

from .gateway import http_client, start_gateway

JSON = {"Content-Type": ["application/json"]}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}


def samples(text):
    """
    Every sample, by name and sorted labels.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(TestCase):
    async def setUp(self):
        self.url, self.gateway = await start_gateway(
            self, metrics_listen=["tcp:0:interface=127.0.0.1"], batch_tokens=0
        )
        self.http = http_client(self)

    async def post(self, path, body):
        response = await self.http.post(self.url + path, json.dumps(body).encode(), headers=JSON)
        return response.code, await response.content()

    async def scrape(self, url=None):
        response = await self.http.get((url or self.url) + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        return samples((await response.content()).decode())

    async def test_known_sequence(self):
        for _ in range(2):
            self.assertEqual((await self.post("/v1/chat/completions", CHAT))[0], 200)
        code, _ = await self.post("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        self.assertEqual(code, 200)
        self.assertEqual((await self.post("/v1/embeddings", {"model": "m", "input": ["a b", "c"]}))[0], 200)
        self.assertEqual((await self.post("/v1/chat/completions", {"model": "m"}))[0], 400)
        code, body = await self.post("/v1/images/generations", {"prompt": "p", "size": "256x256", "response_format": "url"})
        self.assertEqual(code, 200, body)
        response = await self.http.get(self.url + "/v1/images/not-there")
        await response.content()
        self.assertEqual(response.code, 404)

        found = await self.scrape()
        chat = "/v1/chat/completions"
        self.assertEqual(found[("hfendpoint_requests_total", (("endpoint", chat), ("method", "POST"), ("status", "200")))], 3)
        self.assertEqual(found[("hfendpoint_requests_total", (("endpoint", chat), ("method", "POST"), ("status", "400")))], 1)
        self.assertEqual(
            found[("hfendpoint_requests_total", (("endpoint", "/v1/embeddings"), ("method", "POST"), ("status", "200")))], 1
        )
        self.assertEqual(
            found[("hfendpoint_requests_total", (("endpoint", "/v1/images/{image_id}"), ("method", "GET"), ("status", "404")))], 1
        )
        self.assertEqual(found[("hfendpoint_request_duration_seconds_count", (("endpoint", chat),))], 4)
        # The one stream's first write of events (the demo's fast stream
        # may well be in one write).
        self.assertEqual(found[("hfendpoint_time_to_first_token_seconds_count", (("endpoint", chat),))], 1)
        self.assertEqual(found[("hfendpoint_requests_running", ())], 0)
        self.assertEqual(found[("hfendpoint_requests_queued", ())], 0)
        self.assertEqual(found[("hfendpoint_worker_up", (("worker", "0"),))], 1)
        self.assertEqual(found[("hfendpoint_worker_restarts_total", (("worker", "0"),))], 0)
        self.assertEqual(found[("hfendpoint_worker_calls_in_flight", (("worker", "0"),))], 0)
        self.assertEqual(found[("hfendpoint_image_store_images", ())], 1)
        # Tokens from each answer's usage: two whole chats, the stream's
        # last chunk, the embeddings' input.
        chat_usage = json.loads((await self.post("/v1/chat/completions", CHAT))[1])["usage"]
        found = await self.scrape()
        self.assertEqual(
            found[("hfendpoint_prompt_tokens_total", (("endpoint", chat),))], 4 * chat_usage["prompt_tokens"]
        )
        self.assertEqual(
            found[("hfendpoint_completion_tokens_total", (("endpoint", chat),))], 4 * chat_usage["completion_tokens"]
        )
        self.assertGreater(found[("hfendpoint_prompt_tokens_total", (("endpoint", "/v1/embeddings"),))], 0)
        # The one embeddings call of two inputs.
        self.assertEqual(found[("hfendpoint_embedding_batch_inputs_count", ())], 1)
        self.assertEqual(found[("hfendpoint_embedding_batch_inputs_sum", ())], 2)
        self.assertEqual(found[("hfendpoint_image_store_bytes", ())], self.gateway.store.size)
        self.assertGreater(self.gateway.store.size, 0)

    async def test_own_listener(self):
        """
        C{--metrics-listen} serves /metrics alone; the main listener too.
        """
        await self.post("/v1/chat/completions", CHAT)
        port = self.gateway.ports[1].getHost().port
        found = await self.scrape(f"http://127.0.0.1:{port}")
        key = ("hfendpoint_requests_total", (("endpoint", "/v1/chat/completions"), ("method", "POST"), ("status", "200")))
        self.assertEqual(found[key], 1)
        response = await self.http.get(f"http://127.0.0.1:{port}/v1/models")
        await response.content()
        self.assertEqual(response.code, 404)


class MetricsAccessTests(TestCase):
    async def test_needs_a_key_on_the_main_listener(self):
        url, gateway = await start_gateway(self, api_keys=["k"], metrics_listen=["tcp:0:interface=127.0.0.1"])
        http = http_client(self)
        response = await http.get(url + "/metrics")
        await response.content()
        self.assertEqual(response.code, 401)
        response = await http.get(url + "/metrics", headers={"Authorization": ["Bearer k"]})
        await response.content()
        self.assertEqual(response.code, 200)
        port = gateway.ports[1].getHost().port
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
        await response.content()
        self.assertEqual(response.code, 200)

    async def test_off(self):
        url, gateway = await start_gateway(self, metrics=False)
        http = http_client(self)
        response = await http.get(url + "/metrics")
        await response.content()
        self.assertEqual(response.code, 404)
        self.assertIsNone(gateway.metrics)


class StreamTimerTests(SynchronousTestCase):
    def test_first_then_between(self):
        from prometheus_client import CollectorRegistry
        from twisted.internet.task import Clock

        from hfendpoint.web._metrics import HTTPMetrics, StreamTimer

        clock = Clock()
        metrics = HTTPMetrics(CollectorRegistry())
        timer = StreamTimer(metrics, "/v1/chat/completions", clock.seconds, clock.seconds())
        for gap in (0.5, 0.02, 0.03):
            clock.advance(gap)
            timer.event()
        self.assertEqual(metrics.registry.get_sample_value(
            "hfendpoint_time_to_first_token_seconds_sum", {"endpoint": "/v1/chat/completions"}), 0.5)
        self.assertAlmostEqual(metrics.registry.get_sample_value(
            "hfendpoint_time_between_tokens_seconds_sum", {"endpoint": "/v1/chat/completions"}), 0.05)
        self.assertEqual(metrics.registry.get_sample_value(
            "hfendpoint_time_between_tokens_seconds_count", {"endpoint": "/v1/chat/completions"}), 2)


class EndpointTests(SynchronousTestCase):
    def test_bounded_labels(self):
        self.assertEqual(endpoint_of(b"/v1/chat/completions"), "/v1/chat/completions")
        self.assertEqual(endpoint_of(b"/v1/images/abc"), "/v1/images/{image_id}")
        self.assertEqual(endpoint_of(b"/v1/models/x"), "/v1/models/{model}")
        self.assertEqual(endpoint_of(b"/v1/images/a/b"), "other")
        self.assertEqual(endpoint_of(b"/anything/else"), "other")


class FinishedTests(SynchronousTestCase):
    def finish(self, metrics, path, method=b"POST", code=200, started=10.0):
        class Finished:
            pass

        request = Finished()
        request.path, request.method, request.code, request.started = path, method, code, started
        metrics.finished(request, 10.5)

    def test_counted_and_timed(self):
        from prometheus_client import CollectorRegistry

        from hfendpoint.web._metrics import HTTPMetrics

        metrics = HTTPMetrics(CollectorRegistry())
        for _ in range(3):
            self.finish(metrics, b"/v1/embeddings")
        self.finish(metrics, b"/v1/images/abc", method=b"GET", code=404)
        self.finish(metrics, b"/v1/images/def", method=b"BREW", code=405)
        value = metrics.registry.get_sample_value
        self.assertEqual(value("hfendpoint_requests_total", {"endpoint": "/v1/embeddings", "method": "POST", "status": "200"}), 3)
        self.assertEqual(value("hfendpoint_requests_total", {"endpoint": "/v1/images/{image_id}", "method": "GET", "status": "404"}), 1)
        self.assertEqual(value("hfendpoint_requests_total", {"endpoint": "/v1/images/{image_id}", "method": "other", "status": "405"}), 1)
        self.assertEqual(value("hfendpoint_request_duration_seconds_sum", {"endpoint": "/v1/embeddings"}), 1.5)

    def test_clients_cannot_grow_it(self):
        """
        Paths the API does not have, and odd methods, are counted under
        their templates and remembered nowhere.
        """
        from prometheus_client import CollectorRegistry

        from hfendpoint.web._metrics import HTTPMetrics

        metrics = HTTPMetrics(CollectorRegistry())
        for i in range(100):
            self.finish(metrics, b"/v1/images/%d" % i, method=b"GET", code=404)
            self.finish(metrics, b"/nowhere/%d" % i, method=b"X%d" % i, code=404)
            metrics.usage(b"/v1/images/%d" % i, {"prompt_tokens": 1})
        self.assertEqual(len(metrics._series), 0)
        self.assertEqual(len(metrics._tokens), 0)
        self.assertEqual(len(metrics.requests.values), 2)
        self.assertEqual(
            metrics.registry.get_sample_value("hfendpoint_prompt_tokens_total", {"endpoint": "/v1/images/{image_id}"}),
            100,
        )


class MemoryMetricsTests(SynchronousTestCase):
    """
    What a whole gateway in memory counts: admission control's 429s, and
    how the worker last ended.
    """

    def setUp(self):
        from .gateway import start_memory_gateway

        self.memory = start_memory_gateway(self)

    def scrape(self):
        from prometheus_client.exposition import generate_latest

        return samples(generate_latest(self.memory.service.metrics.registry).decode())

    def test_429_counted(self):
        from .test_http_framing import RawClient

        admission = self.memory.service.admission
        admission.max_in_flight = 0
        admission.max_waiting = 0
        client = RawClient(self, self.memory)
        client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(client.responses()[0][0], 429)
        key = ("hfendpoint_requests_total", (("endpoint", "/v1/embeddings"), ("method", "POST"), ("status", "429")))
        self.assertEqual(self.scrape()[key], 1)

    def test_worker_exit(self):
        self.assertEqual(self.scrape()[("hfendpoint_worker_up", (("worker", "0"),))], 1)
        self.memory.spawner.processes[-1].exit()
        self.memory.flush()
        found = self.scrape()
        self.assertEqual(found[("hfendpoint_worker_up", (("worker", "0"),))], 0)
        exits = [key for key in found if key[0] == "hfendpoint_worker_last_exit_info"]
        self.assertEqual(len(exits), 1)
        self.assertEqual(found[exits[0]], 1)
        self.assertIn(("worker", "0"), exits[0][1])
