"""
The transformers chat worker, on a tiny random-weight Llama with a
byte-level BPE tokenizer and a chat template (L{tests.tiny_chat_model}),
saved to a folder and loaded from it as a Hub model would be.

A random model writes gibberish, but gibberish that is exactly
reproducible: the tests compare its answers with each other and with the
tokenizer's own counts, never with expected words. Most checks go
through a real gateway and the official client; what needs a look inside
(the steps run after a cancel, the order of queued generations) runs the
engine in this process.
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.workers._tf_text import Detokenizer, TextFilter, parse_tool_calls

from .gateway import in_thread, openai_client, start_gateway
from .tiny_chat_model import CONTEXT, load_engine, load_tokenizer, prompt_tokens, tiny_model

MESSAGES = [{"role": "user", "content": "hello world"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CANCELLED = re.compile(r"cancelled at step (\d+); it stopped after step (\d+)")


class TextTests(SynchronousTestCase):
    """
    Stop strings and tool calls on text alone, split every way a stream
    may split it.
    """

    def feed_all(self, text_filter: TextFilter, pieces: list[str]) -> tuple[list[str], list[dict]]:
        sent = [text_filter.feed(piece) for piece in pieces]
        rest, calls = text_filter.finish()
        return sent + [rest], calls

    def test_stop_cuts_before_the_stop_string(self) -> None:
        """
        Text that may begin the stop string waits for the next piece; the
        text returned ends right before the stop string.
        """
        text = "say hello world and more"
        for size in range(1, len(text) + 1):
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            text_filter = TextFilter(stop=["nothing", "o wor"])
            sent, calls = self.feed_all(text_filter, pieces)
            self.assertEqual("".join(sent), "say hell")
            self.assertTrue(text_filter.stopped)
            self.assertEqual(calls, [])

    def test_prefix_of_a_stop_is_sent_in_the_end(self) -> None:
        """
        Text held back as a possible stop string is sent when it turns out
        not to be one, at the latest at the end.
        """
        text_filter = TextFilter(stop=["abc"])
        self.assertEqual(text_filter.feed("xab"), "x")
        self.assertEqual(text_filter.feed("d"), "abd")
        self.assertEqual(text_filter.feed("ab"), "")
        self.assertEqual(text_filter.finish(), ("ab", []))
        self.assertFalse(text_filter.stopped)

    def test_tool_call(self) -> None:
        """
        A C{<tool_call>} block is held back and parsed into a call; the
        text before it streams as usual.
        """
        reply = 'Let me see.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        for size in (1, 3, len(reply)):
            pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
            sent, calls = self.feed_all(TextFilter(tools=True), pieces)
            self.assertEqual("".join(sent), "Let me see.")
            self.assertEqual(len(calls), 1)
            self.assertEqual(calls[0]["function"], {"name": "get_weather", "arguments": '{"city": "Paris"}'})
            self.assertTrue(calls[0]["id"].startswith("call_"))

    def test_json_tool_call_and_plain_json(self) -> None:
        """
        A reply that is one JSON call (Llama's C{parameters}) is a call;
        JSON that is no call stays text.
        """
        calls, rest = parse_tool_calls('{"name": "f", "parameters": {"x": 1}}')
        self.assertEqual([c["function"] for c in calls], [{"name": "f", "arguments": '{"x": 1}'}])
        self.assertEqual(rest, "")
        sent, calls = self.feed_all(TextFilter(tools=True), ['{"answer"', ": 42}"])
        self.assertEqual(("".join(sent), calls), ('{"answer": 42}', []))

    def test_no_tools_no_holding(self) -> None:
        """
        Without tools, a tool call tag is just text and streams at once.
        """
        text_filter = TextFilter()
        self.assertEqual(text_filter.feed("<tool_call>{"), "<tool_call>{")

    def test_detokenizer_waits_for_whole_characters(self) -> None:
        """
        Byte-level tokens that end inside a character give nothing until
        it is whole, and the pieces add up to the decoded text.
        """
        tokenizer = load_tokenizer()
        text = "über schön, hello"
        ids = tokenizer.encode(text, add_special_tokens=False)
        detokenizer = Detokenizer(tokenizer)
        pieces = [detokenizer.add(token) for token in ids] + [detokenizer.flush()]
        self.assertEqual("".join(pieces), text)
        self.assertFalse(any("\ufffd" in piece for piece in pieces))




class EngineTests(SynchronousTestCase):
    """
    The engine in this process, where its steps can be counted.
    """

    def setUp(self) -> None:
        self.engine = load_engine()
        self.addCleanup(self.engine.close)
        self.forwards = 0

        def count(*args: Any) -> None:
            self.forwards += 1

        self.addCleanup(self.engine.model.register_forward_hook(count).remove)

    def request(self, **fields: Any) -> Any:
        from hfendpoint.workers._tf_request import read_request

        return read_request({"messages": MESSAGES, **fields}, self.engine.vocabulary)

    def test_cancel_stops_within_the_step(self) -> None:
        """
        A cancel that comes while a step's tokens are handed out ends the
        generation there: the model runs no further forward pass, and
        nothing more is sent.
        """
        from hfendpoint.workers._tf_engine import Job

        sent: list[list[dict]] = []
        at_cancel = []

        def emit(chunks: list[dict]) -> None:
            sent.append(chunks)
            if len(sent) == 3:
                at_cancel.append(self.forwards)
                job.cancel()

        job = Job(self.request(max_tokens=500, temperature=0), emit)
        self.engine.run(job)
        self.assertEqual(len(sent), 3)
        self.assertEqual(self.forwards, at_cancel[0])
        self.assertEqual(job.steps, self.forwards)
        self.assertLess(job.steps, 500)
        self.assertEqual(job.cancelled_at, job.steps)

    def test_eos_ends_with_stop(self) -> None:
        """
        An end-of-sequence token ends the choice with C{stop}; it counts as
        a completion token but is no text.
        """
        from hfendpoint.workers._tf_engine import Job

        import torch

        # The token the model writes first, made its end of sequence.
        prompt = torch.tensor([self.engine.prompt(self.request())])
        with torch.inference_mode():
            first = int(self.engine.model(prompt).logits[0, -1].argmax())
        self.engine.eos = {first}
        chunks: list[dict] = []
        self.engine.run(Job(self.request(max_tokens=50, temperature=0), chunks.extend))
        self.assertEqual(chunks[-1]["finish_reason"], "stop")
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 1)
        self.assertEqual("".join(c["content"] for c in chunks), "")

    def test_queued_generations_do_not_interleave(self) -> None:
        """
        Generations run one after the other, each whole: all of the first
        request's chunks come before any of the second's.
        """
        order: list[int] = []

        async def collect(index: int, **fields: Any) -> list[dict]:
            chunks = []
            async for chunk in self.engine.stream(self.request(**fields)):
                order.append(index)
                chunks.append(chunk)
            return chunks

        async def both() -> list[list[dict]]:
            return await asyncio.gather(
                collect(0, max_tokens=20, temperature=0),
                collect(1, max_tokens=20, temperature=0, n=2),
            )

        first, second = asyncio.run(both())
        self.assertEqual(self.forwards, 40)
        self.assertEqual(order, sorted(order))
        self.assertEqual(first[-1]["usage"]["completion_tokens"], 20)
        finished = [c for c in second if c["finish_reason"]]
        self.assertEqual(sorted(c["index"] for c in finished), [0, 1])
        # Greedy: both choices of the second are the first's answer.
        text = "".join(c["content"] for c in first)
        for index in (0, 1):
            self.assertEqual("".join(c["content"] for c in second if c["index"] == index), text)

    def test_cancel_while_queued(self) -> None:
        """
        A request cancelled while it waits for its turn never runs: the
        model runs the steps of the requests around it and no more.
        """

        async def scenario() -> list[dict]:
            waiting = asyncio.ensure_future(self.drain(max_tokens=30, temperature=0))
            chunks = []
            async for chunk in self.engine.stream(self.request(max_tokens=30, temperature=0)):
                if not chunks:
                    waiting.cancel()
                chunks.append(chunk)
            with self.assertRaises(asyncio.CancelledError):
                await waiting
            # Queued after the cancelled one: it would have run by now.
            await self.drain(max_tokens=5, temperature=0)
            return chunks

        chunks = asyncio.run(scenario())
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 30)
        self.assertEqual(self.forwards, 35)

    async def drain(self, **fields: Any) -> list[dict]:
        return [chunk async for chunk in self.engine.stream(self.request(**fields))]




class LineWatcher:
    """
    The worker's stderr lines, as the gateway logs them.
    """

    def __init__(self, testcase: TestCase, pattern: re.Pattern[str]) -> None:
        from twisted.internet.defer import Deferred

        self.pattern = pattern
        self.found: Deferred = Deferred()
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        if event.get("log_namespace") != "hfendpoint.worker" or self.found.called:
            return
        match = self.pattern.search(str(event.get("line", "")))
        if match:
            self.found.callback(match)


class GatewayTests(TestCase):
    """
    The worker behind a real gateway, asked with the official client.
    """

    timeout = 120

    async def setUp(self) -> None:
        command = [sys.executable, "-m", "hfendpoint.workers.transformers", "--model", tiny_model()]
        # The handshake comes once the model is loaded: wait for it.
        self.url, self.gateway = await start_gateway(
            self,
            command,
            startup_grace=self.timeout,
            worker_env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
            access_log=False,
        )
        self.client = openai_client(self, self.url)

    def chat(self, messages: list[dict] = MESSAGES, **fields: Any) -> Any:
        return in_thread(self.client.chat.completions.create, model="m", messages=messages, **fields)

    def stream(self, **fields: Any) -> Any:
        def run() -> list[Any]:
            with self.client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **fields
            ) as stream:
                return list(stream)

        return in_thread(run)

    async def test_chat(self) -> None:
        """
        Greedy answers stream token by token and agree with the whole
        answer; C{max_tokens} ends with C{length} after exactly that many
        tokens; usage counts the templated prompt as the tokenizer does;
        C{stop} cuts the answer before it; a seed repeats an answer; tools
        reach the template; C{n} gives as many choices.
        """
        whole = await self.chat(max_tokens=12, temperature=0)
        choice = whole.choices[0]
        self.assertEqual(choice.finish_reason, "length")
        expected = prompt_tokens(MESSAGES)
        self.assertEqual(
            (whole.usage.prompt_tokens, whole.usage.completion_tokens), (expected, 12)
        )

        chunks = await self.stream(max_tokens=12, temperature=0)
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        self.assertGreater(len(deltas), 3)
        self.assertEqual("".join(deltas), choice.message.content)
        self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices][-1], "length")
        self.assertEqual((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens), (expected, 12))

        text = choice.message.content
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        stopped = await self.chat(max_tokens=12, temperature=0, stop=[stop])
        self.assertEqual(stopped.choices[0].finish_reason, "stop")
        self.assertEqual(stopped.choices[0].message.content, text[: text.find(stop)])
        self.assertLessEqual(stopped.usage.completion_tokens, 12)

        seeded = [await self.chat(max_tokens=16, temperature=1.0, seed=seed) for seed in (7, 7, 8)]
        texts = [answer.choices[0].message.content for answer in seeded]
        self.assertEqual(texts[0], texts[1])
        self.assertNotEqual(texts[0], texts[2])

        tooled = await self.chat(max_tokens=2, temperature=0, tools=TOOLS)
        self.assertEqual(tooled.usage.prompt_tokens, prompt_tokens(MESSAGES, TOOLS))
        self.assertGreater(tooled.usage.prompt_tokens, expected)

        several = await self.chat(max_tokens=6, temperature=1.0, n=3)
        self.assertEqual([c.index for c in several.choices], [0, 1, 2])
        self.assertEqual([c.finish_reason for c in several.choices], ["length"] * 3)
        self.assertEqual(several.usage.completion_tokens, 18)
        self.assertGreater(len({c.message.content for c in several.choices}), 1)

        # With a seed, n choices still differ (one call answers them all,
        # as the worker announces chat_n), and the same request repeats.
        seeded_n = [await self.chat(max_tokens=8, temperature=1.0, n=2, seed=3) for _ in range(2)]
        pairs = [[c.message.content for c in answer.choices] for answer in seeded_n]
        self.assertNotEqual(pairs[0][0], pairs[0][1])
        self.assertEqual(pairs[0], pairs[1])

    async def test_concurrent_requests(self) -> None:
        """
        Requests sent together each get the answer they get alone, and a
        streamed request that its client leaves stops its generation
        within a step, long before its C{max_tokens}, letting the next
        request through.
        """
        prompts = [[{"role": "user", "content": word}] for word in ("fox", "dog", "hello there")]
        alone = [(await self.chat(messages, max_tokens=10, temperature=0)) for messages in prompts]
        together = await gatherResults(
            [self.chat(messages, max_tokens=10, temperature=0) for messages in prompts]
        )
        answers = [[a.choices[0].message.content for a in group] for group in (alone, together)]
        self.assertEqual(answers[1], answers[0])
        self.assertEqual(len(set(answers[0])), 3)

        watcher = LineWatcher(self, CANCELLED)
        budget = CONTEXT - 100

        def leave_early() -> str:
            stream = self.client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, max_tokens=budget, temperature=0
            )
            first = next(iter(stream))
            stream.close()
            return first.choices[0].delta.role

        self.assertEqual(await in_thread(leave_early), "assistant")
        after = await self.chat(max_tokens=4, temperature=0)
        self.assertEqual(after.usage.completion_tokens, 4)
        match = await watcher.found
        cancelled_at, stopped_after = int(match.group(1)), int(match.group(2))
        self.assertLessEqual(stopped_after - cancelled_at, 1)
        self.assertLess(stopped_after, budget)


