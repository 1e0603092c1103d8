"""
Support for the integration tests: the gateway in memory for each test
(or a real one), the demo worker's expected answers, and the OpenAI
schemas bodies are checked against.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from twisted.trial.unittest import TestCase

from .gateway import http_client, parse_sse, start_gateway, start_memory_gateway
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
