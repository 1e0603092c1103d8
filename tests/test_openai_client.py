"""
The official C{openai} Python client against a real gateway and a real
worker process: what users actually run must work, and errors must come
out as the client's own exceptions.

The client blocks, so each call runs in a thread (L{in_thread}) while the
reactor serves the gateway.
"""

from __future__ import annotations

import base64
import math
import urllib.request
from typing import Any, Optional

import openai
from twisted.trial.unittest import TestCase

from .gateway import (
    as_float32,
    demo_embedding,
    demo_tokens,
    in_thread,
    openai_client,
    png_size,
    start_gateway,
    tiny_png,
    write_worker,
)
from .integration import DEMO_DIMENSION, DEMO_MODEL, REPLY, REPLY_CHUNKS, SAID
from .test_integration_workers import LEGACY_WORKER

MESSAGES = [{"role": "user", "content": SAID}]

HALF_STREAM_WORKER = """
import asyncio
import hfendpoint


@hfendpoint.handler("chat_completions")
async def chat_completions(data):
    yield {"content": "partial", "finish_reason": None}
    raise RuntimeError("lost the thread")


asyncio.run(hfendpoint.run())
"""

FAILING_CHAT_WORKER = """
import asyncio
import hfendpoint


@hfendpoint.handler("chat_completions")
async def chat_completions(data):
    raise RuntimeError("the model is on fire")


asyncio.run(hfendpoint.run())
"""


class ClientTestCase(TestCase):
    timeout = 30
    worker_command: Optional[list[str]] = None

    async def setUp(self) -> None:
        self.url, self.gateway = await start_gateway(self, self.worker_command)
        self.client = openai_client(self, self.url)

    def run_client(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return in_thread(function, *args, **kwargs)


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


class ChatClientTests(ClientTestCase):
    async def test_create(self) -> None:
        completion = await self.run_client(
            self.client.chat.completions.create, model="anything", messages=MESSAGES
        )
        self.assertEqual(completion.object, "chat.completion")
        self.assertEqual(completion.model, DEMO_MODEL)
        [choice] = completion.choices
        self.assertEqual(choice.message.role, "assistant")
        self.assertEqual(choice.message.content, REPLY)
        self.assertEqual(choice.finish_reason, "stop")
        self.assertEqual(completion.usage.prompt_tokens, len(demo_tokens(SAID)))
        self.assertEqual(completion.usage.completion_tokens, len(REPLY_CHUNKS))

    async def test_n(self) -> None:
        completion = await self.run_client(
            self.client.chat.completions.create, model="m", messages=MESSAGES, n=2
        )
        self.assertEqual([c.index for c in completion.choices], [0, 1])
        self.assertEqual([c.message.content for c in completion.choices], [REPLY, REPLY])

    def collect(self, **kwargs: Any) -> list[Any]:
        stream = self.client.chat.completions.create(
            model="anything", messages=MESSAGES, stream=True, **kwargs
        )
        with stream:
            return list(stream)

    async def test_stream(self) -> None:
        chunks = await self.run_client(self.collect)
        self.assertTrue(chunks)
        for chunk in chunks:
            self.assertEqual(chunk.object, "chat.completion.chunk")
            self.assertEqual(len(chunk.choices), 1)
            self.assertIsNone(chunk.usage)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks), REPLY)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")

    async def test_stream_include_usage(self) -> None:
        chunks = await self.run_client(self.collect, stream_options={"include_usage": True})
        *content, last = chunks
        self.assertEqual(last.choices, [])
        self.assertEqual(last.usage.prompt_tokens, len(demo_tokens(SAID)))
        self.assertEqual(last.usage.completion_tokens, len(REPLY_CHUNKS))
        self.assertEqual(last.usage.total_tokens, len(demo_tokens(SAID)) + len(REPLY_CHUNKS))
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in content), REPLY)
        for chunk in content:
            self.assertIsNone(chunk.usage)

    async def test_bad_temperature(self) -> None:
        error = await self.assertFailure(
            self.run_client(
                self.client.chat.completions.create,
                model="m",
                messages=MESSAGES,
                temperature="hot",
            ),
            openai.BadRequestError,
        )
        self.assertEqual(error.status_code, 400)
        self.assertEqual(error.param, "temperature")
        self.assertEqual(error.type, "invalid_request_error")

    async def test_missing_messages(self) -> None:
        error = await self.assertFailure(
            self.run_client(
                self.client.chat.completions.create, model="m", messages=[]
            ),
            openai.BadRequestError,
        )
        self.assertEqual(error.param, "messages")


