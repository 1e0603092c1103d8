"""
The HTTP API over a fake worker, in memory: what the worker is asked,
what the client gets back, and the errors in between.
"""

import base64
import json
import struct
from array import array

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.api._app import GatewayApp
from hfendpoint.backend._client import WorkerInfo
from hfendpoint.errors import worker_failed
from hfendpoint.api._imagestore import MemoryImageStore
from hfendpoint.testing import FakeWorkerClient

from .openapi import validate

MESSAGES = [{"role": "user", "content": "hi"}]


def tokens_chat(*pieces, finish="stop", usage=None):
    def handler(data):
        chunks = [{"content": p, "finish_reason": None} for p in pieces]
        final = {"content": "", "finish_reason": finish}
        if usage:
            final["usage"] = usage
        return [*chunks, final]

    return handler


def tokenize(data):
    return [{"tokens": [[len(w) for w in text.split()] for text in data["input"]]}]


class AppHarness:
    def __init__(self, handlers, info=None, model_name=None):
        self.worker = FakeWorkerClient(handlers, info)
        self.store = MemoryImageStore(10_000)
        self.app = GatewayApp(self.worker, self.store, model_name=model_name, clock=lambda: 1700000000.5)
        self.treq = StubTreq(self.app.resource())

    def post(self, path, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.treq.post("http://gw" + path, data=data, headers={"content-type": "application/json"})


class Case(SynchronousTestCase):
    def respond(self, harness, path, body):
        response = self.successResultOf(harness.post(path, body))
        content = self.successResultOf(response.content())
        return response, content

    def json_of(self, harness, path, body, status=200):
        response, content = self.respond(harness, path, body)
        self.assertEqual(response.code, status, content)
        return json.loads(content)

    def error_of(self, harness, path, body, status=400):
        payload = self.json_of(harness, path, body, status)
        validate("ErrorResponse", payload)
        return payload["error"]

    def events_of(self, harness, path, body):
        response, content = self.respond(harness, path, body)
        self.assertEqual(response.code, 200, content)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        events = []
        for block in content.decode().split("\n\n"):
            if not block:
                continue
            data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
            events.append(data[0] if data[0] == "[DONE]" else json.loads(data[0]))
        return events


class ChatTests(Case):
    def test_plain(self):
        h = AppHarness({"chat_completions": tokens_chat("Hel", "lo")})
        body = self.json_of(h, "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
        validate("CreateChatCompletionResponse", body)
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello")
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        self.assertEqual(body["created"], 1700000000)
        self.assertEqual(body["model"], "hfendpoint")

    def test_parameters_reach_the_worker(self):
        h = AppHarness({"chat_completions": tokens_chat("x")})
        request = {
            "model": "m",
            "messages": MESSAGES,
            "temperature": 0.5,
            "top_p": 0.9,
            "max_completion_tokens": 7,
            "stop": ["\n"],
            "seed": 3,
            "presence_penalty": 1,
            "frequency_penalty": -1,
            "logit_bias": {"50256": -100},
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
            "user": "u",
            "some_future_field": {"kept": True},
        }
        self.json_of(h, "/v1/chat/completions", request)
        [(name, data)] = h.worker.requests
        self.assertEqual(name, "chat_completions")
        for key, value in request.items():
            self.assertEqual(data[key], value, key)
        self.assertEqual(data["max_tokens"], 7)
        self.assertIs(data["stream"], False)

    def test_model_name(self):
        h = AppHarness({"chat_completions": tokens_chat("x")}, model_name="served")
        body = self.json_of(h, "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
        self.assertEqual(body["model"], "served")
        h = AppHarness({"chat_completions": tokens_chat("x")}, info=WorkerInfo(model="worker-model"))
        body = self.json_of(h, "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
        self.assertEqual(body["model"], "worker-model")

    def test_usage_from_worker(self):
        usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
        h = AppHarness({"chat_completions": tokens_chat("a", "b", usage=usage)})
        body = self.json_of(h, "/v1/chat/completions", {"messages": MESSAGES})
        self.assertEqual(body["usage"], usage)

    def test_usage_counted_with_the_worker_tokenizer(self):
        h = AppHarness({"chat_completions": tokens_chat("a", "b", "c"), "tokenize": tokenize})
        body = self.json_of(
            h, "/v1/chat/completions", {"messages": [{"role": "user", "content": "one two three four"}]}
        )
        self.assertEqual(body["usage"], {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})

    def test_n_asks_once_per_choice(self):
        replies = iter(["first", "second", "third"])
        h = AppHarness({"chat_completions": lambda data: tokens_chat(next(replies))(data)})
        body = self.json_of(h, "/v1/chat/completions", {"messages": MESSAGES, "n": 3})
        validate("CreateChatCompletionResponse", body)
        self.assertEqual([c["index"] for c in body["choices"]], [0, 1, 2])
        self.assertEqual([c["message"]["content"] for c in body["choices"]], ["first", "second", "third"])
        self.assertEqual([d["n"] for _, d in h.worker.requests], [1, 1, 1])
        self.assertEqual(body["usage"]["completion_tokens"], 3)

    def test_worker_producing_choices_itself(self):
        def handler(data):
            return [
                {"index": 1, "content": "b", "finish_reason": None},
                {"index": 0, "content": "a", "finish_reason": "stop"},
                {"index": 1, "content": "", "finish_reason": "length"},
            ]

        info = WorkerInfo(calls=frozenset({"chat_completions"}), features=frozenset({"chat_n"}))
        h = AppHarness({"chat_completions": handler}, info=info)
        body = self.json_of(h, "/v1/chat/completions", {"messages": MESSAGES, "n": 2})
        validate("CreateChatCompletionResponse", body)
        self.assertEqual(len(h.worker.requests), 1)
        self.assertEqual(h.worker.requests[0][1]["n"], 2)
        self.assertEqual(
            [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]], [("a", "stop"), ("b", "length")]
        )

    def test_tool_calls_and_logprobs(self):
        call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}
        logprobs = {"content": [{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}]}

        def handler(data):
            return [{"content": None, "tool_calls": [call], "logprobs": logprobs, "finish_reason": "tool_calls"}]

        h = AppHarness({"chat_completions": handler})
        body = self.json_of(h, "/v1/chat/completions", {"messages": MESSAGES, "logprobs": True})
        validate("CreateChatCompletionResponse", body)
        choice = body["choices"][0]
        self.assertEqual(choice["message"]["tool_calls"], [call])
        self.assertIsNone(choice["message"]["content"])
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(choice["logprobs"]["content"], logprobs["content"])

    def test_stream(self):
        h = AppHarness({"chat_completions": tokens_chat("Hel", "lo", finish="length")})
        events = self.events_of(
            h,
            "/v1/chat/completions",
            {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        )
        self.assertEqual(events[-1], "[DONE]")
        chunks = events[:-1]
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        self.assertEqual(text, "Hello")
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "length")
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 2)
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        self.assertIs(h.worker.requests[0][1]["stream"], True)

    def test_plain_tokens_among_other_chunks_keep_their_order(self):
        """
        Plain tokens take a shorter path than other chunks; mixed, they
        all arrive, each once, in the worker's order, streamed or not.
        """
        logprobs = {"content": [{"token": "c", "logprob": -0.5, "bytes": [99], "top_logprobs": []}]}
        chunks = [
            {"content": "a", "finish_reason": None},
            {"content": "", "finish_reason": None},
            {"content": "b", "finish_reason": None},
            {"content": "c", "finish_reason": None, "logprobs": logprobs},
            {"content": "d", "finish_reason": None},
            {"content": "e", "index": 0},
            {"content": "f", "finish_reason": None},
            {"finish_reason": None, "role": "assistant"},
            {"content": "g", "finish_reason": None},
            {"content": "", "finish_reason": "stop"},
        ]
        h = AppHarness({"chat_completions": lambda data: [dict(c) for c in chunks]})
        events = self.events_of(h, "/v1/chat/completions", {"messages": MESSAGES, "stream": True})
        self.assertEqual(events[-1], "[DONE]")
        deltas = [e["choices"][0] for e in events[:-1]]
        self.assertEqual(
            [d["delta"].get("content") for d in deltas], ["a", "b", "c", "d", "e", "f", "g", None]
        )
        self.assertEqual(deltas[0]["delta"]["role"], "assistant")
        self.assertEqual(deltas[2]["logprobs"]["content"], logprobs["content"])
        self.assertEqual([d["finish_reason"] for d in deltas], [None] * 7 + ["stop"])
        result = self.json_of(h, "/v1/chat/completions", {"messages": MESSAGES})
        self.assertEqual(result["choices"][0]["message"]["content"], "abcdefg")
        self.assertEqual(result["choices"][0]["logprobs"]["content"], logprobs["content"])
        self.assertEqual(result["usage"]["completion_tokens"], 7)

    def test_stream_text_survives_encoding(self):
        pieces = ["Hé", ' "quoted"', "\nnew\tline", " \\ back", " \u2028", " \x00", " 🎉", " </script>"]
        for stream_options in (None, {"include_usage": True}):
            h = AppHarness({"chat_completions": tokens_chat(*pieces)})
            request = {"messages": MESSAGES, "stream": True, "n": 2}
            if stream_options:
                request["stream_options"] = stream_options
            events = self.events_of(h, "/v1/chat/completions", request)
            chunks = events[:-1]
            for chunk in chunks:
                validate("CreateChatCompletionStreamResponse", chunk)
                self.assertEqual(set(chunk), {"id", "object", "created", "model", "choices"} | ({"usage"} if stream_options else set()))
            for index in (0, 1):
                text = "".join(
                    c["choices"][0]["delta"].get("content", "")
                    for c in chunks
                    if c["choices"] and c["choices"][0]["index"] == index
                )
                self.assertEqual(text, "".join(pieces))

    def test_stream_error_before_any_chunk_is_a_json_error(self):
        def handler(data):
            raise worker_failed("CUDA out of memory")

        h = AppHarness({"chat_completions": handler})
        error = self.error_of(h, "/v1/chat/completions", {"messages": MESSAGES, "stream": True}, 500)
        self.assertEqual(error["message"], "CUDA out of memory")
        self.assertEqual(error["type"], "api_error")

    def test_stream_error_mid_stream_is_an_error_event(self):
        def handler(data):
            return None  # answered by hand below

        h = AppHarness({"chat_completions": handler})
        d = h.post("/v1/chat/completions", {"messages": MESSAGES, "stream": True})
        [call] = h.worker.pending.values()
        call.reply({"content": "partial", "finish_reason": None})
        call.error("worker crashed")
        h.treq.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content()).decode()
        blocks = [b for b in content.split("\n\n") if b]
        self.assertIn("partial", blocks[0])
        error = json.loads(blocks[-1][6:])
        validate("ErrorResponse", error)
        self.assertEqual(error["error"]["message"], "worker crashed")
        self.assertNotIn("[DONE]", content)


