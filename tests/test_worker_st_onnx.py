"""
The sentence-transformers worker's transformer on ONNX Runtime: the same
vectors as C{SentenceTransformer.encode}, and torch whenever ONNX Runtime
cannot serve the model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .test_worker_sentence_transformers import TEXTS, cosine_distance, model_path, reference


def preprocess_of(model: Any, prompt: Any = None) -> Any:
    return lambda texts: model.preprocess(list(texts), prompt=prompt)


class ChooseTests(SynchronousTestCase):
    def choose(self, backend: str, device: str = "cpu", model: Any = None, dtype: Any = None) -> Any:
        import torch

        from hfendpoint.workers._st_onnx import choose_forward

        model = model or reference()
        return choose_forward(backend, device, dtype or torch.float32, model, preprocess_of(model), 2)

    def test_pass_overhead_follows_the_backend(self) -> None:
        """
        Without C{--pass-overhead}, a pass costs what it costs on the
        backend chosen: ONNX Runtime's passes are cheaper, so rows of
        different lengths go apart sooner.
        """
        from hfendpoint.workers._st_model import Embedder
        from hfendpoint.workers.sentence_transformers import DEFAULT_OVERHEAD, ONNX_OVERHEAD, parse_args, pass_overhead

        model = reference()
        embedder = Embedder(model)
        self.assertEqual(pass_overhead(embedder), DEFAULT_OVERHEAD)
        embedder.forward = self.choose("onnx", model=model)
        self.assertEqual(pass_overhead(embedder), ONNX_OVERHEAD)
        self.assertLess(ONNX_OVERHEAD, DEFAULT_OVERHEAD)
        self.assertIsNone(parse_args(["--model", "m"]).pass_overhead)
        self.assertEqual(parse_args(["--model", "m", "--pass-overhead", "30"]).pass_overhead, 30)

    def test_auto_on_the_cpu(self) -> None:
        from hfendpoint.workers._st_onnx import OnnxForward

        self.assertIsInstance(self.choose("auto"), OnnxForward)

    def test_torch(self) -> None:
        self.assertIsNone(self.choose("torch"))

    def test_not_on_a_gpu(self) -> None:
        self.assertIsNone(self.choose("auto", device="cuda"))
        with self.assertRaises(SystemExit) as raised:
            self.choose("onnx", device="cuda:0")
        self.assertIn("CPU only", str(raised.exception))

    def test_not_in_half_precision(self) -> None:
        import torch

        self.assertIsNone(self.choose("auto", dtype=torch.bfloat16))

    def test_onnxruntime_missing(self) -> None:
        from hfendpoint.workers import _st_onnx

        self.patch(_st_onnx, "available", lambda: False)
        self.assertIsNone(self.choose("auto"))
        with self.assertRaises(SystemExit) as raised:
            self.choose("onnx")
        self.assertIn("onnxruntime is not installed", str(raised.exception))

    def test_vectors_that_differ_are_refused(self) -> None:
        """
        A model whose exported transformer does not give torch's vectors
        is served by torch.
        """
        from hfendpoint.workers import _st_onnx

        run = _st_onnx.OnnxForward.__call__

        def off(self: Any, features: dict) -> dict:
            features = run(self, features)
            features["sentence_embedding"] = features["sentence_embedding"] + 0.01
            return features

        self.patch(_st_onnx.OnnxForward, "__call__", off)
        self.assertIsNone(self.choose("auto"))
        with self.assertRaises(SystemExit) as raised:
            self.choose("onnx")
        self.assertIn("differ from torch's", str(raised.exception))

    def test_session_that_does_not_load(self) -> None:
        import onnxruntime

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph("no")

        self.patch(onnxruntime, "InferenceSession", refuse)
        self.assertIsNone(self.choose("auto"))
        with self.assertRaises(SystemExit) as raised:
            self.choose("onnx")
        self.assertIn("could not load it", str(raised.exception))

    def test_model_without_a_transformer(self) -> None:
        """
        A C{StaticEmbedding} model has no transformer to export: torch.
        """
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules.static_embedding import StaticEmbedding
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(reference().tokenizer.backend_tokenizer.to_str())
        model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu")
        self.assertIsNone(self.choose("auto", model=model))
        with self.assertRaises(SystemExit):
            self.choose("onnx", model=model)


class OnnxVectorsTests(SynchronousTestCase):
    """
    The worker on ONNX Runtime gives C{encode}'s vectors: batches, one
    text alone, an over-long text, and a prompt left out of pooling.
    """

    def worker(self, model: Any, prompt: Any = None) -> Any:
        from hfendpoint.workers._st_model import Embedder
        from hfendpoint.workers._st_onnx import OnnxForward, choose_forward
        from hfendpoint.workers.sentence_transformers import ONNX_OVERHEAD, Worker

        embedder = Embedder(model, prompt)
        import torch

        embedder.forward = choose_forward("onnx", "cpu", torch.float32, model, preprocess_of(model, prompt), 2)
        self.assertIsInstance(embedder.forward, OnnxForward)
        # With the pass overhead the worker takes on ONNX Runtime: the most
        # passes of different lengths.
        worker = Worker(embedder, batch_tokens=512, overhead=ONNX_OVERHEAD)
        self.addCleanup(worker.close)
        return worker

    def embed(self, worker: Any, texts: list[str]) -> list[list[float]]:
        async def both() -> Any:
            tokens = (await worker.tokenize({"input": texts}))["tokens"]
            return (await worker.embeddings({"input": tokens}))["embeddings"]

        return asyncio.run(both())

    def test_same_as_encode(self) -> None:
        worker = self.worker(reference())
        for texts in (TEXTS, TEXTS[:1], TEXTS[2:3], TEXTS[1:2] * 40):
            expected = reference().encode(texts).tolist()
            for actual, wanted in zip(self.embed(worker, texts), expected, strict=True):
                self.assertLess(cosine_distance(actual, wanted), 1e-5)

    def test_prompt_left_out_of_pooling(self) -> None:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_path(), device="cpu")
        model.set_pooling_include_prompt(False)
        prompt = "query: "
        worker = self.worker(model, prompt)
        vectors = self.embed(worker, [TEXTS[3]])
        expected = model.encode([TEXTS[3]], prompt=prompt).tolist()
        self.assertLess(cosine_distance(vectors[0], expected[0]), 1e-5)
