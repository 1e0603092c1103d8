"""
Generated bad input against every POST endpoint: never a 500, never an
exception, every refusal an OpenAI error object.
"""

import json

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.api._app import GatewayApp
from hfendpoint.api._imagestore import MemoryImageStore
from hfendpoint.testing import FakeWorkerClient

from .fuzzing import fuzz_settings
from .openapi import validate

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def chat(data):
    return [{"content": "ok", "finish_reason": None}, {"content": "", "finish_reason": "stop"}]


WORKER = {
    "chat_completions": chat,
    "tokenize": lambda data: [{"tokens": [[1, 2] for _ in data["input"]]}],
    "embeddings": lambda data: [{"embeddings": [[0.6, 0.8] for _ in data["input"]]}],
    "images_generations": lambda data: [{"png": PNG} for _ in range(data["n"])],
    "images_editions": lambda data: [{"png": PNG} for _ in range(data["n"])],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)

ENDPOINTS = {
    "/v1/chat/completions": [
        "model", "messages", "stream", "temperature", "top_p", "n", "max_tokens", "max_completion_tokens",
        "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
        "response_format", "tools", "tool_choice", "user", "stream_options",
    ],
    "/v1/completions": ["model", "prompt", "stream", "max_tokens", "n", "echo", "stop", "logprobs", "best_of", "suffix"],
    "/v1/responses": ["model", "input", "instructions", "stream", "temperature", "top_p", "max_output_tokens", "metadata"],
    "/v1/embeddings": ["model", "input", "encoding_format", "dimensions", "user"],
    "/v1/images/generations": ["prompt", "n", "size", "response_format", "model", "user"],
}

messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "bogus"]), "content": json_values}),
    max_size=3,
)


def bodies(keys):
    known = st.dictionaries(st.sampled_from(keys), json_values, max_size=6)
    plausible = st.fixed_dictionaries(
        {"model": st.just("m")},
        optional={
            "messages": messages,
            "input": json_values | st.text(max_size=5),
            "prompt": json_values | st.text(max_size=5),
            **{k: json_values for k in keys if k not in ("model", "messages", "input", "prompt")},
        },
    )
    return st.one_of(known, plausible, json_values)


class FuzzTests(SynchronousTestCase):
    def check(self, path, body):
        treq = StubTreq(GatewayApp(FakeWorkerClient(WORKER), MemoryImageStore(10**6)).resource())
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = self.successResultOf(treq.post("http://gw" + path, data=raw))
        content = self.successResultOf(response.content())
        self.assertNotEqual(response.code, 500, content)
        self.assertLess(response.code, 500, content)
        if response.code >= 400:
            validate("ErrorResponse", json.loads(content))
        elif not content.startswith((b"data: ", b"event: ")):
            self.assertIsInstance(json.loads(content), dict)
        self.assertEqual(self.flushLoggedErrors(), [])


def _fuzz(path):
    @fuzz_settings(150)
    @given(body=bodies(ENDPOINTS[path]))
    def test(self, body):
        self.check(path, body)

    return test


for _path in ENDPOINTS:
    setattr(FuzzTests, "test_" + _path.strip("/").replace("/", "_"), _fuzz(_path))


class RawBytesTests(SynchronousTestCase):
    check = FuzzTests.check

    @fuzz_settings(150)
    @given(raw=st.binary(max_size=64))
    def test_raw_bytes(self, raw):
        for path in ENDPOINTS:
            self.check(path, raw)