class ChatValidationTests(Case):
    def setUp(self):
        self.h = AppHarness({"chat_completions": tokens_chat("x")})

    def check(self, body, param, status=400):
        error = self.error_of(self.h, "/v1/chat/completions", body, status)
        self.assertEqual(error["param"], param, error)
        self.assertEqual(self.h.worker.requests, [])
        return error

    def test_bad_json(self):
        error = self.error_of(self.h, "/v1/chat/completions", b"{nope")
        self.assertIn("could not parse the JSON body", error["message"])

    def test_not_an_object(self):
        self.error_of(self.h, "/v1/chat/completions", b"[1, 2]")

    def test_missing_messages(self):
        error = self.check({"model": "m"}, "messages")
        self.assertEqual(error["message"], "Missing required parameter: 'messages'.")

    def test_bad_fields(self):
        cases = [
            ({"messages": "hi"}, "messages"),
            ({"messages": []}, "messages"),
            ({"messages": [{"content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user"}]}, "messages[0].content"),
            ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
            ({"messages": MESSAGES, "temperature": 2.5}, "temperature"),
            ({"messages": MESSAGES, "top_p": -0.1}, "top_p"),
            ({"messages": MESSAGES, "n": 0}, "n"),
            ({"messages": MESSAGES, "n": 1.5}, "n"),
            ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
            ({"messages": MESSAGES, "presence_penalty": 3}, "presence_penalty"),
            ({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"messages": MESSAGES, "stop": 5}, "stop"),
            ({"messages": MESSAGES, "stream": "yes"}, "stream"),
            ({"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
            ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ({"messages": MESSAGES, "logit_bias": {"abc": 1}}, "logit_bias"),
            ({"messages": MESSAGES, "response_format": {"type": "xml"}}, "response_format.type"),
            ({"messages": MESSAGES, "tool_choice": "sometimes"}, "tool_choice"),
            ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
            ({"messages": MESSAGES, "model": 5}, "model"),
        ]
        for body, param in cases:
            self.check(body, param)

    def test_unserved_call(self):
        h = AppHarness({"tokenize": tokenize})
        error = self.error_of(h, "/v1/chat/completions", {"messages": MESSAGES}, 501)
        self.assertIn("chat_completions", error["message"])
        self.assertEqual(h.worker.requests, [])


class ResponsesTests(Case):
    def test_plain(self):
        h = AppHarness({"chat_completions": tokens_chat("Hi", "!")})
        body = self.json_of(
            h, "/v1/responses", {"model": "m", "input": "hello", "instructions": "be brief", "max_output_tokens": 50}
        )
        validate("Response", body)
        self.assertEqual(body["status"], "completed")
        self.assertEqual(body["output_text"], "Hi!")
        self.assertEqual(body["output"][0]["content"][0]["text"], "Hi!")
        [(name, data)] = h.worker.requests
        self.assertEqual(
            data["messages"], [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
        )
        self.assertEqual(data["max_tokens"], 50)

    def test_message_list_input(self):
        h = AppHarness({"chat_completions": tokens_chat("ok")})
        self.json_of(
            h,
            "/v1/responses",
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                    {"type": "message", "role": "assistant", "content": "c"},
                ]
            },
        )
        self.assertEqual(
            h.worker.requests[0][1]["messages"],
            [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}],
        )

    def test_length_is_incomplete(self):
        h = AppHarness({"chat_completions": tokens_chat("a", finish="length")})
        body = self.json_of(h, "/v1/responses", {"input": "x"})
        validate("Response", body)
        self.assertEqual(body["status"], "incomplete")
        self.assertEqual(body["incomplete_details"], {"reason": "max_output_tokens"})

    def test_stream(self):
        h = AppHarness({"chat_completions": tokens_chat("Hel", "lo")})
        events = self.events_of(h, "/v1/responses", {"input": "x", "stream": True})
        self.assertEqual(events[-1], "[DONE]")
        events = events[:-1]
        for event in events:
            validate("ResponseStreamEvent", event)
        self.assertEqual(
            [e["type"] for e in events],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
        )
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"], "Hello")

    def test_stream_failure(self):
        h = AppHarness({"chat_completions": lambda data: None})
        d = h.post("/v1/responses", {"input": "x", "stream": True})
        [call] = h.worker.pending.values()
        call.reply({"content": "a", "finish_reason": None})
        call.error("boom")
        h.treq.flush()
        content = self.successResultOf(self.successResultOf(d).content()).decode()
        events = [json.loads(b.split("data: ")[1]) for b in content.split("\n\n") if b]
        for event in events:
            validate("ResponseStreamEvent", event)
        self.assertEqual([e["type"] for e in events[-2:]], ["response.failed", "error"])
        self.assertEqual(events[-1]["message"], "boom")

    def test_bad_input(self):
        h = AppHarness({"chat_completions": tokens_chat("a")})
        for body, param in [
            ({}, "input"),
            ({"input": 5}, "input"),
            ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
            ({"input": "x", "max_output_tokens": 2}, "max_output_tokens"),
            ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ]:
            error = self.error_of(h, "/v1/responses", body)
            self.assertEqual(error["param"], param)


