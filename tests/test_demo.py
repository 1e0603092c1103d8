"""
Tests for the demo worker, L{hfendpoint.workers.demo}, talked to over its socket
as the gateway talks to it (C{python -m hfendpoint.workers.demo}).
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from .gateway_end import WorkerProcess

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def start_demo(
    testcase: SynchronousTestCase, env: Optional[dict[str, str]] = None
) -> WorkerProcess:
    return WorkerProcess(testcase, ["-m", "hfendpoint.workers.demo"], env)


def expected_ids(*pieces: str) -> list[int]:
    """
    The demo's documented token ids, computed independently.
    """
    return [zlib.crc32(piece.encode("utf-8")) % 50000 + 1000 for piece in pieces]


def read_png(testcase: SynchronousTestCase, data: bytes) -> tuple[int, int, bytes]:
    """
    Check that C{data} is a well-formed 8-bit RGB PNG, chunk by chunk.

    @return: its width, height and decompressed scanlines.
    """
    testcase.assertEqual(data[:8], PNG_SIGNATURE)
    chunks = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        testcase.assertEqual(len(body), length)
        (crc,) = struct.unpack_from(">I", data, offset + 8 + length)
        testcase.assertEqual(crc, zlib.crc32(kind + body), kind)
        chunks.append((kind, body))
        offset += 12 + length
    testcase.assertEqual(offset, len(data))
    kinds = [kind for kind, _ in chunks]
    testcase.assertEqual(kinds[0], b"IHDR")
    testcase.assertEqual(kinds[-1], b"IEND")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    testcase.assertEqual((depth, colour, compression, filtering, interlace), (8, 2, 0, 0, 0))
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    row = 1 + 3 * width
    testcase.assertEqual(len(pixels), height * row)
    testcase.assertTrue(all(pixels[y * row] <= 4 for y in range(height)))
    return width, height, pixels


class TokenizeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.demo = start_demo(self)

    def test_tokens(self) -> None:
        [reply] = self.demo.data("tokenize", {"input": ["Hello, world!", "", "déjà vu"]})
        self.assertEqual(
            reply,
            {
                "tokens": [
                    expected_ids("Hello", ",", "world", "!"),
                    [],
                    expected_ids("déjà", "vu"),
                ]
            },
        )

    def test_bad_input(self) -> None:
        [reply] = self.demo.call("tokenize", {"input": "not a list"})
        self.assertIn("input", reply["error"])


def colliding_words() -> tuple[str, str]:
    """
    Two words the demo's hash gives the same id.
    """
    seen: dict[int, str] = {}
    for number in range(100000):
        word = f"w{number}"
        [ident] = expected_ids(word)
        if ident in seen:
            return seen[ident], word
        seen[ident] = word
    raise AssertionError("no collision")


class DetokenizeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.demo = start_demo(self)

    def test_inverse(self) -> None:
        """
        Token ids from C{tokenize} come back as their text, up to spacing,
        which C{tokenize} does not keep: tokenized again, the texts give the
        same ids.
        """
        texts = ["Hello, world!", "", "déjà   vu", "a (b) c_d 42"]
        [tokenized] = self.demo.data("tokenize", {"input": texts})
        [reply] = self.demo.data("detokenize", tokenized)
        self.assertEqual(reply, {"texts": ["Hello, world!", "", "déjà vu", "a( b) c_d 42"]})
        [again] = self.demo.data("tokenize", {"input": reply["texts"]})
        self.assertEqual(again, tokenized)

    def test_chat_prompts_known(self) -> None:
        """
        The pieces of a chat prompt, which the demo counts, can be turned
        back too.
        """
        messages = [{"role": "user", "content": "Quokkas smile."}]
        self.demo.data("chat_completions", {"messages": messages}, 9)
        [reply] = self.demo.data(
            "detokenize", {"tokens": [expected_ids("Quokkas", "smile", ".")]}
        )
        self.assertEqual(reply, {"texts": ["Quokkas smile."]})

    def test_collision(self) -> None:
        """
        Of two words with one id, the first seen keeps it.
        """
        first, second = colliding_words()
        self.demo.data("tokenize", {"input": [first, second]})
        [reply] = self.demo.data("detokenize", {"tokens": [expected_ids(second)]})
        self.assertEqual(reply, {"texts": [first]})

    def test_unknown_tokens(self) -> None:
        """
        An id the demo never cut from a text, in its vocabulary or not, is
        refused by name rather than made up.
        """
        [never_seen] = expected_ids("unseen")
        for token in (never_seen, 42):
            [reply] = self.demo.call("detokenize", {"tokens": [[token]]})
            self.assertEqual(
                reply["error"],
                f"token {token} is unknown: the demo worker can only turn back "
                "the tokens of texts it has tokenized",
            )

    def test_bad_input(self) -> None:
        [reply] = self.demo.call("detokenize", {"tokens": "1 2 3"})
        self.assertEqual(reply["error"], "tokens must be a list of token id lists")
        [reply] = self.demo.call("detokenize", {"tokens": [[], [1, "2"]]})
        self.assertEqual(reply["error"], "tokens 1 must be a list of token ids")
        [reply] = self.demo.call("detokenize", {"tokens": [[True]]})
        self.assertEqual(reply["error"], "tokens 0 must be a list of token ids")


class EmbeddingsTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        """
        Unit vectors of the default dimension, the same in every process,
        different for different tokens.
        """
        tokens = [[1000, 2000, 3000], [42], [1000, 2000, 3000]]
        first = start_demo(self).data("embeddings", {"input": tokens})[0]["embeddings"]
        again = start_demo(self).data("embeddings", {"input": tokens})[0]["embeddings"]
        self.assertEqual(first, again)
        self.assertEqual(len(first), 3)
        for vector in first:
            self.assertEqual(len(vector), 384)
            self.assertTrue(all(isinstance(value, float) for value in vector))
            self.assertAlmostEqual(math.sqrt(sum(v * v for v in vector)), 1.0, places=9)
        self.assertEqual(first[0], first[2])
        self.assertNotEqual(first[0], first[1])

    def test_dimension(self) -> None:
        demo = start_demo(self, {"HFENDPOINT_DEMO_DIM": "16"})
        [reply] = demo.data("embeddings", {"input": [[7, 8]]})
        self.assertEqual(len(reply["embeddings"][0]), 16)

    def test_empty_item(self) -> None:
        [reply] = start_demo(self).call("embeddings", {"input": [[1], []]})
        self.assertEqual(reply["error"], "input 1 is empty")


class ChatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.demo = start_demo(self)

    def chat(self, request: dict[str, Any], tokens: int) -> list[dict[str, Any]]:
        """
        @return: the C{tokens} token chunks and the final chunk.
        """
        return self.demo.data("chat_completions", request, tokens + 1)

    def test_stream(self) -> None:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How are  you?"},
        ]
        request = {"messages": messages, "stream": True}
        replies = self.chat(request, 9)
        *tokens, final = replies
        self.assertEqual(
            [chunk["content"] for chunk in tokens],
            ["Hello", "!", " You", " said", ":", " How", " are", " you", "?"],
        )
        self.assertEqual([chunk["finish_reason"] for chunk in tokens], [None] * 9)
        self.assertEqual(final["content"], "")
        self.assertEqual(final["finish_reason"], "stop")
        [counts] = self.demo.data(
            "tokenize", {"input": [m["content"] for m in messages]}
        )
        prompt = sum(len(ids) for ids in counts["tokens"])
        self.assertEqual(
            final["usage"],
            {"prompt_tokens": prompt, "completion_tokens": 9, "total_tokens": prompt + 9},
        )
        self.assertEqual(self.chat(request, 9), replies)

    def test_content_parts(self) -> None:
        content = [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:"}},
            {"type": "text", "text": "here"},
        ]
        replies = self.chat({"messages": [{"role": "user", "content": content}]}, 7)
        self.assertEqual(
            "".join(chunk["content"] for chunk in replies),
            "Hello! You said: Look here",
        )

    def test_max_tokens(self) -> None:
        messages = [{"role": "user", "content": "a b c d e f"}]
        *tokens, final = self.chat({"messages": messages, "max_tokens": 3}, 3)
        self.assertEqual("".join(chunk["content"] for chunk in tokens), "Hello! You")
        self.assertEqual(final["finish_reason"], "length")
        self.assertEqual(final["usage"]["completion_tokens"], 3)
        *tokens, final = self.chat(
            {"messages": messages, "max_tokens": 3, "max_completion_tokens": 1}, 1
        )
        self.assertEqual(final["finish_reason"], "length")

    def test_bad_messages(self) -> None:
        [reply] = self.demo.call("chat_completions", {"messages": "hi"})
        self.assertEqual(reply["error"], "messages must be a list")


class ImageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.demo = start_demo(self)

    def generate(self, **request: Any) -> list[bytes]:
        replies = self.demo.data("images_generations", request, request["n"])
        return [reply["png"] for reply in replies]

    def test_generations(self) -> None:
        images = self.generate(prompt="a cat", n=2, width=64, height=32)
        pixels = []
        for image in images:
            width, height, scanlines = read_png(self, image)
            self.assertEqual((width, height), (64, 32))
            pixels.append(scanlines)
        self.assertNotEqual(pixels[0], pixels[1])
        self.assertEqual(self.generate(prompt="a cat", n=2, width=64, height=32), images)
        self.assertNotEqual(self.generate(prompt="a dog", n=1, width=64, height=32)[0], images[0])

    def test_large(self) -> None:
        [image] = self.generate(prompt="big", n=1, width=1024, height=1024)
        self.assertEqual(read_png(self, image)[:2], (1024, 1024))

    def test_bad_size(self) -> None:
        [reply] = self.demo.call(
            "images_generations", {"prompt": "x", "n": 1, "width": 0, "height": 8}
        )
        self.assertIn("width", reply["error"])

    def test_editions(self) -> None:
        [source] = self.generate(prompt="source", n=1, width=8, height=8)
        request = {"prompt": "edit", "n": 2, "width": 16, "height": 24, "image": source}
        replies = self.demo.data("images_editions", request, 2)
        for reply in replies:
            self.assertEqual(read_png(self, reply["png"])[:2], (16, 24))
        self.assertNotEqual(replies[0], replies[1])
        with_mask = self.demo.data("images_editions", dict(request, mask=source), 2)
        self.assertNotEqual(with_mask, replies)

    def test_editions_need_png(self) -> None:
        bad_images: list[dict[str, Any]] = [{"image": b"GIF89a"}, {"image": "text"}, {}]
        for bad in bad_images:
            request = {"prompt": "edit", "n": 1, "width": 8, "height": 8, **bad}
            [reply] = self.demo.call("images_editions", request)
            self.assertEqual(reply["error"], "image must be a PNG")


class DescribeTests(SynchronousTestCase):
    def test_describe(self) -> None:
        demo = start_demo(self)
        [reply] = demo.data("hfendpoint.describe", {"protocol": 2})
        self.assertEqual(
            reply,
            {
                "protocol": 2,
                "calls": [
                    "chat_completions",
                    "detokenize",
                    "embeddings",
                    "images_editions",
                    "images_generations",
                    "tokenize",
                ],
                "model": "hfendpoint-demo",
                "cancel": True,
                "ping": True,
                "features": [],
            },
        )
        self.assertEqual(demo.finish(), 0, demo.log())

    def test_model_from_environment(self) -> None:
        demo = start_demo(self, {"HFENDPOINT_MODEL_NAME": "demo/renamed"})
        [reply] = demo.data("hfendpoint.describe", {"protocol": 2})
        self.assertEqual(reply["model"], "demo/renamed")