class ResponsesClientTests(ClientTestCase):
    async def test_create(self) -> None:
        response = await self.run_client(self.client.responses.create, model="m", input=SAID)
        self.assertEqual(response.status, "completed")
        self.assertEqual(response.output_text, REPLY)
        self.assertEqual(response.model, DEMO_MODEL)
        self.assertEqual(response.usage.input_tokens, len(demo_tokens(SAID)))
        self.assertEqual(response.usage.output_tokens, len(REPLY_CHUNKS))

    async def test_create_messages(self) -> None:
        """
        C{input} as a list of messages, with instructions.
        """
        response = await self.run_client(
            self.client.responses.create,
            model="m",
            instructions="Be kind.",
            input=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "Hello! You said: first"},
                {"role": "user", "content": [{"type": "input_text", "text": SAID}]},
            ],
        )
        self.assertEqual(response.output_text, REPLY)
        self.assertEqual(response.instructions, "Be kind.")

    def collect(self) -> list[Any]:
        stream = self.client.responses.create(model="m", input=SAID, stream=True)
        with stream:
            return list(stream)

    async def test_stream(self) -> None:
        events = await self.run_client(self.collect)
        types = [e.type for e in events]
        self.assertEqual(types[0], "response.created")
        self.assertEqual(types[-1], "response.completed")
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        self.assertEqual(deltas, REPLY_CHUNKS)
        completed = events[-1]
        self.assertEqual(completed.response.status, "completed")
        self.assertEqual(completed.response.output_text, REPLY)
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))

    async def test_stream_helper(self) -> None:
        """
        The client's C{responses.stream} helper, which accumulates the
        events into a final response itself.
        """

        def run() -> tuple[list[str], Any]:
            with self.client.responses.stream(model="m", input=SAID) as stream:
                texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
                return texts, stream.get_final_response()

        texts, final = await self.run_client(run)
        self.assertEqual("".join(texts), REPLY)
        self.assertEqual(final.output_text, REPLY)


