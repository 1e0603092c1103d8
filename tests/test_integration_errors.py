"""
Integration tests, the whole gateway in memory: errors in OpenAI's
shape, and the body size limit.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import succeed
from twisted.web.iweb import IBodyProducer, UNKNOWN_LENGTH
from zope.interface import implementer

from .integration import CHAT, CHAT_SCHEMA, GatewayTestCase
from .openapi import validate


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
