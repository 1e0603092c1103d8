"""
Integration tests, the whole gateway in memory: a client that leaves
cancels the worker's call, and what the worker receives for each
endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from .gateway import PNG_SIGNATURE, tiny_png
from .integration import CHAT, GatewayTestCase


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