class EmbeddingsClientTests(ClientTestCase):
    TEXTS = ["The quick brown fox.", "jumps over the lazy dog"]

    def expected(self, text: str) -> list[float]:
        return demo_embedding(demo_tokens(text), DEMO_DIMENSION)

    def assertVector(self, actual: list[float], expected: list[float]) -> None:
        self.assertEqual(len(actual), len(expected))
        for a, e in zip(actual, expected):
            self.assertAlmostEqual(a, e, places=6)

    async def test_default_encoding(self) -> None:
        """
        The client asks for base64 by default and decodes it itself: the
        vectors come out as lists of floats all the same.
        """
        result = await self.run_client(self.client.embeddings.create, model="m", input=self.TEXTS)
        self.assertEqual(result.model, DEMO_MODEL)
        self.assertEqual([d.index for d in result.data], [0, 1])
        for text, item in zip(self.TEXTS, result.data):
            self.assertIsInstance(item.embedding, list)
            self.assertVector(item.embedding, self.expected(text))
        count = sum(len(demo_tokens(t)) for t in self.TEXTS)
        self.assertEqual(result.usage.prompt_tokens, count)
        self.assertEqual(result.usage.total_tokens, count)

    async def test_float(self) -> None:
        as_float = await self.run_client(
            self.client.embeddings.create, model="m", input=self.TEXTS, encoding_format="float"
        )
        default = await self.run_client(self.client.embeddings.create, model="m", input=self.TEXTS)
        for f, d, text in zip(as_float.data, default.data, self.TEXTS):
            self.assertVector(f.embedding, self.expected(text))
            self.assertEqual(as_float32(f.embedding), d.embedding)

    async def test_base64_explicit(self) -> None:
        """
        With C{encoding_format="base64"} asked explicitly, the client hands
        back the string, which decodes to the float vector.
        """
        result = await self.run_client(
            self.client.embeddings.create, model="m", input="abc", encoding_format="base64"
        )
        raw = base64.b64decode(result.data[0].embedding)
        self.assertEqual(len(raw), 4 * DEMO_DIMENSION)

    async def test_dimensions(self) -> None:
        result = await self.run_client(
            self.client.embeddings.create, model="m", input=self.TEXTS, dimensions=12
        )
        for text, item in zip(self.TEXTS, result.data):
            self.assertEqual(len(item.embedding), 12)
            self.assertAlmostEqual(norm(item.embedding), 1.0, places=5)
            head = self.expected(text)[:12]
            self.assertVector(item.embedding, [x / norm(head) for x in head])

    async def test_tokens(self) -> None:
        result = await self.run_client(
            self.client.embeddings.create, model="m", input=[[1000, 2000], [3000]]
        )
        self.assertVector(result.data[0].embedding, demo_embedding([1000, 2000], DEMO_DIMENSION))
        self.assertVector(result.data[1].embedding, demo_embedding([3000], DEMO_DIMENSION))
        self.assertEqual(result.usage.prompt_tokens, 3)

    async def test_empty_item(self) -> None:
        error = await self.assertFailure(
            self.run_client(self.client.embeddings.create, model="m", input=["a", ""]),
            openai.BadRequestError,
        )
        self.assertEqual(error.param, "input[1]")


class ImagesClientTests(ClientTestCase):
    async def test_generate_b64_json(self) -> None:
        result = await self.run_client(
            self.client.images.generate,
            prompt="a red square",
            size="256x256",
            response_format="b64_json",
            n=2,
        )
        self.assertEqual(len(result.data), 2)
        for image in result.data:
            self.assertIsNone(image.url)
            self.assertEqual(png_size(base64.b64decode(image.b64_json)), (256, 256))

    async def test_generate_url(self) -> None:
        result = await self.run_client(
            self.client.images.generate, prompt="a red square", size="256x256", response_format="url"
        )
        [image] = result.data
        self.assertIsNone(image.b64_json)
        self.assertTrue(image.url.startswith(self.url + "/v1/images/"), image.url)

        def fetch(url: str) -> tuple[int, str, bytes]:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, response.headers["content-type"], response.read()

        status, ctype, png = await self.run_client(fetch, image.url)
        self.assertEqual((status, ctype), (200, "image/png"))
        self.assertEqual(png_size(png), (256, 256))

    async def test_edit(self) -> None:
        result = await self.run_client(
            self.client.images.edit,
            image=("a.png", tiny_png(), "image/png"),
            prompt="make it blue",
            size="256x256",
            response_format="b64_json",
        )
        [image] = result.data
        self.assertEqual(png_size(base64.b64decode(image.b64_json)), (256, 256))

    async def test_edit_image_list(self) -> None:
        """
        A list of images is sent as C{image[]}; the first is edited.
        """
        result = await self.run_client(
            self.client.images.edit,
            image=[("a.png", tiny_png(), "image/png")],
            prompt="make it blue",
            size="256x256",
            response_format="b64_json",
        )
        self.assertEqual(png_size(base64.b64decode(result.data[0].b64_json)), (256, 256))

    async def test_edit_mask_url(self) -> None:
        result = await self.run_client(
            self.client.images.edit,
            image=("a.png", tiny_png(), "image/png"),
            mask=("m.png", tiny_png(), "image/png"),
            prompt="make it blue",
            size="512x512",
            response_format="url",
            n=2,
        )
        self.assertEqual(len(result.data), 2)
        for image in result.data:
            self.assertTrue(image.url.startswith(self.url + "/v1/images/"), image.url)

    async def test_bad_size(self) -> None:
        error = await self.assertFailure(
            self.run_client(self.client.images.generate, prompt="p", size="huge"),
            openai.BadRequestError,
        )
        self.assertEqual(error.param, "size")


