"""
Tests for the llama.cpp worker, L{hfendpoint.workers.llama_cpp}, on a tiny
random-weight GGUF model written at test time (L{tests.tiny_gguf}), served
through a real gateway and talked to by the official client.

The model never ends a reply by itself, and each of its tokens is one
character, so lengths, usage and stops can all be predicted exactly.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from . import tiny_gguf
from .gateway import in_thread, openai_client, start_gateway
from .gateway_end import WorkerProcess

WORKER = [sys.executable, "-m", "hfendpoint.workers.llama_cpp"]
MESSAGES = [{"role": "user", "content": "Hello there"}]
PROMPT_TOKENS = tiny_gguf.prompt_tokens(MESSAGES)

class GatewayTestCase(TestCase):
    options: list[str] = ["--n-ctx", "512"]

    @inlineCallbacks
    def setUp(self) -> Any:
        url, self.gateway = yield start_gateway(self, WORKER + ["--model", tiny_gguf.model_path(), *self.options])
        self.client = openai_client(self, url)

    def chat(self, **kwargs: Any) -> Any:
        kwargs.setdefault("messages", MESSAGES)
        return in_thread(self.client.chat.completions.create, model="tiny", **kwargs)

    def streamed(self, **kwargs: Any) -> Any:
        """
        A streamed chat: its content pieces, finish reason and usage.
        """

        def read() -> tuple[list[str], Optional[str], Any]:
            pieces, finish, usage = [], None, None
            stream = self.client.chat.completions.create(
                model="tiny",
                messages=kwargs.pop("messages", MESSAGES),
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
            for event in stream:
                if event.usage is not None:
                    usage = event.usage
                for choice in event.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                    finish = choice.finish_reason or finish
            return pieces, finish, usage

        return in_thread(read)


class ChatTests(GatewayTestCase):
    @inlineCallbacks
    def test_max_tokens_and_usage(self) -> Any:
        """
        A reply cut by C{max_tokens} ends with C{length}, its usage counts
        the prompt's tokens as the template makes them and every token
        sampled; the model is named after its file.
        """
        reply = yield self.chat(max_tokens=7, seed=1)
        choice = reply.choices[0]
        self.assertEqual(choice.finish_reason, "length")
        self.assertEqual(len(choice.message.content), 7)
        self.assertEqual(
            (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens),
            (PROMPT_TOKENS, 7, PROMPT_TOKENS + 7),
        )
        self.assertEqual(reply.model, "tiny")

    @inlineCallbacks
    def test_stream(self) -> Any:
        """
        A streamed reply comes in several pieces that make the same text as
        the whole reply to the same request, with the same usage.
        """
        pieces, finish, usage = yield self.streamed(max_tokens=20, seed=5)
        whole = yield self.chat(max_tokens=20, seed=5)
        self.assertGreater(len(pieces), 1)
        self.assertEqual("".join(pieces), whole.choices[0].message.content)
        self.assertEqual(finish, "length")
        self.assertEqual((usage.prompt_tokens, usage.completion_tokens), (PROMPT_TOKENS, 20))

    @inlineCallbacks
    def test_seed(self) -> Any:
        """
        The same seed gives the same reply; another seed another one; at
        temperature 0 the seed does not matter.
        """
        first = yield self.chat(max_tokens=30, seed=11)
        again = yield self.chat(max_tokens=30, seed=11)
        other = yield self.chat(max_tokens=30, seed=12)
        text = first.choices[0].message.content
        self.assertEqual(again.choices[0].message.content, text)
        self.assertNotEqual(other.choices[0].message.content, text)
        greedy = yield self.chat(max_tokens=30, seed=1, temperature=0)
        greedy_again = yield self.chat(max_tokens=30, seed=2, temperature=0)
        self.assertEqual(greedy.choices[0].message.content, greedy_again.choices[0].message.content)

    @inlineCallbacks
    def test_stop(self) -> Any:
        """
        The reply ends before the first C{stop} string, which is never sent,
        streamed or not; the tokens up to the stop count.
        """
        free = yield self.chat(max_tokens=40, seed=3)
        text = free.choices[0].message.content
        stop = text[20:23]
        cut = text.index(stop)
        reply = yield self.chat(max_tokens=40, seed=3, stop=[stop, "never there"])
        self.assertEqual(reply.choices[0].message.content, text[:cut])
        self.assertEqual(reply.choices[0].finish_reason, "stop")
        self.assertEqual(reply.usage.completion_tokens, cut + len(stop))
        pieces, finish, usage = yield self.streamed(max_tokens=40, seed=3, stop=stop)
        self.assertEqual("".join(pieces), text[:cut])
        self.assertEqual(finish, "stop")
        self.assertEqual(usage.completion_tokens, cut + len(stop))

    @inlineCallbacks
    def test_end_token(self) -> Any:
        """
        A reply ends with C{stop} when the model samples its end token,
        here forced by C{logit_bias}; that token counts, and shows no text.
        """
        reply = yield self.chat(max_tokens=10, logit_bias={str(tiny_gguf.END_ID): 100})
        self.assertEqual(reply.choices[0].finish_reason, "stop")
        self.assertEqual(reply.choices[0].message.content, "")
        self.assertEqual(reply.usage.completion_tokens, 1)

    @inlineCallbacks
    def test_n(self) -> Any:
        """
        Each of C{n} choices is generated, with its own random seed, and the
        usage adds their tokens up.
        """
        reply = yield self.chat(max_tokens=16, n=2)
        self.assertEqual([choice.index for choice in reply.choices], [0, 1])
        texts = [choice.message.content for choice in reply.choices]
        self.assertEqual([len(text) for text in texts], [16, 16])
        self.assertNotEqual(texts[0], texts[1])
        self.assertEqual((reply.usage.prompt_tokens, reply.usage.completion_tokens), (PROMPT_TOKENS, 32))

    @inlineCallbacks
    def test_concurrent(self) -> Any:
        """
        Requests sent at once are served one after the other, each exactly
        as it would be alone.
        """
        alone = []
        for seed in (21, 22, 23):
            reply = yield self.chat(max_tokens=25, seed=seed)
            alone.append(reply.choices[0].message.content)
        streams = [self.streamed(max_tokens=25, seed=seed) for seed in (21, 22, 23)]
        together = []
        for stream in streams:
            pieces, finish, usage = yield stream
            together.append("".join(pieces))
            self.assertEqual((finish, usage.completion_tokens), ("length", 25))
        self.assertEqual(together, alone)

    @inlineCallbacks
    def test_cancelled_stream(self) -> Any:
        """
        A client leaving an endless stream does not hold up nor disturb the
        next request: with the same seed, it begins as the stream did.
        """

        def leave() -> str:
            stream = self.client.chat.completions.create(
                model="tiny", messages=MESSAGES, stream=True, seed=8
            )
            text = ""
            for event in stream:
                text += "".join(choice.delta.content or "" for choice in event.choices)
                if len(text) >= 3:
                    break
            stream.close()
            return text[:10]

        begun = yield in_thread(leave)
        self.assertGreaterEqual(len(begun), 3)
        reply = yield self.chat(max_tokens=10, seed=8)
        self.assertEqual(reply.choices[0].message.content[: len(begun)], begun)

    @inlineCallbacks
    def test_completions(self) -> Any:
        """
        C{/v1/completions} completes the prompt as it is, without the chat
        template: its tokens are BOS and its characters.
        """
        reply = yield in_thread(
            self.client.completions.create, model="tiny", prompt="abc", max_tokens=4, seed=1
        )
        self.assertEqual(len(reply.choices[0].text), 4)
        self.assertEqual((reply.usage.prompt_tokens, reply.usage.completion_tokens), (4, 4))

    @inlineCallbacks
    def test_bad_input(self) -> Any:
        """
        What the worker cannot serve fails with a message saying why.
        """
        import openai

        image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
        long = [{"role": "user", "content": "x" * 600}]
        for kwargs, words in [
            ({"messages": [{"role": "user", "content": image}]}, "reads text only"),
            ({"messages": long}, "is 604 tokens long"),
            ({"logprobs": True}, "logprobs are not supported"),
            ({"logit_bias": {"5000": 1}}, "no token id of this model"),
        ]:
            failure = yield self.assertFailure(
                self.chat(max_tokens=2, **kwargs), openai.BadRequestError
            )
            self.assertIn(words, str(failure))


class EmbeddingTests(GatewayTestCase):
    options = ["--n-ctx", "512", "--embedding"]

    def embed(self, texts: Any) -> Any:
        return in_thread(self.client.embeddings.create, model="tiny", input=texts)

    @inlineCallbacks
    def test_embeddings(self) -> Any:
        """
        One unit vector of the model's width per text, the same for the same
        text, counted in the model's tokens (BOS and the characters).
        """
        reply = yield self.embed(["hello", "hello world", "hello"])
        vectors = [item.embedding for item in reply.data]
        self.assertEqual([len(vector) for vector in vectors], [tiny_gguf.EMBEDDING] * 3)
        for vector in vectors:
            self.assertAlmostEqual(math.fsum(x * x for x in vector), 1.0, places=5)
        self.assertEqual(vectors[0], vectors[2])
        self.assertNotEqual(vectors[0], vectors[1])
        self.assertEqual(reply.usage.prompt_tokens, 6 + 12 + 6)

    @inlineCallbacks
    def test_as_llama_cpp_embeds(self) -> Any:
        """
        Each vector is the mean of the text's token vectors, as llama.cpp
        itself pools them, normalised; token ids give the text's vector.
        """
        import llama_cpp

        reply = yield self.embed(["hello world", "abc"])
        by_ids = yield self.embed(tiny_gguf.token_ids("abc"))
        llama = llama_cpp.Llama(
            model_path=tiny_gguf.model_path(),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=512,
            verbose=False,
        )
        self.addCleanup(llama.close)
        expected = llama.embed(["hello world", "abc"], normalize=True)
        for item, vector in zip(reply.data, expected):
            for got, want in zip(item.embedding, vector):
                self.assertAlmostEqual(got, want, places=4)
        self.assertEqual(by_ids.data[0].embedding, reply.data[1].embedding)

    @inlineCallbacks
    def test_bad_token(self) -> Any:
        """
        A token id the model does not have is refused, naming it.
        """
        import openai

        failure = yield self.assertFailure(self.embed([[1, 2, 5000]]), openai.BadRequestError)
        self.assertIn("token id 5000", str(failure))

    @inlineCallbacks
    def test_no_chat(self) -> Any:
        """
        A model loaded for embeddings does not chat: the gateway says so.
        """
        import openai

        failure = yield self.assertFailure(self.chat(max_tokens=2), openai.APIStatusError)
        self.assertEqual(failure.status_code, 501)


class WorkerTests(SynchronousTestCase):
    """
    The worker as the gateway sees it, on its socket.
    """


    def start(self, *options: str) -> WorkerProcess:
        worker = WorkerProcess(
            self, ["-m", "hfendpoint.workers.llama_cpp", "--model", tiny_gguf.model_path(), *options]
        )
        [handshake] = worker.data("hfendpoint.describe", {"protocol": 2})
        self.assertEqual(handshake["model"], "tiny")
        self.handshake = handshake
        return worker

    def test_tokenize(self) -> None:
        """
        C{tokenize} gives each text's ids, BOS first; text that looks like a
        control token is read as characters.
        """
        worker = self.start("--n-ctx", "512")
        self.assertEqual(self.handshake["calls"], ["chat_completions", "tokenize"])
        [reply] = worker.data("tokenize", {"input": ["Hi there", "", "</s>"]})
        self.assertEqual(reply, {"tokens": [tiny_gguf.token_ids("Hi there"), tiny_gguf.token_ids(""), tiny_gguf.token_ids("</s>")]})

    def test_cancel(self) -> None:
        """
        A cancel stops the generation within a token: the next request
        gets its turn, and the worker says how far the first one went.
        """
        worker = self.start("--n-ctx", "512")
        worker.send({"id": 1, "name": "chat_completions", "data": {"messages": MESSAGES, "seed": 1}})
        for _ in range(3):
            reply = worker.receive()
            self.assertEqual((reply["id"], reply["data"]["finish_reason"]), (1, None))
        worker.send({"id": 2, "name": "hfendpoint.cancel", "data": {"id": 1}})
        worker.send({"id": 3, "name": "chat_completions", "data": {"messages": MESSAGES, "max_tokens": 2}})
        while True:
            reply = worker.receive()
            if reply["id"] == 1:
                self.assertIsNone(reply["data"]["finish_reason"])
            elif reply["data"]["finish_reason"]:
                break
        self.assertEqual(reply["id"], 3)
        self.assertEqual(reply["data"]["usage"]["completion_tokens"], 2)
        stopped = [line for line in worker.log().splitlines() if "stopped by a cancel" in line]
        self.assertEqual(len(stopped), 1, worker.log())
        generated = int(stopped[0].split("after ")[1].split()[0])
        self.assertLess(generated, 512 - PROMPT_TOKENS)

    def test_bad_options(self) -> None:
        """
        A model file that is not there is refused before anything loads.
        """
        worker = WorkerProcess(self, ["-m", "hfendpoint.workers.llama_cpp", "--model", "/nonexistent.gguf"])
        self.assertEqual(worker.process.wait(30), 2)
        self.assertIn("no such file: /nonexistent.gguf", worker.log())
