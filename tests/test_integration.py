"""
Integration tests, the whole gateway in memory (see
L{tests.integration}): liveness, readiness, models and chat.
"""

from __future__ import annotations

import json
from typing import Optional

from hfendpoint.testing import handler_replies
from hfendpoint.workers import demo
from twisted.internet.defer import ensureDeferred, gatherResults

from .gateway import demo_tokens
from .integration import (
    CHAT,
    CHAT_SCHEMA,
    CHUNK_SCHEMA,
    DEMO_MODEL,
    GatewayTestCase,
    REPLY,
    REPLY_CHUNKS,
    SAID,
)
from .openapi import response_schema, validate


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