class ModelsClientTests(ClientTestCase):
    async def test_list(self) -> None:
        page = await self.run_client(self.client.models.list)
        self.assertEqual([m.id for m in page.data], [DEMO_MODEL])
        self.assertEqual(page.data[0].object, "model")

    async def test_retrieve(self) -> None:
        model = await self.run_client(self.client.models.retrieve, DEMO_MODEL)
        self.assertEqual(model.id, DEMO_MODEL)

    async def test_retrieve_unknown(self) -> None:
        error = await self.assertFailure(
            self.run_client(self.client.models.retrieve, "no-such-model"),
            openai.NotFoundError,
        )
        self.assertEqual(error.status_code, 404)


class FailingWorkerClientTests(ClientTestCase):
    def setUp(self) -> Any:
        self.worker_command = write_worker(self, FAILING_CHAT_WORKER)
        return super().setUp()

    async def test_chat(self) -> None:
        error = await self.assertFailure(
            self.run_client(self.client.chat.completions.create, model="m", messages=MESSAGES),
            openai.InternalServerError,
        )
        self.assertEqual(error.status_code, 500)
        self.assertIn("the model is on fire", error.message)


class HalfStreamWorkerClientTests(ClientTestCase):
    def setUp(self) -> Any:
        self.worker_command = write_worker(self, HALF_STREAM_WORKER)
        return super().setUp()

    async def test_chat_stream(self) -> None:
        """
        The client yields the chunk sent before the failure, then raises
        L{openai.APIError} on the error event.
        """

        def run() -> tuple[list[Any], Any]:
            received = []
            try:
                with self.client.chat.completions.create(
                    model="m", messages=MESSAGES, stream=True
                ) as stream:
                    for chunk in stream:
                        received.append(chunk)
            except openai.APIError as e:
                return received, e
            return received, None

        received, error = await self.run_client(run)
        self.assertEqual([c.choices[0].delta.content for c in received], ["partial"])
        self.assertIsInstance(error, openai.APIError)
        self.assertIn("lost the thread", error.message)


    async def test_responses_stream(self) -> None:
        """
        A failed Responses stream: the delta sent before the failure, then
        C{response.failed}, then the error, which the client raises.
        """

        def run() -> tuple[list[Any], Any]:
            received = []
            try:
                with self.client.responses.create(model="m", input=SAID, stream=True) as stream:
                    for event in stream:
                        received.append(event)
            except openai.APIError as e:
                return received, e
            return received, None

        received, error = await self.run_client(run)
        types = [e.type for e in received]
        self.assertIn("response.failed", types)
        self.assertEqual(
            [e.delta for e in received if e.type == "response.output_text.delta"], ["partial"]
        )
        failed = [e for e in received if e.type == "response.failed"][0]
        self.assertEqual(failed.response.status, "failed")
        self.assertIsInstance(error, openai.APIError)
        self.assertIn("lost the thread", error.message)

class LegacyWorkerClientTests(ClientTestCase):
    def setUp(self) -> Any:
        self.worker_command = write_worker(self, LEGACY_WORKER)
        return super().setUp()

    async def test_chat(self) -> None:
        completion = await self.run_client(
            self.client.chat.completions.create, model="m", messages=MESSAGES
        )
        self.assertEqual(completion.choices[0].message.content, "legacy says hi there")

    async def test_chat_stream(self) -> None:
        def run() -> list[Any]:
            with self.client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True
            ) as stream:
                return list(stream)

        chunks = await self.run_client(run)
        self.assertEqual(
            "".join(c.choices[0].delta.content or "" for c in chunks), "legacy says hi there"
        )
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