class EmbeddingsTests(Case):
    def embed(self, data):
        return [{"embeddings": [[3.0, 4.0, 0.0] for _ in data["input"]]}]

    def test_token_ids_at_the_bounds(self):
        h = AppHarness({"embeddings": self.embed})
        body = self.json_of(h, "/v1/embeddings", {"input": [[0, 2**32 - 1], [7]]})
        self.assertEqual(len(body["data"]), 2)
        self.assertEqual(h.worker.requests[0][1]["input"], [[0, 2**32 - 1], [7]])

    def test_strings_are_tokenized_first(self):
        h = AppHarness({"tokenize": tokenize, "embeddings": self.embed})
        body = self.json_of(h, "/v1/embeddings", {"model": "m", "input": ["ab cde", "f"], "encoding_format": "float"})
        validate("CreateEmbeddingResponse", body)
        self.assertEqual([name for name, _ in h.worker.requests], ["tokenize", "embeddings"])
        self.assertEqual(h.worker.requests[1][1], {"input": [[2, 3], [1]]})
        self.assertEqual(body["usage"], {"prompt_tokens": 3, "total_tokens": 3})
        self.assertEqual(body["data"][1]["embedding"], [3.0, 4.0, 0.0])

    def test_tokens_skip_tokenize(self):
        h = AppHarness({"embeddings": self.embed})
        for value, rows in (([1, 2, 3], [[1, 2, 3]]), ([[1], [2, 3]], [[1], [2, 3]])):
            self.json_of(h, "/v1/embeddings", {"input": value})
            self.assertEqual(h.worker.requests[-1], ("embeddings", {"input": rows}))

    def test_base64_is_little_endian_float32(self):
        h = AppHarness({"embeddings": self.embed})
        body = self.json_of(h, "/v1/embeddings", {"input": [1], "encoding_format": "base64"})
        raw = base64.b64decode(body["data"][0]["embedding"])
        self.assertEqual(struct.unpack("<3f", raw), (3.0, 4.0, 0.0))

    def test_worker_may_send_float32_bytes(self):
        vector = array("f", [0.6, 0.8]).tobytes()
        h = AppHarness({"embeddings": lambda data: [{"embeddings": [vector]}]})
        body = self.json_of(h, "/v1/embeddings", {"input": [1]})
        self.assertAlmostEqual(body["data"][0]["embedding"][0], 0.6, places=6)
        body = self.json_of(h, "/v1/embeddings", {"input": [1], "encoding_format": "base64"})
        self.assertEqual(base64.b64decode(body["data"][0]["embedding"]), vector)

    def test_float32_bytes_and_lists_in_order(self):
        """
        Vectors all sent as float32 bytes, or some as bytes and some as
        lists, come back as base64 each at its index, with the usage.
        """
        vectors = [array("f", [i, -i, 0.5]).tobytes() for i in range(5)]
        for sent in (vectors, [vectors[0], [1.0, -1.0, 0.5], *vectors[2:]]):
            h = AppHarness({"embeddings": lambda data, sent=sent: [{"embeddings": sent}]})
            body = self.json_of(h, "/v1/embeddings", {"input": [[1, 2]] * 5, "encoding_format": "base64"})
            self.assertEqual((body["object"], body["model"]), ("list", "hfendpoint"))
            self.assertEqual({d["object"] for d in body["data"]}, {"embedding"})
            self.assertEqual([d["index"] for d in body["data"]], list(range(5)))
            self.assertEqual([base64.b64decode(d["embedding"]) for d in body["data"]], vectors)
            self.assertEqual(body["usage"], {"prompt_tokens": 10, "total_tokens": 10})

    def test_dimensions_truncate_and_renormalise(self):
        h = AppHarness({"embeddings": self.embed})
        body = self.json_of(h, "/v1/embeddings", {"input": [1], "dimensions": 1})
        self.assertEqual(body["data"][0]["embedding"], [1.0])

    def test_floats_read_back_as_the_same_float32(self):
        values = [0.1, 1e-7, -3.4028234663852886e38, 0.0, 123456.789, 2.5e-40, -1.0]
        h = AppHarness({"embeddings": lambda data: [{"embeddings": [values]}]})
        body = self.json_of(h, "/v1/embeddings", {"input": [1]})
        self.assertEqual(array("f", body["data"][0]["embedding"]).tobytes(), array("f", values).tobytes())

    def test_floats_written_as_openai_writes_them(self):
        """
        A float32 is written as the shortest text of its exact value, as
        OpenAI's responses have it: 0.1 as float32 is 0.10000000149011612.
        """
        h = AppHarness({"embeddings": lambda data: [{"embeddings": [[0.1, -0.5, 0.0]]}]})
        response, raw = self.respond(h, "/v1/embeddings", {"input": [1]})
        self.assertEqual(response.code, 200, raw)
        self.assertIn(b'"embedding":[0.10000000149011612,-0.5,0.0]', raw)

    def test_non_finite_vector(self):
        h = AppHarness({"embeddings": lambda data: [{"embeddings": [[1.0, float("nan")]]}]})
        error = self.error_of(h, "/v1/embeddings", {"input": [1]}, 500)
        self.assertIn("not finite", error["message"])

    def test_float32_overflow_is_not_finite(self):
        h = AppHarness({"embeddings": lambda data: [{"embeddings": [[1.0, 1e300]]}]})
        error = self.error_of(h, "/v1/embeddings", {"input": [1]}, 500)
        self.assertIn("not finite", error["message"])

    def test_vector_of_non_numbers(self):
        for vector in ([1.0, "x"], [None], [[1.0]]):
            h = AppHarness({"embeddings": lambda data, v=vector: [{"embeddings": [v]}]})
            error = self.error_of(h, "/v1/embeddings", {"input": [1]}, 500)
            self.assertIn("could not embed input 0", error["message"])

    def test_failed_item(self):
        h = AppHarness({"embeddings": lambda data: [{"embeddings": [[1.0], None]}]})
        error = self.error_of(h, "/v1/embeddings", {"input": [[1], [2]]}, 500)
        self.assertIn("input 1", error["message"])

    def test_bad_input(self):
        h = AppHarness({"tokenize": tokenize, "embeddings": self.embed})
        for body, param in [
            ({}, "input"),
            ({"input": ""}, "input[0]"),
            ({"input": []}, "input"),
            ({"input": ["a", ""]}, "input[1]"),
            ({"input": [[1], []]}, "input[1]"),
            ({"input": [1, "a"]}, "input"),
            ({"input": [[-1]]}, "input[0]"),
            ({"input": [[1], [2, True]]}, "input[1]"),
            ({"input": [[1], [2, 3.5]]}, "input[1]"),
            ({"input": [[1], [2, 2**32]]}, "input[1]"),
            ({"input": [[1], [2, "3"]]}, "input[1]"),
            ({"input": [[1], [2, None]]}, "input[1]"),
            ({"input": 5}, "input"),
            ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
            ({"input": "a", "dimensions": 0}, "dimensions"),
        ]:
            error = self.error_of(h, "/v1/embeddings", body)
            self.assertEqual(error["param"], param, body)
        self.assertEqual(h.worker.requests, [])


