"""
Client input that used to end in a 500 (a traceback in the log, an error
naming nothing) is a 400 naming the field; numbers the OpenAI spec allows
reach the worker as the integers they stand for. Through the whole
gateway in memory, workers speaking the real protocol.
"""

from __future__ import annotations

import json
from typing import Any

from hfendpoint.testing import demo_handlers

from .integration import CHAT, GatewayTestCase

INT64_MAX = 2**63 - 1
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def nested_object(depth: int) -> str:
    return '{"a":' * depth + '"x"' + "}" * depth


def nested_array(depth: int) -> str:
    return "[" * depth + '"user"' + "]" * depth


class Recorder:
    """
    The demo worker's calls, each one's data kept as the worker decoded it.
    """

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}
        self.handlers = {name: self._wrap(name, handler) for name, handler in demo_handlers().items()}

    def _wrap(self, name: str, handler: Any) -> Any:
        def recorded(data: Any) -> Any:
            self.seen.setdefault(name, []).append(data)
            return handler(data)

        return recorded


class _Case(GatewayTestCase):
    async def refused(self, path: str, raw: bytes, param: str) -> dict:
        """
        POST C{raw}: a 400 naming C{param}, and nothing logged as an
        unexpected error.
        """
        response, content = await self.post_raw(path, raw)
        error = self.assertError(response, content, 400, param)
        self.assertEqual(self.flushLoggedErrors(), [])
        return error

    async def accepted(self, path: str, raw: bytes) -> Any:
        response, content = await self.post_raw(path, raw)
        self.assertEqual(response.code, 200, content)
        return content


def edit_form(n: str) -> tuple[bytes, bytes]:
    boundary = "input-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="n"\r\n\r\n{n}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + PNG + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}".encode()


class FormIntegerTests(_Case):
    async def test_edit_n_not_ascii_digits(self) -> None:
        """
        C{²} is a digit to C{str.isdigit} but not to C{int}; C{--5} passed
        a strip of minus signs; 5,000 digits are past Python's limit on
        converting text to an integer. Each is a 400 naming C{n}.
        """
        for n in ("²", "--5", "9" * 5000, "-" + "9" * 5000, "1.5"):
            body, ctype = edit_form(n)
            response, content = await self.post_raw("/v1/images/edits", body, ctype)
            self.assertError(response, content, 400, "n")
            self.assertEqual(self.flushLoggedErrors(), [], n[:10])

    async def test_edit_n_in_digits(self) -> None:
        body, ctype = edit_form(" 2 ")
        response, content = await self.post_raw("/v1/images/edits", body, ctype)
        self.assertEqual(response.code, 200, content)
        self.assertEqual(len(json.loads(content)["data"]), 2)
        body, ctype = edit_form("+11")
        response, content = await self.post_raw("/v1/images/edits", body, ctype)
        self.assertError(response, content, 400, "n")


class DeepNestingTests(_Case):
    async def test_metadata_nested_300_deep(self) -> None:
        """
        The Responses API echoes C{metadata}; 300 levels are more than
        the JSON encoder writes. The spec's metadata holds strings only.
        """
        for stream in ("false", "true"):
            raw = ('{"input": "hi", "stream": %s, "metadata": {"k": %s}}' % (stream, nested_object(300))).encode()
            await self.refused("/v1/responses", raw, "metadata.k")
            raw = ('{"messages": [{"role": "user", "content": "hi"}], "stream": %s, "metadata": %s}' % (stream, nested_object(300))).encode()
            await self.refused("/v1/chat/completions", raw, "metadata.a")

    async def test_metadata_bounds(self) -> None:
        """
        At most 16 pairs, keys of at most 64 characters, values of at
        most 512; within them, echoed as given.
        """
        base = {"input": "hi"}
        for metadata, param in (
            ({str(i): "v" for i in range(17)}, "metadata"),
            ({"k" * 65: "v"}, "metadata"),
            ({"k": "v" * 513}, "metadata.k"),
            ({"k": 1}, "metadata.k"),
        ):
            await self.refused("/v1/responses", json.dumps({**base, "metadata": metadata}).encode(), param)
        metadata = {**{str(i): "v" for i in range(15)}, "k" * 64: "v" * 512}
        content = await self.accepted("/v1/responses", json.dumps({**base, "metadata": metadata}).encode())
        self.assertEqual(json.loads(content)["metadata"], metadata)

    async def test_role_nested_1000_deep(self) -> None:
        """
        A role or an item type nested 1,000 deep exceeded Python's
        recursion limit while the error message was written.
        """
        for value in (nested_array(1000), nested_object(1000)):
            raw = ('{"messages": [{"role": %s, "content": "x"}]}' % value).encode()
            error = await self.refused("/v1/chat/completions", raw, "messages[0].role")
            self.assertLess(len(error["message"]), 300)
            raw = ('{"input": [{"role": %s, "content": "x"}]}' % value).encode()
            await self.refused("/v1/responses", raw, "input[0].role")
            raw = ('{"input": [{"type": %s, "role": "user", "content": "x"}]}' % value).encode()
            await self.refused("/v1/responses", raw, "input[0].type")

    async def test_long_values_quoted_short(self) -> None:
        """
        A megabyte role is quoted in a few dozen characters, not whole.
        """
        raw = json.dumps({"messages": [{"role": "r" * 1_000_000, "content": "x"}]}).encode()
        error = await self.refused("/v1/chat/completions", raw, "messages[0].role")
        self.assertLess(len(error["message"]), 300)


