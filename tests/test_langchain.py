"""
LangChain's OpenAI integration (C{langchain-openai}) against a real
gateway and the demo worker: chat invoke and stream, and embeddings.

LangChain's calls block, so each runs in a thread (L{in_thread}) while
the reactor serves the gateway. C{check_embedding_ctx_length=False} keeps
C{OpenAIEmbeddings} from loading a tiktoken encoding (a download); nothing
here needs the network.
"""

from __future__ import annotations

import math
from typing import Any

import openai
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from twisted.trial.unittest import TestCase

from .gateway import demo_embedding, demo_tokens, in_thread, start_gateway
from .integration import DEMO_DIMENSION, DEMO_MODEL, REPLY, REPLY_CHUNKS, SAID


class LangChainTestCase(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.url, self.gateway = await start_gateway(self)
        # Our own HTTP client, closed at the end, rather than LangChain's
        # process-wide cached one, so no connection outlives the test.
        self.http = openai.DefaultHttpxClient()
        self.addCleanup(self.http.close)

    def chat(self, **kwargs: Any) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=self.url + "/v1",
            api_key="x",
            model="anything",
            max_retries=0,
            http_client=self.http,
            **kwargs,
        )

    def embeddings(self) -> OpenAIEmbeddings:
        return OpenAIEmbeddings(
            base_url=self.url + "/v1",
            api_key="x",
            model="anything",
            max_retries=0,
            http_client=self.http,
            check_embedding_ctx_length=False,
        )


class ChatTests(LangChainTestCase):
    async def test_invoke(self) -> None:
        message = await in_thread(self.chat().invoke, SAID)
        self.assertEqual(message.content, REPLY)
        self.assertEqual(message.response_metadata["finish_reason"], "stop")
        self.assertEqual(message.response_metadata["model_name"], DEMO_MODEL)
        self.assertEqual(message.usage_metadata["input_tokens"], len(demo_tokens(SAID)))
        self.assertEqual(message.usage_metadata["output_tokens"], len(REPLY_CHUNKS))

    async def test_invoke_messages_and_max_tokens(self) -> None:
        messages = [SystemMessage("You are terse."), HumanMessage(SAID)]
        message = await in_thread(self.chat(max_tokens=3).invoke, messages)
        self.assertEqual(message.content, "".join(REPLY_CHUNKS[:3]))
        self.assertEqual(message.response_metadata["finish_reason"], "length")

    async def test_stream(self) -> None:
        chunks = await in_thread(lambda: list(self.chat(stream_usage=True).stream(SAID)))
        self.assertGreater(len(chunks), 1)
        self.assertEqual("".join(c.content for c in chunks), REPLY)
        total = chunks[0]
        for chunk in chunks[1:]:
            total = total + chunk
        self.assertEqual(total.content, REPLY)
        self.assertEqual(total.response_metadata["finish_reason"], "stop")
        self.assertEqual(total.usage_metadata["input_tokens"], len(demo_tokens(SAID)))
        self.assertEqual(total.usage_metadata["output_tokens"], len(REPLY_CHUNKS))


class EmbeddingsTests(LangChainTestCase):
    def assertVectorsClose(self, got: list[float], text: str) -> None:
        expected = demo_embedding(demo_tokens(text))
        self.assertEqual(len(got), DEMO_DIMENSION)
        # float32 on the wire
        self.assertLess(max(abs(a - b) for a, b in zip(got, expected)), 1e-6)
        self.assertAlmostEqual(math.sqrt(sum(x * x for x in got)), 1.0, places=5)

    async def test_embed_documents(self) -> None:
        texts = [SAID, "The food was delicious.", "bye"]
        vectors = await in_thread(self.embeddings().embed_documents, texts)
        self.assertEqual(len(vectors), len(texts))
        for vector, text in zip(vectors, texts):
            self.assertVectorsClose(vector, text)

    async def test_embed_query(self) -> None:
        vector = await in_thread(self.embeddings().embed_query, SAID)
        self.assertVectorsClose(vector, SAID)