class JSONBodyTests(Case):
    def test_not_json(self):
        h = AppHarness({"chat_completions": tokens_chat("x")})
        for raw in (
            b'{"messages": [',
            b'{"messages": NaN}',
            b'{"model": "\\ud800"}',
            b'{"model": "m"} trailing',
            b'{"model": "\xff"}',
            b"[" * 2000 + b"]" * 2000,
        ):
            error = self.error_of(h, "/v1/chat/completions", raw)
            self.assertEqual(error["code"], "invalid_json", raw[:40])
        self.assertEqual(h.worker.requests, [])

    def test_byte_order_mark_ignored(self):
        h = AppHarness({"chat_completions": tokens_chat("x")})
        body = json.dumps({"messages": MESSAGES}).encode()
        result = self.json_of(h, "/v1/chat/completions", b"\xef\xbb\xbf" + body)
        self.assertEqual(result["choices"][0]["message"]["content"], "x")

    def test_number_beyond_64_bits(self):
        """
        A seed beyond 64 bits is refused, as the spec bounds it; an upper
        bound on tokens that large means no bound, and reaches the worker
        as the largest integer it can take.
        """
        h = AppHarness({"chat_completions": tokens_chat("x")})
        error = self.error_of(h, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "seed": 123456789012345678901234567890}')
        self.assertEqual(error["param"], "seed")
        self.assertEqual(h.worker.requests, [])
        self.json_of(h, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 123456789012345678901234567890}')
        self.assertEqual(h.worker.requests[-1][1]["max_tokens"], 2**63 - 1)


