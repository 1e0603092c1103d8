"""
Integration tests against workers that fail, fail mid-stream, die, or
predate the handshake: in memory, and a v0.2 worker as a real process on
a real socket.
"""

from __future__ import annotations

import gc
import json
from typing import Any

from hfendpoint import WorkerError

from .gateway import start_memory_gateway, write_worker
from .integration import (
    CHAT,
    CHAT_SCHEMA,
    CHUNK_SCHEMA,
    GatewayTestCase,
    RESPONSE_EVENTS_BEFORE,
    RESPONSE_EVENT_SCHEMA,
    RESPONSE_SCHEMA,
    RealGatewayTestCase,
    SAID,
)
from .openapi import response_schema, validate


def on_fire(data: Any) -> Any:
    raise RuntimeError("the model is on fire")


def no_gpu(data: Any) -> Any:
    raise WorkerError("no GPU left")


FAILING_WORKER = {"chat_completions": on_fire, "images_generations": no_gpu}


def half_stream(data: Any) -> Any:
    yield {"content": "partial", "finish_reason": None}
    raise RuntimeError("lost the thread")


HALF_STREAM_WORKER = {"chat_completions": half_stream}
LEGACY_WORKER = """
import hfendpoint


def chat_completions(data, send_chunk):
    said = data["messages"][-1]["content"]
    for word in ["legacy", " says", " " + said]:
        send_chunk({"content": word, "finish_reason": None})
    send_chunk({"content": None, "finish_reason": "stop"})


hfendpoint.run({"chat_completions": chat_completions})
"""


