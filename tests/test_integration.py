"""
Integration tests: a real L{GatewayService} on loopback, a real worker
process behind it (the demo worker, or small scripts written for a test),
and HTTP requests with treq, every body checked against the official
OpenAI OpenAPI document (L{tests.openapi}).
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from typing import Any, Optional

from twisted.trial.unittest import TestCase

from hfendpoint.demo import embed, tokenize_text

from .gateway import (
    PNG_SIGNATURE,
    decode_float32,
    http_client,
    parse_sse,
    png_size,
    start_gateway,
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
    A gateway with the demo worker, started for each test (it starts in a
    fraction of a second; trial wants the reactor clean after each test,
    so it cannot outlive one).
    """

    timeout = 30
    worker_command: Optional[list[str]] = None
    gateway_options: dict[str, Any] = {}

    async def setUp(self) -> None:
        self.url, self.gateway = await start_gateway(
            self, self.worker_command, **self.gateway_options
        )
        self.http = http_client(self)

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
        return response, json.loads(content)

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
            body["usage"]["prompt_tokens"], len(tokenize_text(SAID))
        )
        self.assertEqual(body["usage"]["completion_tokens"], len(REPLY_CHUNKS))
        self.assertEqual(
            body["usage"]["total_tokens"], len(tokenize_text(SAID)) + len(REPLY_CHUNKS)
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
        self.assertEqual(usage["input_tokens"], len(tokenize_text(SAID)))
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


class EmbeddingsTests(GatewayTestCase):
    async def embeddings(self, **body: Any) -> dict:
        response, result = await self.post_json("/v1/embeddings", dict(body, model="anything"))
        self.assertEqual(response.code, 200, result)
        if body.get("encoding_format") == "base64":
            # Spec quirk (tests/openapi.py): Embedding.embedding is only
            # number[], yet base64 is a string; validate the decoded copy.
            decoded = dict(
                result,
                data=[dict(d, embedding=decode_float32(d["embedding"])) for d in result["data"]],
            )
            validate(EMBEDDING_SCHEMA, decoded)
        else:
            validate(EMBEDDING_SCHEMA, result)
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
        tokens = tokenize_text(text)
        self.assertVector(item["embedding"], embed(tokens, DEMO_DIMENSION))
        self.assertAlmostEqual(norm(item["embedding"]), 1.0, places=5)
        self.assertEqual(result["usage"], {"prompt_tokens": len(tokens), "total_tokens": len(tokens)})

    async def test_strings(self) -> None:
        texts = ["first text", "a second, longer text", "first text"]
        result = await self.embeddings(input=texts)
        vectors = [d["embedding"] for d in result["data"]]
        self.assertEqual(len(vectors), 3)
        for text, vector in zip(texts, vectors):
            self.assertVector(vector, embed(tokenize_text(text), DEMO_DIMENSION))
        self.assertEqual(vectors[0], vectors[2])
        self.assertNotEqual(vectors[0], vectors[1])
        count = sum(len(tokenize_text(t)) for t in texts)
        self.assertEqual(result["usage"]["prompt_tokens"], count)

    async def test_tokens(self) -> None:
        """
        A list of token ids is one input, embedded without tokenizing.
        """
        tokens = [1000, 2000, 3000, 4000]
        result = await self.embeddings(input=tokens)
        [item] = result["data"]
        self.assertVector(item["embedding"], embed(tokens, DEMO_DIMENSION))
        self.assertEqual(result["usage"]["prompt_tokens"], 4)

    async def test_token_lists(self) -> None:
        inputs = [[1000, 2000], [3000], [1000, 2000]]
        result = await self.embeddings(input=inputs)
        vectors = [d["embedding"] for d in result["data"]]
        self.assertEqual(len(vectors), 3)
        for tokens, vector in zip(inputs, vectors):
            self.assertVector(vector, embed(tokens, DEMO_DIMENSION))
        self.assertEqual(result["usage"]["prompt_tokens"], 5)

    async def test_text_and_tokens_agree(self) -> None:
        """
        A text and its token ids give the same vector.
        """
        text = "tokens, please"
        by_text = await self.embeddings(input=text)
        by_tokens = await self.embeddings(input=tokenize_text(text))
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
            self.assertEqual(decode_float32(e["embedding"]), f["embedding"])
        self.assertEqual(floats["usage"], encoded["usage"])

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


FAILING_WORKER = """
import asyncio
import hfendpoint


@hfendpoint.handler("chat_completions")
def chat_completions(data):
    raise RuntimeError("the model is on fire")


@hfendpoint.handler("images_generations")
async def images_generations(data):
    raise hfendpoint.WorkerError("no GPU left")


asyncio.run(hfendpoint.run())
"""

HALF_STREAM_WORKER = """
import asyncio
import hfendpoint


@hfendpoint.handler("chat_completions")
async def chat_completions(data):
    yield {"content": "partial", "finish_reason": None}
    raise RuntimeError("lost the thread")


asyncio.run(hfendpoint.run())
"""

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

    def setUp(self) -> Any:
        self.worker_command = write_worker(self, FAILING_WORKER)
        return super().setUp()

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

    def setUp(self) -> Any:
        self.worker_command = write_worker(self, HALF_STREAM_WORKER)
        return super().setUp()

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


class LegacyWorkerTests(GatewayTestCase):
    """
    A v0.2 worker (C{hfendpoint.run(dict)}, C{handler(data, send_chunk)})
    serves chat end to end.
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