PNG = b"\x89PNG\r\n\x1a\n" + b"fake"


def multipart(fields, files):
    """
    A multipart/form-data body, built by hand as StubTreq cannot send files.
    """
    boundary = "hfendpointboundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content_type, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


class ImagesTests(Case):
    def generate(self, data):
        return [{"png": PNG + bytes([i])} for i in range(data["n"])]

    def test_b64(self):
        h = AppHarness({"images_generations": self.generate})
        body = self.json_of(h, "/v1/images/generations", {"prompt": "cat", "n": 2, "size": "256x128"})
        validate("ImagesResponse", body)
        self.assertEqual([base64.b64decode(d["b64_json"]) for d in body["data"]], [PNG + b"\0", PNG + b"\1"])
        self.assertEqual(h.worker.requests, [("images_generations", {"prompt": "cat", "n": 2, "width": 256, "height": 128})])

    def test_url_get_delete(self):
        h = AppHarness({"images_generations": self.generate})
        body = self.json_of(h, "/v1/images/generations", {"prompt": "cat", "response_format": "url"})
        url = body["data"][0]["url"]
        self.assertTrue(url.startswith("http://gw/v1/images/img-"), url)
        response = self.successResultOf(h.treq.get(url))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"image/png"])
        self.assertEqual(self.successResultOf(response.content()), PNG + b"\0")
        self.assertEqual(self.successResultOf(h.treq.delete(url)).code, 204)
        self.assertEqual(self.successResultOf(h.treq.get(url)).code, 404)
        self.assertEqual(self.successResultOf(h.treq.delete(url)).code, 404)

    def test_forwarded_url(self):
        h = AppHarness({"images_generations": self.generate})
        response = self.successResultOf(
            h.treq.post(
                "http://gw/v1/images/generations",
                data=json.dumps({"prompt": "cat", "response_format": "url"}).encode(),
                headers={"x-forwarded-proto": "https", "x-forwarded-host": "api.example.com"},
            )
        )
        body = json.loads(self.successResultOf(response.content()))
        self.assertTrue(body["data"][0]["url"].startswith("https://api.example.com/v1/images/img-"))

    def test_edit_multipart(self):
        h = AppHarness({"images_editions": self.generate})
        body, headers = multipart({"prompt": "hat", "n": "1", "size": "64x64"}, {"image[]": ("a.png", "image/png", PNG)})
        response = self.successResultOf(h.treq.post("http://gw/v1/images/edits", data=body, headers=headers))
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(response.code, 200, body)
        validate("ImagesResponse", body)
        [(name, data)] = h.worker.requests
        self.assertEqual((name, data["prompt"], data["width"], data["image"]), ("images_editions", "hat", 64, PNG))

    def test_edit_errors(self):
        h = AppHarness({"images_editions": self.generate})
        body, headers = multipart({"prompt": "hat"}, {"image": ("a.jpg", "image/jpeg", b"JFIF")})
        response = self.successResultOf(h.treq.post("http://gw/v1/images/edits", data=body, headers=headers))
        error = json.loads(self.successResultOf(response.content()))["error"]
        self.assertEqual((response.code, error["param"]), (400, "image"))
        error = self.error_of(h, "/v1/images/edits", {"prompt": "x"})
        self.assertIn("multipart", error["message"])

    def test_bad_fields(self):
        h = AppHarness({"images_generations": self.generate})
        for body, param in [
            ({}, "prompt"),
            ({"prompt": ""}, "prompt"),
            ({"prompt": "a", "size": "big"}, "size"),
            ({"prompt": "a", "size": "0x10"}, "size"),
            ({"prompt": "a", "size": "99999x1"}, "size"),
            ({"prompt": "a", "n": 11}, "n"),
            ({"prompt": "a", "n": 0}, "n"),
            ({"prompt": "a", "response_format": "jpeg"}, "response_format"),
        ]:
            error = self.error_of(h, "/v1/images/generations", body)
            self.assertEqual(error["param"], param, body)


