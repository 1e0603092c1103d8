"""
Legacy completions (C{POST /v1/completions}): in memory over a fake chat
worker, and with the official client against the demo worker.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from hfendpoint.errors import worker_failed

from .gateway import demo_tokens, in_thread, openai_client, start_gateway
from .openapi import validate
from .test_app import AppHarness, Case, tokenize, tokens_chat
from .test_integration import DEMO_MODEL, REPLY, REPLY_CHUNKS, SAID

PATH = "/v1/completions"


def completion_chunk(chunk: dict) -> dict:
    """
    A streamed completion as the official schema would have it: the spec
    gives C{/completions} no C{text/event-stream} response and says the
    streamed objects share the shape of the whole one, whose
    C{finish_reason} and C{usage} are not nullable; the API (like us)
    sends C{null} for both until the end, so that is checked here and then
    left out for validation.
    """
    chunk = dict(chunk, choices=[dict(c) for c in chunk["choices"]])
    if "usage" in chunk and chunk["usage"] is None:
        del chunk["usage"]
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    return chunk


class CompletionsTests(Case):
    def test_plain(self) -> None:
        h = AppHarness({"chat_completions": tokens_chat("Hel", "lo")})
        body = self.json_of(h, PATH, {"model": "m", "prompt": "Say hi"})
        validate("CreateCompletionResponse", body)
        self.assertTrue(body["id"].startswith("cmpl-"), body["id"])
        self.assertEqual((body["object"], body["created"], body["model"]), ("text_completion", 1700000000, "hfendpoint"))
        self.assertEqual(body["choices"], [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "stop"}])
        self.assertEqual(body["usage"], {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})

    def test_worker_request(self) -> None:
        h = AppHarness({"chat_completions": tokens_chat("x")})
        request = {
            "model": "m",
            "prompt": "Once upon",
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n"],
            "seed": 3,
            "presence_penalty": 1,
            "frequency_penalty": -1,
            "logit_bias": {"50256": -100},
            "user": "u",
            "suffix": "the end.",
            "logprobs": 2,
            "some_future_field": {"kept": True},
        }
        self.json_of(h, PATH, request)
        [(name, data)] = h.worker.requests
        self.assertEqual(name, "chat_completions")
        for key, value in request.items():
            self.assertEqual(data[key], value, key)
        self.assertEqual(data["messages"], [{"role": "user", "content": "Once upon"}])
        self.assertEqual(data["max_tokens"], 16)
        self.assertEqual(data["top_logprobs"], 2)
        self.assertIs(data["stream"], False)

    def test_max_tokens(self) -> None:
        h = AppHarness({"chat_completions": tokens_chat("x")})
        for value in (0, 1, 500):
            self.json_of(h, PATH, {"prompt": "a", "max_tokens": value})
            self.assertEqual(h.worker.requests[-1][1]["max_tokens"], value)

    def test_prompts_and_n(self) -> None:
        def handler(data: dict) -> list:
            return tokens_chat(data["prompt"].upper(), str(data["n"]))(data)

        h = AppHarness({"chat_completions": handler})
        body = self.json_of(h, PATH, {"prompt": ["a", "b", "c"], "n": 2, "best_of": 2})
        validate("CreateCompletionResponse", body)
        self.assertEqual(
            [(c["index"], c["text"]) for c in body["choices"]],
            [(0, "A1"), (1, "A1"), (2, "B1"), (3, "B1"), (4, "C1"), (5, "C1")],
        )
        self.assertEqual(sorted(d["prompt"] for _, d in h.worker.requests), ["a", "a", "b", "b", "c", "c"])
        # Prompt tokens are counted once per prompt, completion tokens per choice.
        self.assertEqual(body["usage"], {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15})

    def test_usage_from_the_worker_and_its_tokenizer(self) -> None:
        usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
        h = AppHarness({"chat_completions": tokens_chat("a", "b", usage=usage)})
        body = self.json_of(h, PATH, {"prompt": ["x", "y"]})
        self.assertEqual(body["usage"], {"prompt_tokens": 14, "completion_tokens": 4, "total_tokens": 18})
        h = AppHarness({"chat_completions": tokens_chat("a"), "tokenize": tokenize})
        body = self.json_of(h, PATH, {"prompt": "one two three"})
        self.assertEqual(body["usage"], {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})

    def test_echo(self) -> None:
        h = AppHarness({"chat_completions": tokens_chat(" world")})
        body = self.json_of(h, PATH, {"prompt": ["Hello", "Bye"], "echo": True})
        self.assertEqual([c["text"] for c in body["choices"]], ["Hello world", "Bye world"])
        events = self.events_of(h, PATH, {"prompt": "Hello", "echo": True, "stream": True})
        self.assertEqual(events[0]["choices"][0]["text"], "Hello world")

    def test_finish_reasons(self) -> None:
        for worker, ours in (("stop", "stop"), ("length", "length"), ("tool_calls", "stop"), ("weird", "stop")):
            h = AppHarness({"chat_completions": tokens_chat("a", finish=worker)})
            body = self.json_of(h, PATH, {"prompt": "x"})
            validate("CreateCompletionResponse", body)
            self.assertEqual(body["choices"][0]["finish_reason"], ours, worker)

    def logprobs_worker(self, data: dict) -> list:
        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": [{"token": token, "logprob": logprob}, {"token": "?", "logprob": -9.0}]}

        return [
            {"content": "Hi", "logprobs": {"content": [entry("Hi", -0.5)]}, "finish_reason": None},
            {"content": " you", "logprobs": {"content": [entry(" you", -1.5)]}, "finish_reason": "stop"},
        ]

    def test_logprobs(self) -> None:
        h = AppHarness({"chat_completions": self.logprobs_worker})
        body = self.json_of(h, PATH, {"prompt": "ab", "logprobs": 1, "echo": True})
        validate("CreateCompletionResponse", body)
        self.assertEqual(
            body["choices"][0]["logprobs"],
            {
                "tokens": ["Hi", " you"],
                "token_logprobs": [-0.5, -1.5],
                "top_logprobs": [{"Hi": -0.5, "?": -9.0}, {" you": -1.5, "?": -9.0}],
                "text_offset": [2, 4],
            },
        )
        body = self.json_of(h, PATH, {"prompt": "ab"})
        self.assertIsNone(body["choices"][0]["logprobs"])

    def test_stream_logprobs(self) -> None:
        h = AppHarness({"chat_completions": self.logprobs_worker})
        events = self.events_of(h, PATH, {"prompt": "ab", "logprobs": 0, "stream": True})
        chunks = events[:-1]
        for chunk in chunks:
            validate("CreateCompletionResponse", completion_chunk(chunk))
        self.assertEqual([c["choices"][0]["logprobs"]["text_offset"] for c in chunks], [[0], [2]])
        self.assertEqual([c["choices"][0]["logprobs"]["tokens"] for c in chunks], [["Hi"], [" you"]])

    def test_stream(self) -> None:
        h = AppHarness({"chat_completions": tokens_chat("Hel", "lo", finish="length")})
        events = self.events_of(
            h, PATH, {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
        )
        self.assertEqual(events[-1], "[DONE]")
        chunks = events[:-1]
        for chunk in chunks:
            self.assertEqual(chunk["object"], "text_completion")
            validate("CreateCompletionResponse", completion_chunk(chunk))
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        *content, last = chunks
        self.assertEqual("".join(c["choices"][0]["text"] for c in content), "Hello")
        self.assertEqual([c["choices"][0]["finish_reason"] for c in content], [None, None, "length"])
        self.assertEqual([c["usage"] for c in content], [None, None, None])
        self.assertEqual(last["choices"], [])
        self.assertEqual(last["usage"], {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        self.assertIs(h.worker.requests[0][1]["stream"], True)

    def test_stream_without_usage(self) -> None:
        h = AppHarness({"chat_completions": tokens_chat("a")})
        events = self.events_of(h, PATH, {"prompt": "x", "stream": True})
        self.assertEqual(events[-1], "[DONE]")
        for chunk in events[:-1]:
            self.assertNotIn("usage", chunk)
            self.assertEqual(len(chunk["choices"]), 1)

    def test_stream_prompts_and_n(self) -> None:
        h = AppHarness({"chat_completions": lambda data: tokens_chat(data["prompt"])(data)})
        events = self.events_of(h, PATH, {"prompt": ["a", "b"], "n": 2, "stream": True})
        texts: dict[int, str] = {}
        ends: dict[int, str] = {}
        for chunk in events[:-1]:
            [choice] = chunk["choices"]
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                ends[choice["index"]] = choice["finish_reason"]
        self.assertEqual(texts, {0: "a", 1: "a", 2: "b", 3: "b"})
        self.assertEqual(ends, {0: "stop", 1: "stop", 2: "stop", 3: "stop"})

    def test_error_before_any_chunk_is_a_json_error(self) -> None:
        def handler(data: dict) -> Any:
            raise worker_failed("CUDA out of memory")

        h = AppHarness({"chat_completions": handler})
        for stream in (False, True):
            error = self.error_of(h, PATH, {"prompt": "x", "stream": stream}, 500)
            self.assertEqual((error["message"], error["type"]), ("CUDA out of memory", "api_error"))

    def test_error_mid_stream_is_an_error_event(self) -> None:
        h = AppHarness({"chat_completions": lambda data: None})
        d = h.post(PATH, {"prompt": "x", "stream": True})
        [call] = h.worker.pending.values()
        call.reply({"content": "partial", "finish_reason": None})
        call.error("worker crashed")
        h.treq.flush()
        content = self.successResultOf(self.successResultOf(d).content()).decode()
        blocks = [b for b in content.split("\n\n") if b]
        self.assertEqual(json.loads(blocks[0][6:])["choices"][0]["text"], "partial")
        error = json.loads(blocks[-1][6:])
        validate("ErrorResponse", error)
        self.assertEqual(error["error"]["message"], "worker crashed")
        self.assertNotIn("[DONE]", content)

    def test_a_failed_prompt_cancels_the_others(self) -> None:
        h = AppHarness({"chat_completions": lambda data: None})
        d = h.post(PATH, {"prompt": ["a", "b", "c"]})
        first, second, third = h.worker.pending.values()
        first.reply({"content": "done", "finish_reason": "stop"})
        second.error("boom")
        h.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 500)
        self.assertEqual(h.worker.cancelled, [third.ident])
        self.assertEqual(h.worker.pending, {})

    def test_unserved_call(self) -> None:
        h = AppHarness({"tokenize": tokenize})
        error = self.error_of(h, PATH, {"prompt": "x"}, 501)
        self.assertIn("chat_completions", error["message"])
        self.assertEqual(h.worker.requests, [])


class CompletionsValidationTests(Case):
    def setUp(self) -> None:
        self.h = AppHarness({"chat_completions": tokens_chat("x")})

    def check(self, body: Any, param: Any, code: Any = None) -> dict:
        error = self.error_of(self.h, PATH, body)
        self.assertEqual(error["param"], param, (body, error))
        if code is not None:
            self.assertEqual(error["code"], code, (body, error))
        self.assertEqual(self.h.worker.requests, [])
        return error

    def test_bad_json(self) -> None:
        self.check(b"{nope", None, "invalid_json")

    def test_prompt(self) -> None:
        self.assertEqual(self.check({"model": "m"}, "prompt")["message"], "Missing required parameter: 'prompt'.")
        self.check({"prompt": None}, "prompt")
        self.check({"prompt": 5}, "prompt", "invalid_type")
        self.check({"prompt": {"text": "a"}}, "prompt", "invalid_type")
        self.check({"prompt": []}, "prompt", "invalid_value")
        self.check({"prompt": ["a", 1]}, "prompt", "invalid_type")

    def test_token_prompts_are_refused(self) -> None:
        for prompt in ([1, 2, 3], [[1, 2], [3]]):
            error = self.check({"prompt": prompt}, "prompt", "unsupported_value")
            self.assertIn("token", error["message"])

    def test_best_of(self) -> None:
        self.check({"prompt": "a", "best_of": 2}, "best_of", "unsupported_value")
        self.check({"prompt": "a", "n": 3, "best_of": 2}, "best_of")
        self.check({"prompt": "a", "best_of": 21}, "best_of")
        for body in ({"best_of": 1}, {"best_of": 3, "n": 3}, {"best_of": None}):
            self.json_of(self.h, PATH, {"prompt": "a", **body})

    def test_suffix_is_accepted(self) -> None:
        body = self.json_of(self.h, PATH, {"prompt": "a", "suffix": "z"})
        self.assertEqual(body["choices"][0]["text"], "x")

    def test_bad_fields(self) -> None:
        cases = [
            ({"logprobs": 6}, "logprobs"),
            ({"logprobs": -1}, "logprobs"),
            ({"logprobs": True}, "logprobs"),
            ({"max_tokens": -1}, "max_tokens"),
            ({"max_tokens": "many"}, "max_tokens"),
            ({"n": 0}, "n"),
            ({"n": 129}, "n"),
            ({"temperature": 2.5}, "temperature"),
            ({"top_p": 1.5}, "top_p"),
            ({"presence_penalty": -3}, "presence_penalty"),
            ({"frequency_penalty": 3}, "frequency_penalty"),
            ({"seed": "s"}, "seed"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"stop": 1}, "stop"),
            ({"stream": "yes"}, "stream"),
            ({"echo": "yes"}, "echo"),
            ({"suffix": 5}, "suffix"),
            ({"stream_options": {"include_usage": True}}, "stream_options"),
            ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
            ({"logit_bias": {"x": 1}}, "logit_bias"),
            ({"logit_bias": {"1": 101}}, "logit_bias"),
            ({"model": 5}, "model"),
            ({"user": 5}, "user"),
        ]
        for body, param in cases:
            self.check({"prompt": "a", **body}, param)


class CompletionsClientTests(TestCase):
    """
    The official client's C{completions} against the demo worker.
    """

    timeout = 30

    async def setUp(self) -> None:
        self.url, self.gateway = await start_gateway(self)
        self.client = openai_client(self, self.url)

    async def test_create(self) -> None:
        completion = await in_thread(self.client.completions.create, model="anything", prompt=SAID)
        self.assertEqual(completion.object, "text_completion")
        self.assertTrue(completion.id.startswith("cmpl-"))
        self.assertEqual(completion.model, DEMO_MODEL)
        [choice] = completion.choices
        self.assertEqual((choice.index, choice.text, choice.finish_reason), (0, REPLY, "stop"))
        self.assertIsNone(choice.logprobs)
        self.assertEqual(completion.usage.prompt_tokens, len(demo_tokens(SAID)))
        self.assertEqual(completion.usage.completion_tokens, len(REPLY_CHUNKS))

    async def test_max_tokens_echo_and_many_prompts(self) -> None:
        completion = await in_thread(
            self.client.completions.create,
            model="m",
            prompt=[SAID, "bye"],
            n=2,
            max_tokens=3,
            echo=True,
        )
        self.assertEqual([c.index for c in completion.choices], [0, 1, 2, 3])
        expected = SAID + "".join(REPLY_CHUNKS[:3])
        self.assertEqual([c.text for c in completion.choices[:2]], [expected, expected])
        self.assertEqual([c.text for c in completion.choices[2:]], ["bye" + "".join(REPLY_CHUNKS[:3])] * 2)
        self.assertEqual({c.finish_reason for c in completion.choices}, {"length"})
        self.assertEqual(completion.usage.completion_tokens, 12)

    def collect(self, **kwargs: Any) -> list:
        stream = self.client.completions.create(model="anything", prompt=SAID, stream=True, **kwargs)
        with stream:
            return list(stream)

    async def test_stream(self) -> None:
        chunks = await in_thread(self.collect)
        self.assertTrue(chunks)
        for chunk in chunks:
            self.assertEqual(chunk.object, "text_completion")
            self.assertIsNone(chunk.usage)
        self.assertEqual("".join(c.choices[0].text for c in chunks), REPLY)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        self.assertEqual({c.choices[0].finish_reason for c in chunks[:-1]}, {None})

    async def test_stream_include_usage(self) -> None:
        chunks = await in_thread(self.collect, stream_options={"include_usage": True}, max_tokens=2)
        *content, last = chunks
        self.assertEqual(last.choices, [])
        self.assertEqual(last.usage.prompt_tokens, len(demo_tokens(SAID)))
        self.assertEqual(last.usage.completion_tokens, 2)
        self.assertEqual("".join(c.choices[0].text for c in content), "".join(REPLY_CHUNKS[:2]))
        self.assertEqual(content[-1].choices[0].finish_reason, "length")

    async def test_bad_request(self) -> None:
        import openai

        with self.assertRaises(openai.BadRequestError) as caught:
            await in_thread(self.client.completions.create, model="m", prompt=[1, 2, 3])
        self.assertEqual(caught.exception.status_code, 400)
        self.assertEqual(caught.exception.body["param"], "prompt")


# A worker that streams until it is cancelled, counting cancellations; the
# prompt "wait for N" answers once N streams were cancelled.
ENDLESS_WORKER = """
import asyncio
import hfendpoint