class FailingWorkerTests(GatewayTestCase):
    """
    A worker whose handlers raise: the client gets an OpenAI 5xx error.
    """

    handlers = FAILING_WORKER

    async def test_chat(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        error = self.assertError(response, body, 500, type="api_error")
        self.assertIn("the model is on fire", error["message"])

    async def test_chat_stream_before_any_chunk(self) -> None:
        """
        A stream that fails before its first chunk is a plain error reply.
        """
        response, body = await self.post_json("/v1/chat/completions", dict(CHAT, stream=True))
        self.assertGreaterEqual(response.code, 500, body)
        self.assertError(response, body, response.code, type="api_error")

    async def test_worker_error(self) -> None:
        response, body = await self.post_json("/v1/images/generations", {"prompt": "p", "size": "8x8"})
        error = self.assertError(response, body, 500, type="api_error")
        self.assertIn("no GPU left", error["message"])

    async def test_unserved_call(self) -> None:
        """
        A call the worker does not serve (no embeddings here) is refused
        with an OpenAI error, and the gateway keeps serving.
        """
        response, body = await self.post_json("/v1/embeddings", {"input": "x"})
        self.assertEqual(response.code // 100, 5, body)
        self.assertError(response, body, response.code)
        response, body = await self.get("/health")
        self.assertEqual(response.code, 200)


class HalfStreamWorkerTests(GatewayTestCase):
    """
    A worker that fails in the middle of a stream.
    """

    handlers = HALF_STREAM_WORKER

    async def test_chat_stream(self) -> None:
        """
        The content sent so far arrives, then an C{error} event, and the
        stream ends (with no C{[DONE]}, which would mean success).
        """
        events = await self.post_stream("/v1/chat/completions", dict(CHAT, stream=True))
        self.assertEqual(len(events), 2, events)
        (event1, first), (event2, last) = events
        chunk = json.loads(first)
        validate(CHUNK_SCHEMA, chunk)
        self.assertEqual(chunk["choices"][0]["delta"].get("content"), "partial")
        error = json.loads(last)
        validate("ErrorResponse", error)
        self.assertIn("lost the thread", error["error"]["message"])
        self.assertNotIn("[DONE]", [data for _, data in events])

    async def test_chat_plain(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        error = self.assertError(response, body, 500, type="api_error")
        self.assertIn("lost the thread", error["message"])

    async def test_responses_stream(self) -> None:
        """
        A Responses stream that fails ends with C{response.failed} and an
        C{error} event, each valid per the spec.
        """
        events = await self.post_stream("/v1/responses", {"input": SAID, "stream": True})
        payloads = []
        for event, data in events:
            payload = json.loads(data)
            validate(RESPONSE_EVENT_SCHEMA, payload)
            self.assertEqual(event, payload["type"])
            payloads.append(payload)
        types = [p["type"] for p in payloads]
        self.assertEqual(
            types,
            RESPONSE_EVENTS_BEFORE + ["response.output_text.delta", "response.failed", "error"],
        )
        self.assertEqual([p["sequence_number"] for p in payloads], list(range(len(payloads))))
        self.assertEqual(payloads[-2]["response"]["status"], "failed")


class LegacyWorkerTests(RealGatewayTestCase):
    """
    A v0.2 worker (C{hfendpoint.run(dict)}, C{handler(data, send_chunk)})
    serves chat end to end, as a real process on a real socket.
    """

    def setUp(self) -> Any:
        self.worker_command = write_worker(self, LEGACY_WORKER)
        return super().setUp()

    async def test_chat(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "legacy says hi there")
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")

    async def test_chat_stream(self) -> None:
        events = await self.post_stream("/v1/chat/completions", dict(CHAT, stream=True))
        self.assertEqual(events[-1], (None, "[DONE]"))
        chunks = [json.loads(data) for _, data in events[:-1]]
        for chunk in chunks:
            validate(CHUNK_SCHEMA, chunk)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        self.assertEqual(content, "legacy says hi there")
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    async def test_responses(self) -> None:
        response, body = await self.post_json("/v1/responses", {"input": "old"})
        self.assertEqual(response.code, 200, body)
        validate(RESPONSE_SCHEMA, body)
        self.assertEqual(body["output_text"], "legacy says old")


class DyingWorkerTests(GatewayTestCase):
    """
    A worker that dies while serving a request: that request fails with
    an OpenAI 5xx error, and the gateway restarts the worker and serves
    again.
    """

    def setUp(self) -> None:
        # Collect garbage at the very end, so that an error left unhandled
        # in a Deferred is reported against this test and not a later one.
        self.addCleanup(gc.collect)
        self.handlers = {"chat_completions": self.chat_completions}
        super().setUp()

    def chat_completions(self, data: Any) -> Any:
        said = data["messages"][-1]["content"]
        if said == "die":
            self.memory.spawner.processes[-1].exit("exited with status 3")
            return []
        return {"content": "alive: " + said, "finish_reason": "stop"}

    async def test_chat(self) -> None:
        response, body = await self.post_json(
            "/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "die"}])
        )
        self.assertEqual(response.code // 100, 5, body)
        self.assertError(response, body, response.code, type="api_error")
        response, body = await self.get("/health")
        self.assertEqual((response.code, body), (200, b""))
        ready = self.gateway.whenReady()
        self.assertNoResult(ready)
        # The restart waits out its back-off.
        self.memory.advance(self.gateway.worker.min_delay)
        self.successResultOf(ready)
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "alive: hi there")
        self.assertEqual(self.gateway.worker.restarts, 1)


def raw_chat(data: Any) -> Any:
    said = data["messages"][-1]["content"]
    return [
        {"content": content, "finish_reason": reason}
        for content, reason in (("raw:", None), (" " + said, None), (None, "stop"))
    ]


class RawWorkerTests(GatewayTestCase):
    """
    A worker that knows nothing of our extensions still serves: the
    gateway takes it as ready after the start-up grace and does not need
    the handshake.
    """

    # A worker as the original library's users wrote them before our
    # handshake existed: unknown names ignored, as the v0.2 library does,
    # so it never answers hfendpoint.describe.
    gateway_options = {"startup_grace": 0.2}
    handlers = {"chat_completions": raw_chat}
    worker_options = {"handshake": "ignore"}

    def setUp(self) -> None:
        self.memory = start_memory_gateway(
            self, self.handlers, worker=self.worker_options, wait_ready=False, **self.gateway_options
        )
        self.url, self.gateway, self.http = self.memory.url, self.memory.service, self.memory.http
        self.memory.advance(0.2)
        self.successResultOf(self.gateway.whenReady())

    async def test_chat(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "raw: hi there")
        # Without the worker's tokenizer, the prompt's words are counted.
        self.assertEqual(body["usage"]["prompt_tokens"], 2)
        self.assertEqual(body["usage"]["completion_tokens"], 2)

    async def test_chat_stream(self) -> None:
        events = await self.post_stream("/v1/chat/completions", dict(CHAT, stream=True))
        self.assertEqual(events[-1], (None, "[DONE]"))
        chunks = [json.loads(d) for _, d in events[:-1]]
        for chunk in chunks:
            validate(CHUNK_SCHEMA, chunk)
        self.assertEqual(
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks), "raw: hi there"
        )
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    async def test_not_ready_yet(self) -> None:
        """
        Until a worker that does not answer the handshake is taken as ready
        (after the start-up grace, long here), the readiness probe says
        503, while liveness is fine.
        """
        memory = start_memory_gateway(
            self, self.handlers, worker=self.worker_options, wait_ready=False, startup_grace=60.0
        )
        memory.advance(59)
        response = await memory.http.get(memory.url + "/ready")
        body = await response.content()
        self.assertError(response, body, 503, type="api_error")
        response = await memory.http.get(memory.url + "/health")
        self.assertEqual(response.code, 200)
        self.assertFalse(memory.service.worker.ready)
        memory.advance(1)
        self.assertTrue(memory.service.worker.ready)

    async def test_models(self) -> None:
        """
        A worker that gave no model name is served under the default one.
        """
        response, body = await self.get("/v1/models")
        models = json.loads(body)
        validate(response_schema("/models", "get"), models)
        self.assertEqual(len(models["data"]), 1)
        self.assertTrue(models["data"][0]["id"])
