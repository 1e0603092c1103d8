"""
C{POST /tokenize} and C{POST /detokenize}, in vLLM's and llama.cpp
server's shapes, on the worker's C{tokenize} and optional C{detokenize}
calls: through the whole gateway in memory, and once with the demo
worker as a real process.
"""

from __future__ import annotations

from typing import Any

from hfendpoint.testing import demo_handlers

from .gateway import demo_tokens, start_memory_gateway
from .integration import DEMO_MODEL, GatewayTestCase, RealGatewayTestCase
from .test_openapi_doc import our_validate_response

TEXT = "Hello, world"


class _Tokens:
    async def tokenize(self, body: dict, status: int = 200) -> tuple[Any, Any]:
        response, result = await self.post_json("/tokenize", body)  # type: ignore[attr-defined]
        if status == 200:
            self.assertEqual(response.code, 200, result)  # type: ignore[attr-defined]
            our_validate_response("/tokenize", "post", 200, result)
        return response, result

    async def detokenize(self, body: dict) -> Any:
        response, result = await self.post_json("/detokenize", body)  # type: ignore[attr-defined]
        self.assertEqual(response.code, 200, result)  # type: ignore[attr-defined]
        our_validate_response("/detokenize", "post", 200, result)
        return result


class ShapeTests(_Tokens, GatewayTestCase):
    async def test_vllm_prompt(self) -> None:
        _, result = await self.tokenize({"model": DEMO_MODEL, "prompt": TEXT})
        tokens = demo_tokens(TEXT)
        self.assertEqual(result, {"count": len(tokens), "max_model_len": None, "tokens": tokens})

    async def test_vllm_messages(self) -> None:
        messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": TEXT}]
        _, result = await self.tokenize({"model": DEMO_MODEL, "messages": messages})
        self.assertEqual(result["tokens"], demo_tokens("Be brief\n" + TEXT))
        self.assertEqual(result["count"], len(result["tokens"]))

    async def test_llama_cpp_content(self) -> None:
        _, result = await self.tokenize({"content": TEXT})
        self.assertEqual(result, {"tokens": demo_tokens(TEXT)})

    async def test_empty_text(self) -> None:
        _, result = await self.tokenize({"content": ""})
        self.assertEqual(result, {"tokens": []})

    async def test_detokenize_both_shapes(self) -> None:
        """
        The demo turns back the tokens of texts it has tokenized; with a
        model named (vLLM) the answer is C{prompt}, without (llama.cpp)
        C{content}. Integral floats are token ids.
        """
        _, result = await self.tokenize({"content": TEXT})
        tokens = result["tokens"]
        self.assertEqual(await self.detokenize({"model": DEMO_MODEL, "tokens": tokens}), {"prompt": TEXT})
        self.assertEqual(await self.detokenize({"tokens": tokens}), {"content": TEXT})
        self.assertEqual(await self.detokenize({"tokens": [float(t) for t in tokens]}), {"content": TEXT})
        self.assertEqual(await self.detokenize({"tokens": []}), {"content": ""})

    async def test_bad_requests(self) -> None:
        for path, body, param in (
            ("/tokenize", {"model": DEMO_MODEL}, "prompt"),
            ("/tokenize", {"prompt": "a", "content": "b"}, "content"),
            ("/tokenize", {"prompt": 5}, "prompt"),
            ("/tokenize", {"messages": []}, "messages"),
            ("/tokenize", {"messages": [{"role": "nobody", "content": "x"}]}, "messages[0].role"),
            ("/detokenize", {"model": DEMO_MODEL}, "tokens"),
            ("/detokenize", {"tokens": "1 2"}, "tokens"),
            ("/detokenize", {"tokens": [1, -2]}, "tokens[1]"),
            ("/detokenize", {"tokens": [1, 2**32]}, "tokens[1]"),
            ("/detokenize", {"tokens": [1, 2.5]}, "tokens[1]"),
            ("/detokenize", {"tokens": [True]}, "tokens[0]"),
        ):
            response, result = await self.post_json(path, body)
            self.assertError(response, result, 400, param)


class OldCallsTests(_Tokens, GatewayTestCase):
    """
    A worker whose handshake lists neither call: both endpoints are a 501
    without a call sent.
    """

    handlers = {name: h for name, h in demo_handlers().items() if name not in ("tokenize", "detokenize")}

    async def test_unsupported(self) -> None:
        for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
            response, result = await self.post_json(path, body)
            error = self.assertError(response, result, 501, type="invalid_request_error")
            self.assertEqual(error["code"], "unsupported_endpoint")
        names = {m.get("name") for m in self.memory.worker.received}
        self.assertFalse(names & {"tokenize", "detokenize"}, names)


class NoHandshakeTests(_Tokens, GatewayTestCase):
    """
    A worker that never answered the handshake is tried with every call
    but C{detokenize}, which it would leave unanswered.
    """

    worker_options = {"handshake": "ignore"}
    gateway_options = {"startup_grace": 0.2}

    def setUp(self) -> None:
        self.memory = start_memory_gateway(
            self, None, worker=dict(self.worker_options), wait_ready=False, **self.gateway_options
        )
        self.url, self.gateway, self.http = self.memory.url, self.memory.service, self.memory.http
        self.memory.advance(0.2)
        self.successResultOf(self.gateway.whenReady())

    async def test_detokenize_not_tried(self) -> None:
        _, result = await self.tokenize({"content": TEXT})
        response, result = await self.post_json("/detokenize", {"tokens": result["tokens"]})
        self.assertEqual(self.assertError(response, result, 501)["code"], "unsupported_endpoint")
        self.assertNotIn("detokenize", {m.get("name") for m in self.memory.worker.received})


class RealWorkerTests(_Tokens, RealGatewayTestCase):
    async def test_round_trip(self) -> None:
        _, result = await self.tokenize({"model": DEMO_MODEL, "prompt": TEXT})
        self.assertEqual(result["tokens"], demo_tokens(TEXT))
        self.assertEqual(await self.detokenize({"model": DEMO_MODEL, "tokens": result["tokens"]}), {"prompt": TEXT})
