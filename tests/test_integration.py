"""
Integration tests: the whole gateway (site, admission, app, client,
protocol, supervisor) in memory on a C{MemoryReactorClock}, with a worker
that speaks the real protocol in memory (the demo worker's calls, or
handlers written for a test), and HTTP requests with treq, every body
checked against the official OpenAI OpenAPI document (L{tests.openapi}).
A real worker process on a real socket is left to a few tests
(L{LegacyWorkerTests} here, and the reliability, shutdown and client
modules).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import math
import re
import uuid
from typing import Any, Optional

from twisted.internet.defer import ensureDeferred, gatherResults, succeed
from twisted.trial.unittest import TestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from hfendpoint import WorkerError
from hfendpoint.testing import handler_replies
from hfendpoint.workers import demo

from .gateway import (
    as_float32,
    PNG_SIGNATURE,
    decode_float32,
    demo_embedding,
    demo_tokens,
    http_client,
    parse_sse,
    png_size,
    start_gateway,
    start_memory_gateway,
    tiny_png,
    write_worker,
)
from .openapi import response_schema, validate

DEMO_MODEL = "hfendpoint-demo"
DEMO_DIMENSION = 384
SAID = "hi there"
# The demo's reply to SAID, and the chunks it streams it in.
REPLY = "Hello! You said: hi there"
REPLY_CHUNKS = ["Hello", "!", " You", " said", ":", " hi", " there"]
CHAT = {"model": "anything", "messages": [{"role": "user", "content": SAID}]}

CHAT_SCHEMA = response_schema("/chat/completions", "post")
CHUNK_SCHEMA = response_schema("/chat/completions", "post", content_type="text/event-stream")
RESPONSE_SCHEMA = response_schema("/responses", "post")
RESPONSE_EVENT_SCHEMA = response_schema("/responses", "post", content_type="text/event-stream")
EMBEDDING_SCHEMA = response_schema("/embeddings", "post")
IMAGES_SCHEMA = response_schema("/images/generations", "post")
EDIT_SCHEMA = response_schema("/images/edits", "post")


class GatewayTestCase(TestCase):
    """
    A gateway in memory with the demo worker's calls (or C{handlers}),
    started for each test. Every request is served as far as it can be
    before the client's call returns, so the tests await Deferreds that
    have fired.
    """

    timeout = 30
    handlers: Optional[dict[str, Any]] = None
    worker_options: dict[str, Any] = {}
    gateway_options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.memory = start_memory_gateway(
            self, self.handlers, worker=dict(self.worker_options), **self.gateway_options
        )
        self.url, self.gateway, self.http = self.memory.url, self.memory.service, self.memory.http


    async def get(self, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        response = await self.http.get(self.url + path, **kwargs)
        return response, await response.content()

    async def delete(self, path: str) -> tuple[Any, bytes]:
        response = await self.http.delete(self.url + path)
        return response, await response.content()

    async def post_json(self, path: str, body: Any, **kwargs: Any) -> tuple[Any, Any]:
        """
        POST C{body} as JSON and return the response and its JSON body.
        """
        response = await self.http.post(self.url + path, json=body, **kwargs)
        content = await response.content()
        self.assertEqual(content_type(response), "application/json", content)
        self.assertWhole(response, content)
        return response, json.loads(content)

    def assertWhole(self, response: Any, content: bytes) -> None:
        """
        A whole JSON body goes with its length, not chunked (Twisted's
        client keeps the length from the Content-Length header, and has
        none for a chunked body).
        """
        self.assertEqual(response.length, len(content))

    async def post_raw(self, path: str, data: bytes, ctype: bytes = b"application/json") -> tuple[Any, bytes]:
        response = await self.http.post(
            self.url + path, data=data, headers={b"content-type": [ctype]}
        )
        return response, await response.content()

    async def post_stream(self, path: str, body: Any) -> list[tuple[Optional[str], str]]:
        """
        POST a streaming request; check it is answered with server-sent
        events and return them.
        """
        response = await self.http.post(self.url + path, json=body)
        content = await response.content()
        self.assertEqual(response.code, 200, content)
        self.assertEqual(content_type(response), "text/event-stream", content)
        return parse_sse(content)

    def assertError(
        self,
        response: Any,
        body: Any,
        status: int,
        param: Any = ...,
        type: Optional[str] = None,
    ) -> dict:
        """
        Check an OpenAI error: its status, its shape per the spec, and, when
        given, its C{param} and C{type} (by default C{invalid_request_error}
        for a 4xx).
        """
        if isinstance(body, bytes):
            self.assertEqual(content_type(response), "application/json", body)
            self.assertWhole(response, body)
            body = json.loads(body)
        self.assertEqual(response.code, status, body)
        validate("ErrorResponse", body)
        error = body["error"]
        self.assertTrue(error["message"], body)
        if type is None and 400 <= status < 500:
            type = "invalid_request_error"
        if type is not None:
            self.assertEqual(error["type"], type, body)
        if param is not ...:
            self.assertEqual(error["param"], param, body)
        return error


class RealGatewayTestCase(GatewayTestCase):
    """
    A real gateway on loopback with a real worker process (the demo
    worker, or C{worker_command}).
    """

    worker_command: Optional[list[str]] = None

    async def setUp(self) -> None:  # type: ignore[override]
        self.url, self.gateway = await start_gateway(
            self, self.worker_command, **self.gateway_options
        )
        self.http = http_client(self)


def content_type(response: Any) -> Optional[str]:
    values = response.headers.getRawHeaders(b"content-type")
    if not values:
        return None
    return values[0].decode("ascii").split(";")[0].strip().lower()


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


class LivenessTests(GatewayTestCase):
    async def test_root(self) -> None:
        response, body = await self.get("/")
        self.assertEqual((response.code, body), (200, b""))

    async def test_health(self) -> None:
        response, body = await self.get("/health")
        self.assertEqual((response.code, body), (200, b""))

    async def test_ready(self) -> None:
        """
        Once the worker is ready (which C{start_gateway} waited for), the
        readiness probe says so with a 200.
        """
        response, body = await self.get("/ready")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body), {"status": "ready"})

    async def test_models(self) -> None:
        """
        The one model is the demo worker's, as it named itself in the
        handshake.
        """
        response, body = await self.get("/v1/models")
        self.assertEqual(response.code, 200, body)
        models = json.loads(body)
        validate(response_schema("/models", "get"), models)
        self.assertEqual([m["id"] for m in models["data"]], [DEMO_MODEL])

    async def test_model(self) -> None:
        response, body = await self.get("/v1/models/" + DEMO_MODEL)
        self.assertEqual(response.code, 200, body)
        model = json.loads(body)
        validate(response_schema("/models/{model}", "get"), model)
        self.assertEqual((model["id"], model["object"]), (DEMO_MODEL, "model"))

    async def test_unknown_model(self) -> None:
        response, body = await self.get("/v1/models/no-such-model")
        self.assertError(response, body, 404)


class ChatTests(GatewayTestCase):
    async def test_plain(self) -> None:
        """
        A chat completion carries the worker's concatenated chunks, its
        finish reason and its token counts (2 prompt tokens, one completion
        token per chunk).
        """
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, body)
        self.assertEqual(body["object"], "chat.completion")
        self.assertEqual(body["model"], DEMO_MODEL)
        self.assertTrue(body["id"].startswith("chatcmpl-"), body["id"])
        [choice] = body["choices"]
        self.assertEqual(choice["index"], 0)
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertEqual(choice["message"]["content"], REPLY)
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(
            body["usage"]["prompt_tokens"], len(demo_tokens(SAID))
        )
        self.assertEqual(body["usage"]["completion_tokens"], len(REPLY_CHUNKS))
        self.assertEqual(
            body["usage"]["total_tokens"], len(demo_tokens(SAID)) + len(REPLY_CHUNKS)
        )

    async def test_max_tokens(self) -> None:
        """
        A reply cut by C{max_tokens} ends with C{length}.
        """
        response, body = await self.post_json(
            "/v1/chat/completions", dict(CHAT, max_tokens=3)
        )
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, body)
        [choice] = body["choices"]
        self.assertEqual(choice["message"]["content"], "".join(REPLY_CHUNKS[:3]))
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(body["usage"]["completion_tokens"], 3)

    def check_chunks(self, events: list[tuple[Optional[str], str]]) -> list[dict]:
        """
        Check a chat stream: data-only events, each a valid chunk of one
        completion, ending with C{[DONE]}.

        @return: the chunks.
        """
        self.assertEqual(events[-1], (None, "[DONE]"))
        chunks = []
        for event, data in events[:-1]:
            self.assertIsNone(event)
            chunk = json.loads(data)
            validate(CHUNK_SCHEMA, chunk)
            chunks.append(chunk)
        self.assertEqual({c["id"] for c in chunks}, {chunks[0]["id"]})
        self.assertEqual({c["object"] for c in chunks}, {"chat.completion.chunk"})
        self.assertEqual({c["model"] for c in chunks}, {DEMO_MODEL})
        return chunks

    async def test_stream(self) -> None:
        """
        A streamed completion is one chunk per worker chunk, the first with
        the role, the last with the finish reason, ending with C{[DONE]};
        its content reassembles to the plain reply.
        """
        _, plain = await self.post_json("/v1/chat/completions", CHAT)
        events = await self.post_stream("/v1/chat/completions", dict(CHAT, stream=True))
        chunks = self.check_chunks(events)
        for chunk in chunks:
            self.assertNotIn("usage", chunk)
            self.assertEqual(len(chunk["choices"]), 1)
        self.assertEqual(chunks[0]["choices"][0]["delta"].get("role"), "assistant")
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        self.assertEqual(content, plain["choices"][0]["message"]["content"])
        self.assertEqual(content, REPLY)
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        self.assertEqual(reasons[-1], "stop")
        self.assertEqual(set(reasons[:-1]), {None})

    async def test_stream_include_usage(self) -> None:
        """
        With C{stream_options.include_usage}, every chunk has C{usage: null}
        but a last one with no choices and the usage of the plain reply.
        """
        _, plain = await self.post_json("/v1/chat/completions", CHAT)
        events = await self.post_stream(
            "/v1/chat/completions",
            dict(CHAT, stream=True, stream_options={"include_usage": True}),
        )
        chunks = self.check_chunks(events)
        *content_chunks, last = chunks
        self.assertEqual(last["choices"], [])
        self.assertEqual(last["usage"], plain["usage"])
        for chunk in content_chunks:
            self.assertIn("usage", chunk)
            self.assertIsNone(chunk["usage"])
            self.assertEqual(len(chunk["choices"]), 1)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in content_chunks)
        self.assertEqual(content, REPLY)
        self.assertEqual(content_chunks[-1]["choices"][0]["finish_reason"], "stop")


    async def test_max_completion_tokens(self) -> None:
        """
        The newer name of the limit works too.
        """
        response, body = await self.post_json(
            "/v1/chat/completions", dict(CHAT, max_completion_tokens=2)
        )
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello!")
        self.assertEqual(body["choices"][0]["finish_reason"], "length")

    async def test_n(self) -> None:
        """
        C{n: 2} gives two choices, indexed, and counts the completion
        tokens of both.
        """
        response, body = await self.post_json("/v1/chat/completions", dict(CHAT, n=2))
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, body)
        self.assertEqual([c["index"] for c in body["choices"]], [0, 1])
        self.assertEqual([c["message"]["content"] for c in body["choices"]], [REPLY, REPLY])
        self.assertEqual(body["usage"]["prompt_tokens"], len(demo_tokens(SAID)))
        self.assertEqual(body["usage"]["completion_tokens"], 2 * len(REPLY_CHUNKS))

    async def test_n_stream(self) -> None:
        """
        Streamed choices each start with the role and end with one finish
        reason, and each reassembles to the reply.
        """
        events = await self.post_stream("/v1/chat/completions", dict(CHAT, n=2, stream=True))
        chunks = self.check_chunks(events)
        texts = {0: "", 1: ""}
        roles: dict[int, list] = {0: [], 1: []}
        reasons: dict[int, list] = {0: [], 1: []}
        for chunk in chunks:
            for choice in chunk["choices"]:
                i = choice["index"]
                texts[i] += choice["delta"].get("content") or ""
                roles[i].append(choice["delta"].get("role"))
                reasons[i].append(choice["finish_reason"])
        self.assertEqual(texts, {0: REPLY, 1: REPLY})
        for i in (0, 1):
            self.assertEqual(roles[i][0], "assistant")
            self.assertEqual(reasons[i][-1], "stop")
            self.assertEqual([r for r in reasons[i] if r], ["stop"])

    async def test_unicode(self) -> None:
        """
        Non-ASCII text goes through the worker and back intact, whole and
        streamed.
        """
        said = "héllo wörld, 世界 ✓"
        body = dict(CHAT, messages=[{"role": "user", "content": said}])
        response, result = await self.post_json("/v1/chat/completions", body)
        self.assertEqual(response.code, 200, result)
        self.assertEqual(result["choices"][0]["message"]["content"], "Hello! You said: " + said)
        chunks = self.check_chunks(
            await self.post_stream("/v1/chat/completions", dict(body, stream=True))
        )
        self.assertEqual(
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks),
            "Hello! You said: " + said,
        )

    async def test_concurrent(self) -> None:
        """
        Requests in flight at once each get their own reply: the worker's
        replies interleave on the socket and are routed by id.
        """

        async def one(i: int) -> tuple[int, str]:
            body = dict(CHAT, messages=[{"role": "user", "content": f"number {i}"}])
            stream = i % 2 == 1
            if stream:
                chunks = self.check_chunks(
                    await self.post_stream("/v1/chat/completions", dict(body, stream=True))
                )
                return 200, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            response, result = await self.post_json("/v1/chat/completions", body)
            return response.code, result["choices"][0]["message"]["content"]

        # All twenty are in flight before the worker answers any, and it
        # answers them a chunk of each in turn, in reverse order.
        self.memory.worker.handlers["chat_completions"] = lambda data: None
        self.memory.autoflush = False
        all_done = gatherResults([ensureDeferred(one(i)) for i in range(20)])
        self.memory.flush()
        self.memory.autoflush = True
        calls = list(self.memory.worker.pending.values())
        self.assertEqual(len(calls), 20)
        replies = [list(handler_replies(demo.chat_completions(call.data))) for call in calls]
        while any(replies):
            for call, left in reversed(list(zip(calls, replies))):
                if left:
                    call.reply(left.pop(0))
            self.memory.flush()
        results = self.successResultOf(all_done)
        self.assertEqual(results, [(200, f"Hello! You said: number {i}") for i in range(20)])


RESPONSE_EVENTS_BEFORE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
RESPONSE_EVENTS_AFTER = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


class ResponsesTests(GatewayTestCase):
    async def test_plain(self) -> None:
        response, body = await self.post_json(
            "/v1/responses", {"model": "anything", "input": SAID}
        )
        self.assertEqual(response.code, 200, body)
        validate(RESPONSE_SCHEMA, body)
        self.assertEqual(body["object"], "response")
        self.assertEqual(body["status"], "completed")
        self.assertEqual(body["model"], DEMO_MODEL)
        [item] = body["output"]
        self.assertEqual((item["type"], item["role"], item["status"]), ("message", "assistant", "completed"))
        [part] = item["content"]
        self.assertEqual((part["type"], part["text"]), ("output_text", REPLY))
        self.assertEqual(body.get("output_text"), REPLY)
        usage = body["usage"]
        self.assertEqual(usage["input_tokens"], len(demo_tokens(SAID)))
        self.assertEqual(usage["output_tokens"], len(REPLY_CHUNKS))
        self.assertEqual(usage["total_tokens"], usage["input_tokens"] + usage["output_tokens"])

    async def test_instructions(self) -> None:
        """
        C{instructions} are echoed back, and the worker still answers the
        user's C{input} (the demo echoes the last user message).
        """
        response, body = await self.post_json(
            "/v1/responses", {"input": SAID, "instructions": "Be brief."}
        )
        self.assertEqual(response.code, 200, body)
        validate(RESPONSE_SCHEMA, body)
        self.assertEqual(body["instructions"], "Be brief.")
        self.assertEqual(body["output"][0]["content"][0]["text"], REPLY)

    async def test_stream(self) -> None:
        """
        A streamed response is the Responses API event sequence, in
        PROTOCOL.md's order, each event named by its C{type} and valid per
        the spec, numbered from 0; the deltas make the final text.
        """
        events = await self.post_stream(
            "/v1/responses", {"model": "anything", "input": SAID, "stream": True}
        )
        # The gateway ends every stream with the chat API's end marker; the
        # official client stops on it, so it is tolerated here.
        if events and events[-1] == (None, "[DONE]"):
            events = events[:-1]
        payloads = []
        for event, data in events:
            payload = json.loads(data)
            validate(RESPONSE_EVENT_SCHEMA, payload)
            self.assertEqual(event, payload["type"])
            payloads.append(payload)
        types = [p["type"] for p in payloads]
        deltas = len(types) - len(RESPONSE_EVENTS_BEFORE) - len(RESPONSE_EVENTS_AFTER)
        self.assertEqual(
            types,
            RESPONSE_EVENTS_BEFORE + ["response.output_text.delta"] * deltas + RESPONSE_EVENTS_AFTER,
        )
        self.assertEqual(deltas, len(REPLY_CHUNKS))
        self.assertEqual([p["sequence_number"] for p in payloads], list(range(len(payloads))))
        text = "".join(p["delta"] for p in payloads if p["type"] == "response.output_text.delta")
        self.assertEqual(text, REPLY)
        by_type = {p["type"]: p for p in payloads}
        self.assertEqual(by_type["response.output_text.done"]["text"], REPLY)
        self.assertEqual(by_type["response.content_part.done"]["part"]["text"], REPLY)
        self.assertEqual(by_type["response.created"]["response"]["status"], "in_progress")
        final = by_type["response.completed"]["response"]
        validate(RESPONSE_SCHEMA, final)
        self.assertEqual(final["status"], "completed")
        self.assertEqual(final["output"][0]["content"][0]["text"], REPLY)
        self.assertEqual(final["id"], by_type["response.created"]["response"]["id"])
        item_id = final["output"][0]["id"]
        for payload in payloads:
            if "item_id" in payload:
                self.assertEqual(payload["item_id"], item_id)


    async def test_echo(self) -> None:
        """
        The response echoes the request's settings.
        """
        request = {
            "input": SAID,
            "temperature": 0.5,
            "top_p": 0.9,
            "metadata": {"a": "b"},
            "user": "someone",
            "max_output_tokens": 100,
        }
        response, body = await self.post_json("/v1/responses", request)
        self.assertEqual(response.code, 200, body)
        validate(RESPONSE_SCHEMA, body)
        for key in ("temperature", "top_p", "metadata", "user", "max_output_tokens"):
            self.assertEqual(body[key], request[key], key)

    async def test_max_output_tokens(self) -> None:
        """
        A reply cut by C{max_output_tokens} is C{incomplete} with reason
        C{max_output_tokens}, as the OpenAI API answers (PROTOCOL.md says
        the original called it C{completed}; the API's status is what
        clients act on).
        """
        said = " ".join(f"w{i}" for i in range(40))
        response, body = await self.post_json(
            "/v1/responses", {"input": said, "max_output_tokens": 16}
        )
        self.assertEqual(response.code, 200, body)
        validate(RESPONSE_SCHEMA, body)
        self.assertEqual(body["status"], "incomplete")
        self.assertEqual(body["incomplete_details"], {"reason": "max_output_tokens"})
        self.assertEqual(body["usage"]["output_tokens"], 16)
        self.assertEqual(body["max_output_tokens"], 16)

    async def test_max_output_tokens_stream(self) -> None:
        said = " ".join(f"w{i}" for i in range(40))
        events = await self.post_stream(
            "/v1/responses", {"input": said, "max_output_tokens": 16, "stream": True}
        )
        payloads = [json.loads(d) for _, d in events if d != "[DONE]"]
        for payload in payloads:
            validate(RESPONSE_EVENT_SCHEMA, payload)
        self.assertEqual(payloads[-1]["type"], "response.incomplete")
        self.assertEqual(payloads[-1]["response"]["status"], "incomplete")
        deltas = [p for p in payloads if p["type"] == "response.output_text.delta"]
        self.assertEqual(len(deltas), 16)

    async def test_unsupported_previous_response(self) -> None:
        response, body = await self.post_json(
            "/v1/responses", {"input": "x", "previous_response_id": "resp_123"}
        )
        self.assertError(response, body, 400, param="previous_response_id")


class EmbeddingsTests(GatewayTestCase):
    async def embeddings(self, **body: Any) -> dict:
        response, result = await self.post_json("/v1/embeddings", dict(body, model="anything"))
        self.assertEqual(response.code, 200, result)
        # Schema validation of thousands of vectors takes seconds; the
        # items all come from the same code, so a few stand for the rest.
        sample = result["data"][:8]
        if body.get("encoding_format") == "base64":
            # Spec quirk (tests/openapi.py): Embedding.embedding is only
            # number[], yet base64 is a string; validate the decoded copy.
            sample = [dict(d, embedding=decode_float32(d["embedding"])) for d in sample]
        validate(EMBEDDING_SCHEMA, dict(result, data=sample))
        self.assertEqual(result["object"], "list")
        self.assertEqual(result["model"], DEMO_MODEL)
        self.assertEqual([d["index"] for d in result["data"]], list(range(len(result["data"]))))
        for d in result["data"]:
            self.assertEqual(d["object"], "embedding")
        return result

    def assertVector(self, actual: list[float], expected: list[float]) -> None:
        self.assertEqual(len(actual), len(expected))
        for a, e in zip(actual, expected):
            self.assertAlmostEqual(a, e, places=6)

    async def test_string(self) -> None:
        text = "The quick brown fox."
        result = await self.embeddings(input=text)
        [item] = result["data"]
        tokens = demo_tokens(text)
        self.assertVector(item["embedding"], demo_embedding(tokens, DEMO_DIMENSION))
        self.assertAlmostEqual(norm(item["embedding"]), 1.0, places=5)
        self.assertEqual(result["usage"], {"prompt_tokens": len(tokens), "total_tokens": len(tokens)})

    async def test_strings(self) -> None:
        texts = ["first text", "a second, longer text", "first text"]
        result = await self.embeddings(input=texts)
        vectors = [d["embedding"] for d in result["data"]]
        self.assertEqual(len(vectors), 3)
        for text, vector in zip(texts, vectors):
            self.assertVector(vector, demo_embedding(demo_tokens(text), DEMO_DIMENSION))
        self.assertEqual(vectors[0], vectors[2])
        self.assertNotEqual(vectors[0], vectors[1])
        count = sum(len(demo_tokens(t)) for t in texts)
        self.assertEqual(result["usage"]["prompt_tokens"], count)

    async def test_tokens(self) -> None:
        """
        A list of token ids is one input, embedded without tokenizing.
        """
        tokens = [1000, 2000, 3000, 4000]
        result = await self.embeddings(input=tokens)
        [item] = result["data"]
        self.assertVector(item["embedding"], demo_embedding(tokens, DEMO_DIMENSION))
        self.assertEqual(result["usage"]["prompt_tokens"], 4)

    async def test_token_lists(self) -> None:
        inputs = [[1000, 2000], [3000], [1000, 2000]]
        result = await self.embeddings(input=inputs)
        vectors = [d["embedding"] for d in result["data"]]
        self.assertEqual(len(vectors), 3)
        for tokens, vector in zip(inputs, vectors):
            self.assertVector(vector, demo_embedding(tokens, DEMO_DIMENSION))
        self.assertEqual(result["usage"]["prompt_tokens"], 5)

    async def test_text_and_tokens_agree(self) -> None:
        """
        A text and its token ids give the same vector.
        """
        text = "tokens, please"
        by_text = await self.embeddings(input=text)
        by_tokens = await self.embeddings(input=demo_tokens(text))
        self.assertEqual(by_text["data"][0]["embedding"], by_tokens["data"][0]["embedding"])

    async def test_base64(self) -> None:
        """
        C{encoding_format: base64} is the float32 little-endian bytes of
        the very vectors the float format gives.
        """
        texts = ["one", "two words"]
        floats = await self.embeddings(input=texts, encoding_format="float")
        encoded = await self.embeddings(input=texts, encoding_format="base64")
        for f, e in zip(floats["data"], encoded["data"]):
            self.assertIsInstance(e["embedding"], str)
            self.assertEqual(len(base64.b64decode(e["embedding"])), 4 * DEMO_DIMENSION)
            self.assertEqual(decode_float32(e["embedding"]), as_float32(f["embedding"]))
        self.assertEqual(floats["usage"], encoded["usage"])

    async def test_largest_batch(self) -> None:
        """
        The API's largest batch, 2048 inputs, goes through in one piece.
        """
        texts = [f"text number {i}" for i in range(2048)]
        result = await self.embeddings(input=texts, encoding_format="base64")
        self.assertEqual(len(result["data"]), 2048)
        for i in (0, 1234, 2047):
            self.assertVector(
                decode_float32(result["data"][i]["embedding"]),
                demo_embedding(demo_tokens(texts[i])),
            )
        self.assertEqual(result["usage"]["prompt_tokens"], 3 * 2048)

    async def test_too_many_inputs(self) -> None:
        response, body = await self.post_json("/v1/embeddings", {"input": ["x"] * 2049})
        self.assertError(response, body, 400, param="input")

    async def test_dimensions(self) -> None:
        """
        C{dimensions} truncates and renormalises: a unit vector pointing
        like the first C{dimensions} components of the full one.
        """
        text = "shorter please"
        full = (await self.embeddings(input=text))["data"][0]["embedding"]
        short = (await self.embeddings(input=text, dimensions=8))["data"][0]["embedding"]
        self.assertEqual(len(short), 8)
        self.assertAlmostEqual(norm(short), 1.0, places=5)
        head = full[:8]
        scale = norm(head)
        self.assertLess(scale, 0.99)  # so renormalising is visible
        self.assertVector(short, [x / scale for x in head])

    async def test_dimensions_base64(self) -> None:
        short = await self.embeddings(input="abc", dimensions=16, encoding_format="base64")
        vector = decode_float32(short["data"][0]["embedding"])
        self.assertEqual(len(vector), 16)
        self.assertAlmostEqual(norm(vector), 1.0, places=5)


class ImagesTests(GatewayTestCase):
    async def generate(self, headers: Any = None, **body: Any) -> tuple[Any, dict]:
        response, result = await self.post_json(
            "/v1/images/generations", dict({"prompt": "a red square"}, **body), headers=headers
        )
        self.assertEqual(response.code, 200, result)
        validate(IMAGES_SCHEMA, result)
        self.assertIsInstance(result["created"], int)
        return response, result


    async def test_default_size(self) -> None:
        """
        Without C{size}, an image is 1024x1024.
        """
        _, result = await self.generate()
        png = base64.b64decode(result["data"][0]["b64_json"])
        self.assertEqual(png_size(png), (1024, 1024))

    async def test_bad_n(self) -> None:
        for n in (0, 11, "two"):
            response, body = await self.post_json(
                "/v1/images/generations", {"prompt": "p", "n": n, "size": "8x8"}
            )
            self.assertError(response, body, 400, param="n")

    async def test_b64_json(self) -> None:
        _, result = await self.generate(size="64x32", response_format="b64_json")
        [image] = result["data"]
        self.assertNotIn("url", image)
        png = base64.b64decode(image["b64_json"], validate=True)
        self.assertEqual(png[:8], PNG_SIGNATURE)
        self.assertEqual(png_size(png), (64, 32))

    async def test_b64_json_default(self) -> None:
        """
        C{b64_json} is the default format; C{n} images come back.
        """
        _, result = await self.generate(size="16x16", n=2)
        pngs = [base64.b64decode(i["b64_json"]) for i in result["data"]]
        self.assertEqual(len(pngs), 2)
        self.assertEqual([png_size(p) for p in pngs], [(16, 16), (16, 16)])
        self.assertNotEqual(pngs[0], pngs[1])

    async def test_url(self) -> None:
        """
        An image by URL can be fetched until it is deleted, once.
        """
        _, result = await self.generate(size="32x48", response_format="url")
        [image] = result["data"]
        self.assertNotIn("b64_json", image)
        url = image["url"]
        self.assertTrue(url.startswith(self.url + "/v1/images/"), url)
        path = url[len(self.url):]

        response, png = await self.get(path)
        self.assertEqual(response.code, 200, png)
        self.assertEqual(content_type(response), "image/png")
        self.assertWhole(response, png)
        self.assertEqual(png_size(png), (32, 48))

        response, body = await self.delete(path)
        self.assertEqual((response.code, body), (204, b""))
        response, body = await self.get(path)
        self.assertError(response, body, 404)
        response, body = await self.delete(path)
        self.assertError(response, body, 404)

    async def test_url_forwarded(self) -> None:
        """
        Behind a proxy, the URL is built from X-Forwarded-Proto and
        X-Forwarded-Host.
        """
        _, result = await self.generate(
            size="8x8",
            response_format="url",
            headers={b"x-forwarded-proto": [b"https"], b"x-forwarded-host": [b"api.example.com"]},
        )
        url = result["data"][0]["url"]
        self.assertTrue(url.startswith("https://api.example.com/v1/images/"), url)
        response, png = await self.get(url[len("https://api.example.com"):])
        self.assertEqual(response.code, 200)
        self.assertEqual(png_size(png), (8, 8))

    async def test_unguessable_ids(self) -> None:
        """
        An image's URL is the only credential for it: ids carry at least
        128 random bits (here: at least 22 base64url or 32 hex characters
        after any short alphabetic prefix), and differ every time.
        """
        _, result = await self.generate(size="4x4", n=4, response_format="url")
        ids = [i["url"].rsplit("/", 1)[1] for i in result["data"]]
        self.assertEqual(len(set(ids)), 4, ids)
        for image_id in ids:
            random_part = re.sub(r"^[A-Za-z]{1,8}[-_]", "", image_id)
            if re.fullmatch(r"[0-9a-f]+", random_part):
                bits = 4 * len(random_part)
            else:
                self.assertRegex(random_part, r"^[A-Za-z0-9_-]+$")
                bits = 6 * len(random_part)
            self.assertGreaterEqual(bits, 128, image_id)
        # Neither a counter nor a timestamp: no long common prefix.
        common = len(_common_prefix(ids))
        self.assertLess(common, len(ids[0]) - 20, ids)

    async def test_unknown_image(self) -> None:
        response, body = await self.get("/v1/images/img-" + uuid.uuid4().hex)
        self.assertError(response, body, 404)

    def multipart(self, fields: list[tuple[str, Any]]) -> tuple[bytes, bytes]:
        """
        Encode a multipart/form-data body: a field is C{(name, text)} or
        C{(name, (filename, bytes, content_type))}.

        @return: the body and the content type header value.
        """
        boundary = "----hfendpoint-test-" + uuid.uuid4().hex
        out = b""
        for name, value in fields:
            out += b"--" + boundary.encode() + b"\r\n"
            if isinstance(value, tuple):
                filename, data, ctype = value
                out += (
                    f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n"
                ).encode() + data + b"\r\n"
            else:
                out += (
                    f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                ).encode()
        out += b"--" + boundary.encode() + b"--\r\n"
        return out, f"multipart/form-data; boundary={boundary}".encode()

    async def edit(self, fields: list[tuple[str, Any]]) -> tuple[Any, bytes]:
        body, ctype = self.multipart(fields)
        return await self.post_raw("/v1/images/edits", body, ctype)

    async def test_edit(self) -> None:
        response, body = await self.edit(
            [
                ("prompt", "make it blue"),
                ("size", "24x12"),
                ("n", "2"),
                ("response_format", "b64_json"),
                ("image", ("in.png", tiny_png(), "image/png")),
            ]
        )
        self.assertEqual(response.code, 200, body)
        result = json.loads(body)
        validate(EDIT_SCHEMA, result)
        pngs = [base64.b64decode(i["b64_json"]) for i in result["data"]]
        self.assertEqual([png_size(p) for p in pngs], [(24, 12), (24, 12)])

    async def test_edit_with_mask_url(self) -> None:
        """
        A mask changes the picture (the demo tints by its inputs), and
        C{url} works for edits too.
        """
        base = [("prompt", "p"), ("size", "8x8"), ("response_format", "url"),
                ("image", ("in.png", tiny_png(), "image/png"))]
        response, body = await self.edit(base)
        self.assertEqual(response.code, 200, body)
        response, masked = await self.edit(base + [("mask", ("m.png", tiny_png(3, 3), "image/png"))])
        self.assertEqual(response.code, 200, masked)
        pngs = []
        for result in (json.loads(body), json.loads(masked)):
            validate(EDIT_SCHEMA, result)
            response, png = await self.get(result["data"][0]["url"][len(self.url):])
            self.assertEqual(response.code, 200)
            self.assertEqual(png_size(png), (8, 8))
            pngs.append(png)
        self.assertNotEqual(pngs[0], pngs[1])

    async def test_edit_with_treq_files(self) -> None:
        """
        treq's own multipart encoding works too.
        """
        response = await self.http.post(
            self.url + "/v1/images/edits",
            data={"prompt": "x", "size": "10x20"},
            files={"image": ("in.png", "image/png", tiny_png())},
        )
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        result = json.loads(body)
        validate(EDIT_SCHEMA, result)
        self.assertEqual(png_size(base64.b64decode(result["data"][0]["b64_json"])), (10, 20))

    async def test_edit_not_png(self) -> None:
        response, body = await self.edit(
            [("prompt", "p"), ("image", ("in.jpg", b"\xff\xd8\xff\xe0 not a png", "image/jpeg"))]
        )
        self.assertError(response, body, 400, param="image")

    async def test_edit_no_image(self) -> None:
        response, body = await self.edit([("prompt", "p")])
        self.assertError(response, body, 400, param="image")

    async def test_edit_not_multipart(self) -> None:
        response, body = await self.post_raw(
            "/v1/images/edits", json.dumps({"prompt": "p"}).encode()
        )
        self.assertError(response, body, 400)


def _common_prefix(strings: list[str]) -> str:
    first, last = min(strings), max(strings)
    i = 0
    while i < len(first) and i < len(last) and first[i] == last[i]:
        i += 1
    return first[:i]


class ErrorTests(GatewayTestCase):
    async def test_bad_json(self) -> None:
        for path in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/images/generations"):
            response, body = await self.post_raw(path, b'{"messages": [')
            self.assertError(response, body, 400)

    async def test_not_an_object(self) -> None:
        for payload in (b"[]", b'"text"', b"42", b"null"):
            response, body = await self.post_raw("/v1/chat/completions", payload)
            self.assertError(response, body, 400)

    async def test_nan(self) -> None:
        """
        NaN is not JSON.
        """
        response, body = await self.post_raw(
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        )
        self.assertError(response, body, 400)

    async def test_wrong_type(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", dict(CHAT, temperature="hot"))
        self.assertError(response, body, 400, param="temperature")

    async def test_chat_bad_response_format(self) -> None:
        """
        A nested field at fault is named by its full path, as the API does.
        """
        response, body = await self.post_json(
            "/v1/chat/completions", dict(CHAT, response_format={"type": "bogus"})
        )
        self.assertError(response, body, 400, param="response_format.type")

    async def test_stream_options_wrong_type(self) -> None:
        response, body = await self.post_json(
            "/v1/chat/completions",
            dict(CHAT, stream=True, stream_options={"include_usage": "yes"}),
        )
        self.assertError(response, body, 400, param="stream_options.include_usage")

    async def test_out_of_range(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", dict(CHAT, temperature=3))
        self.assertError(response, body, 400, param="temperature")

    async def test_stream_wrong_type(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", dict(CHAT, stream="yes"))
        self.assertError(response, body, 400, param="stream")

    async def test_missing_messages(self) -> None:
        response, body = await self.post_json("/v1/chat/completions", {"model": "m"})
        self.assertError(response, body, 400, param="messages")

    async def test_bad_message(self) -> None:
        response, body = await self.post_json(
            "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}
        )
        error = self.assertError(response, body, 400)
        self.assertIn("messages[0]", error["param"])

    async def test_responses_missing_input(self) -> None:
        response, body = await self.post_json("/v1/responses", {"model": "m"})
        self.assertError(response, body, 400, param="input")

    async def test_embeddings_missing_input(self) -> None:
        response, body = await self.post_json("/v1/embeddings", {"model": "m"})
        self.assertError(response, body, 400, param="input")

    async def test_embeddings_empty_input(self) -> None:
        response, body = await self.post_json("/v1/embeddings", {"input": []})
        self.assertError(response, body, 400, param="input")

    async def test_embeddings_empty_string(self) -> None:
        response, body = await self.post_json("/v1/embeddings", {"input": ""})
        self.assertError(response, body, 400, param="input[0]")

    async def test_embeddings_empty_item(self) -> None:
        response, body = await self.post_json("/v1/embeddings", {"input": ["fine", ""]})
        self.assertError(response, body, 400, param="input[1]")

    async def test_embeddings_empty_token_list(self) -> None:
        response, body = await self.post_json("/v1/embeddings", {"input": [[1000], [1001], []]})
        self.assertError(response, body, 400, param="input[2]")

    async def test_embeddings_untokenizable_item(self) -> None:
        """
        Text with no token at all (only spaces) is empty once tokenized,
        and named by its index too.
        """
        response, body = await self.post_json("/v1/embeddings", {"input": ["fine", "   "]})
        self.assertError(response, body, 400, param="input[1]")

    async def test_embeddings_bad_encoding(self) -> None:
        response, body = await self.post_json(
            "/v1/embeddings", {"input": "x", "encoding_format": "int8"}
        )
        self.assertError(response, body, 400, param="encoding_format")

    async def test_bad_size(self) -> None:
        for size in ("big", "0x10", "10x", "1024x1024x3"):
            response, body = await self.post_json(
                "/v1/images/generations", {"prompt": "p", "size": size}
            )
            self.assertError(response, body, 400, param="size")

    async def test_bad_response_format(self) -> None:
        response, body = await self.post_json(
            "/v1/images/generations", {"prompt": "p", "response_format": "gif"}
        )
        self.assertError(response, body, 400, param="response_format")

    async def test_missing_prompt(self) -> None:
        response, body = await self.post_json("/v1/images/generations", {"size": "8x8"})
        self.assertError(response, body, 400, param="prompt")

    async def test_unknown_route(self) -> None:
        response, body = await self.get("/v1/nothing/here")
        self.assertError(response, body, 404)
        response, body = await self.post_raw("/v2/chat/completions", b"{}")
        self.assertError(response, body, 404)

    async def test_wrong_method(self) -> None:
        response, body = await self.get("/v1/chat/completions")
        self.assertError(response, body, 405)
        allow = response.headers.getRawHeaders(b"allow")
        self.assertIsNotNone(allow)
        self.assertIn(b"POST", allow[0])

    async def test_wrong_method_delete(self) -> None:
        response, body = await self.delete("/v1/embeddings")
        self.assertError(response, body, 405)


class BodySizeTests(GatewayTestCase):
    gateway_options = {"max_body_size": 1024}

    async def test_too_large(self) -> None:
        payload = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "x" * 2048}])).encode()
        response, body = await self.post_raw("/v1/chat/completions", payload)
        self.assertError(response, body, 413)

    async def test_under_limit(self) -> None:
        """
        A body under the limit is served as usual.
        """
        payload = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "y " * 400}])).encode()
        self.assertLess(len(payload), 1024)
        response, body = await self.post_raw("/v1/chat/completions", payload)
        self.assertEqual(response.code, 200, body)
        validate(CHAT_SCHEMA, json.loads(body))


    async def test_too_large_big(self) -> None:
        """
        A body far over the limit (the client still sending it when the
        gateway answers) gets the 413 too.
        """
        payload = b'{"x": "' + b"x" * (4 * 1024 * 1024) + b'"}'
        response, body = await self.post_raw("/v1/chat/completions", payload)
        self.assertError(response, body, 413)

    async def test_too_large_chunked(self) -> None:
        """
        A chunked body, with no Content-Length announcing its size, is
        refused once it grows past the limit.
        """

        @implementer(IBodyProducer)
        class Producer:
            length = UNKNOWN_LENGTH

            def startProducing(self, consumer: Any) -> Any:
                consumer.write(b'{"x": "' + b"x" * 3000 + b'"}')
                return succeed(None)

            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        response = await self.http.post(self.url + "/v1/chat/completions", data=Producer())
        self.assertError(response, await response.content(), 413)

    async def test_still_serving(self) -> None:
        """
        After refusing a body, the gateway serves the next request.
        """
        response, body = await self.post_raw("/v1/embeddings", b"[" + b"1," * 1000 + b"1]")
        self.assertError(response, body, 413)
        response, body = await self.post_json("/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200, body)


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


class ImageCapacityTests(GatewayTestCase):
    """
    The store behind C{response_format: url} is bounded: the oldest image
    is dropped first.
    """

    # Room for one 64x64 demo image ("first" is 396 bytes, "second" 289),
    # not for two.
    gateway_options = {"max_image_capacity": 500}

    async def url_for(self, prompt: str) -> str:
        response, result = await self.post_json(
            "/v1/images/generations", {"prompt": prompt, "size": "64x64", "response_format": "url"}
        )
        self.assertEqual(response.code, 200, result)
        return result["data"][0]["url"][len(self.url):]

    async def test_oldest_dropped(self) -> None:
        # The images' bytes, by b64_json (which the store does not keep):
        # the demo paints the same bytes for the same prompt every time.
        expected = {}
        for prompt in ("first", "second"):
            response, result = await self.post_json(
                "/v1/images/generations", {"prompt": prompt, "size": "64x64"}
            )
            self.assertEqual(response.code, 200, result)
            expected[prompt] = base64.b64decode(result["data"][0]["b64_json"])
        self.assertLess(max(map(len, expected.values())), 500)
        self.assertGreater(sum(map(len, expected.values())), 500)

        first = await self.url_for("first")
        response, png = await self.get(first)
        self.assertEqual((response.code, png), (200, expected["first"]))
        second = await self.url_for("second")
        response, body = await self.get(first)
        self.assertError(response, body, 404)
        response, png = await self.get(second)
        self.assertEqual((response.code, png), (200, expected["second"]))


class CancelTests(GatewayTestCase):
    """
    A client that goes away in the middle of a stream stops the worker's
    work on it.
    """

    timeout = 15
    # The worker answers by hand.
    handlers = {"chat_completions": lambda data: None}

    async def test_stream_client_gone(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol

        first: Deferred = Deferred()
        lost: Deferred = Deferred()

        class HangUp(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not first.called:
                    first.callback(data)
                    self.transport.stopProducing()

            def connectionLost(self, reason: Any) -> None:
                lost.callback(None)

        worker = self.memory.worker
        answered = self.http.post(self.url + "/v1/chat/completions", json=dict(CHAT, stream=True))
        [call] = worker.pending.values()
        for _ in range(3):
            call.reply({"content": "more ", "finish_reason": None})
        self.memory.flush()
        response = self.successResultOf(answered)
        self.assertEqual(response.code, 200)
        response.deliverBody(HangUp())
        data = self.successResultOf(first)
        self.assertIn(b"more ", data)
        self.memory.flush()
        self.successResultOf(lost)
        # The worker was told to stop the stream.
        self.assertEqual(worker.cancelled, [call.ident])
        self.assertEqual(worker.pending, {})


# A worker that tells what it received: the chat reply is the request data
# as JSON; an "image" is the PNG signature and then the request data as
# JSON (the gateway passes a worker's PNG bytes through untouched); a text
# tokenizes to [1000 + its length], and an embedding is its token ids.


def described(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, bytes):
            value = {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        out[key] = value
    return out


def echo_images(data: dict) -> Any:
    for index in range(data["n"]):
        yield {"png": PNG_SIGNATURE + json.dumps(dict(described(data), index=index)).encode()}


ECHO_WORKER = {
    "chat_completions": lambda data: {
        "content": json.dumps(data, sort_keys=True),
        "finish_reason": "stop",
    },
    "tokenize": lambda data: {"tokens": [[1000 + len(text)] for text in data["input"]]},
    "embeddings": lambda data: {
        "embeddings": [[float(t) for t in tokens] for tokens in data["input"]]
    },
    "images_generations": echo_images,
    "images_editions": echo_images,
}


class WorkerDataTests(GatewayTestCase):
    """
    What the worker receives for each endpoint, as PROTOCOL.md describes
    the original's calls, seen by a worker that echoes it back.
    """

    handlers = ECHO_WORKER

    async def chat_data(self, path: str, body: dict) -> dict:
        response, result = await self.post_json(path, body)
        self.assertEqual(response.code, 200, result)
        if path == "/v1/responses":
            return json.loads(result["output_text"])
        return json.loads(result["choices"][0]["message"]["content"])

    async def test_chat(self) -> None:
        messages = [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hello"},
        ]
        data = await self.chat_data(
            "/v1/chat/completions", {"messages": messages, "temperature": 0.5}
        )
        self.assertEqual(data["messages"], messages)
        self.assertIs(data["stream"], False)
        self.assertEqual(data["temperature"], 0.5)

    async def test_chat_stream(self) -> None:
        events = await self.post_stream(
            "/v1/chat/completions", dict(CHAT, stream=True, max_completion_tokens=5)
        )
        text = "".join(
            json.loads(d)["choices"][0]["delta"].get("content") or ""
            for _, d in events
            if d != "[DONE]"
        )
        data = json.loads(text)
        self.assertEqual(data["messages"], CHAT["messages"])
        self.assertIs(data["stream"], True)
        # Older workers only know max_tokens.
        self.assertEqual(data["max_tokens"], 5)

    async def test_responses(self) -> None:
        """
        C{input} becomes a user message, C{instructions} a system message
        before it.
        """
        data = await self.chat_data(
            "/v1/responses", {"input": "hello", "instructions": "be nice", "max_output_tokens": 20}
        )
        self.assertEqual(
            data["messages"],
            [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"}],
        )
        self.assertIs(data["stream"], False)
        self.assertEqual(data["max_tokens"], 20)

    async def test_embeddings_text(self) -> None:
        """
        Texts are tokenized by the worker, and the token lists embedded.
        """
        response, result = await self.post_json("/v1/embeddings", {"input": ["abc", "hello"]})
        self.assertEqual(response.code, 200, result)
        self.assertEqual([d["embedding"] for d in result["data"]], [[1003.0], [1005.0]])
        self.assertEqual(result["usage"]["prompt_tokens"], 2)

    async def test_embeddings_tokens(self) -> None:
        response, result = await self.post_json("/v1/embeddings", {"input": [[5, 6, 7], [8]]})
        self.assertEqual(response.code, 200, result)
        self.assertEqual([d["embedding"] for d in result["data"]], [[5.0, 6.0, 7.0], [8.0]])
        self.assertEqual(result["usage"]["prompt_tokens"], 4)

    def image_data(self, result: dict) -> list[dict]:
        out = []
        for image in result["data"]:
            raw = base64.b64decode(image["b64_json"])
            self.assertEqual(raw[:8], PNG_SIGNATURE)
            out.append(json.loads(raw[8:]))
        return out

    async def test_generations(self) -> None:
        """
        The worker gets exactly C{prompt}, C{n}, C{width} and C{height}.
        """
        response, result = await self.post_json(
            "/v1/images/generations", {"prompt": "a cat", "n": 2, "size": "320x240", "model": "x"}
        )
        self.assertEqual(response.code, 200, result)
        self.assertEqual(
            self.image_data(result),
            [
                {"prompt": "a cat", "n": 2, "width": 320, "height": 240, "index": 0},
                {"prompt": "a cat", "n": 2, "width": 320, "height": 240, "index": 1},
            ],
        )

    async def test_edits(self) -> None:
        """
        An edit also sends the image and the mask, as binary.
        """
        import hashlib

        image, mask = tiny_png(3, 3), tiny_png(5, 5)
        response = await self.http.post(
            self.url + "/v1/images/edits",
            data={"prompt": "a dog", "size": "64x32"},
            files={"image": ("i.png", "image/png", image), "mask": ("m.png", "image/png", mask)},
        )
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        [data] = self.image_data(json.loads(body))
        self.assertEqual(
            data,
            {
                "prompt": "a dog",
                "n": 1,
                "width": 64,
                "height": 32,
                "image": {"bytes": len(image), "sha256": hashlib.sha256(image).hexdigest()},
                "mask": {"bytes": len(mask), "sha256": hashlib.sha256(mask).hexdigest()},
                "index": 0,
            },
        )