state = {"cancelled": 0}
changed = asyncio.Event()


@hfendpoint.handler("chat_completions")
async def chat_completions(data):
    said = data["prompt"]
    if said.startswith("wait for "):
        while state["cancelled"] < int(said.split()[-1]):
            changed.clear()
            await changed.wait()
        yield {"content": f"{state['cancelled']} cancelled", "finish_reason": "stop"}
        return
    try:
        while True:
            yield {"content": said, "finish_reason": None}
            await asyncio.sleep(0.01)
    finally:
        state["cancelled"] += 1
        changed.set()


asyncio.run(hfendpoint.run())
"""


class CompletionsCancelTests(TestCase):
    """
    A client that leaves a stream of several prompts stops the worker's
    work on every one of them.
    """

    timeout = 15

    async def test_stream_client_gone(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol

        from .gateway import http_client, write_worker

        url, _ = await start_gateway(self, write_worker(self, ENDLESS_WORKER))
        http = http_client(self)
        first: Deferred = Deferred()
        lost: Deferred = Deferred()

        class HangUp(Protocol):
            """
            Leaves once each prompt's stream has sent text, so that the
            worker is running all three (a call cancelled before its
            handler starts never reaches the handler's own clean-up).
            """

            seen = b""

            def dataReceived(self, data: bytes) -> None:
                self.seen += data
                if not first.called and all(b'"text":"%s"' % p in self.seen for p in (b"x", b"y", b"z")):
                    first.callback(self.seen)
                    self.transport.stopProducing()

            def connectionLost(self, reason: Any) -> None:
                lost.callback(None)

        response = await http.post(
            url + "/v1/completions", json={"prompt": ["x", "y", "z"], "stream": True}
        )
        self.assertEqual(response.code, 200)
        response.deliverBody(HangUp())
        self.assertIn(b'"text_completion"', await first)
        await lost
        # Answered only once the worker saw all three streams cancelled (or
        # the test times out).
        response = await http.post(url + "/v1/completions", json={"prompt": "wait for 3"})
        body = json.loads(await response.content())
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["choices"][0]["text"], "3 cancelled")