class RoutingTests(Case):
    def test_health(self):
        h = AppHarness({})
        for path in ("/", "/health"):
            response = self.successResultOf(h.treq.get("http://gw" + path))
            self.assertEqual(response.code, 200)
            self.assertEqual(self.successResultOf(response.content()), b"")

    def test_ready(self):
        h = AppHarness({})
        ready = [False]
        h.app.is_ready = lambda: ready[0]
        self.assertEqual(self.successResultOf(h.treq.get("http://gw/ready")).code, 503)
        ready[0] = True
        self.assertEqual(self.successResultOf(h.treq.get("http://gw/ready")).code, 200)

    def test_models(self):
        h = AppHarness({}, model_name="my-model")
        response = self.successResultOf(h.treq.get("http://gw/v1/models"))
        body = json.loads(self.successResultOf(response.content()))
        validate("ListModelsResponse", body)
        self.assertEqual([m["id"] for m in body["data"]], ["my-model"])
        response = self.successResultOf(h.treq.get("http://gw/v1/models/my-model"))
        validate("Model", json.loads(self.successResultOf(response.content())))
        response = self.successResultOf(h.treq.get("http://gw/v1/models/other"))
        self.assertEqual(response.code, 404)

    def test_unknown_route_and_method(self):
        h = AppHarness({})
        response = self.successResultOf(h.treq.get("http://gw/v1/nothing"))
        body = json.loads(self.successResultOf(response.content()))
        validate("ErrorResponse", body)
        self.assertEqual(response.code, 404)
        response = self.successResultOf(h.treq.get("http://gw/v1/chat/completions"))
        body = json.loads(self.successResultOf(response.content()))
        validate("ErrorResponse", body)
        self.assertEqual(response.code, 405)
        self.assertIn(b"POST", response.headers.getRawHeaders(b"allow")[0])