class IntegerForwardingTests(_Case):
    """
    What validation took as an integer reaches the worker as one.
    """

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.handlers = self.recorder.handlers
        super().setUp()

    def last(self, call: str) -> dict:
        return self.recorder.seen[call][-1]

    async def test_chat_max_tokens_as_floats(self) -> None:
        raw = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.0, "max_completion_tokens": 1e2, "n": 1.0, "seed": 7.0}'
        await self.accepted("/v1/chat/completions", raw)
        data = self.last("chat_completions")
        for name, value in (("max_tokens", 2), ("max_completion_tokens", 100), ("seed", 7)):
            self.assertEqual((type(data[name]), data[name]), (int, value), name)

    async def test_chat_max_completion_tokens_alone(self) -> None:
        raw = b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1e2}'
        await self.accepted("/v1/chat/completions", raw)
        data = self.last("chat_completions")
        self.assertEqual((type(data["max_tokens"]), data["max_tokens"]), (int, 100))

    async def test_completions_and_responses(self) -> None:
        await self.accepted("/v1/completions", b'{"prompt": "hi", "max_tokens": 3.0, "logprobs": 1.0}')
        data = self.last("chat_completions")
        self.assertEqual((type(data["max_tokens"]), data["logprobs"]), (int, 1))
        self.assertIs(type(data["logprobs"]), int)
        content = await self.accepted("/v1/responses", b'{"input": "hi", "max_output_tokens": 1e2}')
        data = self.last("chat_completions")
        self.assertEqual((type(data["max_tokens"]), data["max_tokens"]), (int, 100))
        self.assertNotIn("max_output_tokens", data)
        self.assertIn(b'"max_output_tokens":100,', content)

    async def test_token_limits_beyond_64_bits(self) -> None:
        """
        The spec leaves C{max_tokens} unbounded; a bound beyond what the
        worker takes means no bound, and is sent as the largest it takes.
        C{seed} is bounded by the spec to 64 bits, and refused beyond.
        """
        for written in (b"18446744073709551615", b"1e30"):
            raw = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + written + b"}"
            await self.accepted("/v1/chat/completions", raw)
            self.assertEqual(self.last("chat_completions")["max_tokens"], INT64_MAX)
        await self.accepted("/v1/responses", b'{"input": "hi", "max_output_tokens": 1e30}')
        self.assertEqual(self.last("chat_completions")["max_tokens"], INT64_MAX)
        raw = b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551615}'
        await self.refused("/v1/chat/completions", raw, "seed")
        raw = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}'
        await self.refused("/v1/chat/completions", raw, "max_tokens")

    async def test_embedding_token_ids_as_integral_floats(self) -> None:
        """
        The spec's token ids are JSON Schema integers, which C{2755930.0}
        is: embedded as the integer.
        """
        for raw, rows in (
            (b'{"input": [2755930.0, 7]}', [[2755930, 7]]),
            (b'{"input": [[1.0], [2, 3e0]]}', [[1], [2, 3]]),
        ):
            content = await self.accepted("/v1/embeddings", raw)
            self.assertEqual(len(json.loads(content)["data"]), len(rows))
            sent = self.last("embeddings")["input"]
            self.assertEqual(sent, rows)
            self.assertEqual({type(t) for row in sent for t in row}, {int})
        await self.refused("/v1/embeddings", b'{"input": [[1], [2, 3.5]]}', "input[1]")
        await self.refused("/v1/embeddings", b'{"input": [[1], [2, 1e19]]}', "input[1]")

    async def test_prompt_token_ids_as_integral_floats(self) -> None:
        error = await self.refused("/v1/completions", b'{"prompt": [2755930.0]}', "prompt")
        self.assertEqual(error["code"], "unsupported_value")

    async def test_logit_bias_keys(self) -> None:
        """
        Keys are token ids in ASCII digits, as the worker reads them;
        C{2755930.0}, C{²} or C{--5} are not, and are refused by name.
        """
        for key in ("2755930.0", "²", "--5", "1" * 30, "", " 5"):
            raw = json.dumps({**CHAT, "logit_bias": {key: 1}}).encode()
            error = await self.refused("/v1/chat/completions", raw, "logit_bias")
            self.assertLess(len(error["message"]), 200)
        await self.accepted("/v1/chat/completions", json.dumps({**CHAT, "logit_bias": {"-5": 1, "50256": -100}}).encode())
        self.assertEqual(self.last("chat_completions")["logit_bias"], {"-5": 1, "50256": -100})

