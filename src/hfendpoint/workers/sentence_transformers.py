"""
The sentence-transformers worker: any embedding model that
C{sentence_transformers.SentenceTransformer} loads, served as the
C{tokenize} and C{embeddings} calls of the protocol.

    hfendpoint python -m hfendpoint.workers.sentence_transformers \\
        --model sentence-transformers/all-MiniLM-L6-v2

The model (a hub name or a local directory) is loaded before the worker
answers the gateway's handshake, so that "ready" means ready to serve.
C{tokenize} gives the model's own tokens (its prompt, special tokens and
truncation included), which the gateway counts for usage; C{embeddings}
runs the model's own modules on token ids, truncated to its maximum
length, so that text sent through both calls gets exactly the vector
C{SentenceTransformer.encode} gives it.

One forward pass at a time runs on the device, in a thread of its own so
that the event loop keeps reading requests and cancels. Every row to
embed, from any call, joins one queue; each round the model takes what
is queued, sorted by length and cut into passes of at most
C{--batch-tokens} padded tokens, rows of very different lengths apart
when a pass of their own costs less than their padding
(C{--pass-overhead}); the vectors go back in the order of each call.
With C{--embed-ahead}, texts start being embedded as soon as they are
tokenized, since the gateway asks for their vectors next (C{_st_engine}
says why).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Sequence
from typing import Any, Optional

import hfendpoint

from ._st_batches import texts, token_lists, truncate
from ._st_engine import Engine, Tokenizer

log = logging.getLogger("hfendpoint.workers.sentence_transformers")

DEFAULT_BATCH_TOKENS = 16384
#: The fixed cost of one forward pass, in padded tokens: what padding rows
#: to a longer one must save before they get a pass of their own. Eager
#: torch pays about 64 tokens' worth of time for each pass;
#: ONNX Runtime about 12 (all-MiniLM-L6-v2 on two cores: 1.4 ms a pass,
#: 0.11 ms a token).
DEFAULT_OVERHEAD = 64
ONNX_OVERHEAD = 12


class Worker:
    """
    The calls served for one loaded model.

    @ivar embedder: the model, as token lists in and vectors out.
    @ivar engine: the queue of rows to embed and the loop that runs them.
    @ivar embed_ahead: whether texts are embedded as soon as tokenized.
    """

    def __init__(
        self,
        embedder: Any,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        overhead: Optional[float] = DEFAULT_OVERHEAD,
        embed_ahead: bool = False,
    ) -> None:
        self.embedder = embedder
        self.embed_ahead = embed_ahead
        # One forward pass at a time on the device; tokenizing has its own
        # thread, since a fast tokenizer must not be used by two at once.
        self.model_thread = concurrent.futures.ThreadPoolExecutor(1, "hfendpoint-model")
        self.tokenizer_thread = concurrent.futures.ThreadPoolExecutor(1, "hfendpoint-tokenizer")
        self.engine = Engine(embedder, batch_tokens, overhead, self.model_thread)
        self.tokenizer = Tokenizer(embedder, self.tokenizer_thread)
        if embed_ahead:
            self.engine.settle = self.tokenizer.settled

    async def tokenize(self, data: Any) -> dict[str, Any]:
        tokens = await self.tokenizer.tokenize(texts(data))
        if self.embed_ahead and tokens:
            # The gateway asks for these rows' vectors next: they join the
            # model's next round now (see _st_engine).
            self.engine.ahead(truncate(tokens, self.embedder.limit))
        return {"tokens": tokens}

    async def embeddings(self, data: Any) -> dict[str, Any]:
        embedder = self.embedder
        rows = truncate(token_lists(data, embedder.vocabulary), embedder.limit)
        vectors = await self.engine.embed(rows)
        # Lists of floats: the worker library sends them as float32 bytes
        # to a gateway that reads those, and as they are to one that does not.
        return {"embeddings": [vector.tolist() for vector in vectors]}

    def close(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.tokenizer_thread.shutdown(wait=False, cancel_futures=True)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hfendpoint.workers.sentence_transformers",
        description="Serve a sentence-transformers embedding model behind the hfendpoint gateway.",
    )
    parser.add_argument("--model", required=True, help="a model name on the Hugging Face hub, or a local directory")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: a GPU if there is one, else the CPU)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="the weights' precision (default: float16 on CUDA, float32 elsewhere)",
    )
    parser.add_argument(
        "--batch-tokens",
        type=positive,
        default=DEFAULT_BATCH_TOKENS,
        help=f"the most padded tokens in one forward pass (default {DEFAULT_BATCH_TOKENS})",
    )
    parser.add_argument(
        "--pass-overhead",
        type=positive,
        help=f"the fixed cost of one forward pass, in padded tokens: inputs of different lengths go in "
        f"separate passes when that saves more padding than this (default {ONNX_OVERHEAD} on ONNX Runtime, "
        f"{DEFAULT_OVERHEAD} on torch)",
    )
    parser.add_argument(
        "--embed-ahead",
        action="store_true",
        help="start embedding texts as soon as they are tokenized, since the gateway asks for their vectors next "
        "(experimental: it measured no faster than the gateway's own batching)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="what runs the transformer: onnx (ONNX Runtime, on the CPU, in float32), torch, or auto: onnx where "
        "it can and the model gives the same vectors on it, else torch (default auto)",
    )
    parser.add_argument("--threads", type=positive, help="torch threads on the CPU (default: the cores, shared among workers)")
    parser.add_argument("--prompt-name", help="the model's prompt to put before every text (default: its default prompt, if any)")
    parser.add_argument("--revision", help="the hub revision (branch, tag or commit) to load")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code from the hub")
    return parser.parse_args(argv)


def served_name(model: str) -> str:
    """
    The model name the handshake reports (unless C{HFENDPOINT_MODEL_NAME}
    says otherwise): the hub name, or a local directory's own name.
    """
    if os.path.isdir(model):
        return os.path.basename(os.path.normpath(os.path.abspath(model)))
    return model


def choose_prompt(model: Any, prompt_name: Optional[str]) -> Optional[str]:
    """
    The prompt C{encode} would use: the one named, or the model's default.
    """
    prompts = getattr(model, "prompts", None) or {}
    if prompt_name is not None:
        if prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            raise SystemExit(f"the model has no prompt named {prompt_name!r} (its prompts: {known})")
        return prompts[prompt_name] or None
    default = getattr(model, "default_prompt_name", None)
    return prompts.get(default) or None if default else None


def load(args: argparse.Namespace) -> Any:
    """
    Load the model on its device and wrap it for the calls.

    @raise SystemExit: if it cannot be served, with the reason.
    """
    from sentence_transformers import SentenceTransformer

    import torch

    from ._device import pick_device, set_cpu_threads, torch_dtype
    from ._st_model import Embedder, UnsupportedModel
    from ._st_onnx import choose_forward

    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    device = pick_device(args.device)
    set_cpu_threads(device, args.threads)
    log.info("Loading %s on %s", args.model, device)
    model = SentenceTransformer(
        args.model,
        device=device,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    dtype = torch_dtype(args.dtype, device)
    if model.dtype is not None and model.dtype != dtype:
        model.to(dtype)
    model.eval()
    prompt = choose_prompt(model, args.prompt_name)
    try:
        embedder = Embedder(model, prompt)
    except UnsupportedModel as error:
        raise SystemExit(f"cannot serve {args.model}: {error}")
    forward = choose_forward(
        args.backend, device, dtype, model, lambda texts: model.preprocess(list(texts), prompt=prompt), torch.get_num_threads()
    )
    if forward is not None:
        embedder.forward = forward
    log.info(
        "Serving %s: %s dimensions, at most %s tokens per input, %s on %s%s",
        args.model,
        embedder.dimension(),
        embedder.limit,
        dtype,
        "ONNX Runtime" if forward is not None else "torch",
        f", prompt {prompt!r}" if prompt else "",
    )
    return embedder


def pass_overhead(embedder: Any) -> float:
    """
    The cost of one forward pass on what runs C{embedder}'s transformer.
    """
    from ._st_onnx import OnnxForward

    return ONNX_OVERHEAD if isinstance(embedder.forward, OnnxForward) else DEFAULT_OVERHEAD


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    if "HFENDPOINT_FD" not in os.environ:
        # Found out now rather than after loading the model.
        raise SystemExit("this program is an hfendpoint worker; start it through the hfendpoint gateway")
    embedder = load(args)
    overhead = args.pass_overhead or pass_overhead(embedder)
    worker = Worker(embedder, args.batch_tokens, overhead, args.embed_ahead)
    hfendpoint.handler("tokenize")(worker.tokenize)
    hfendpoint.handler("embeddings")(worker.embeddings)
    name = os.environ.get("HFENDPOINT_MODEL_NAME") or served_name(args.model)
    try:
        asyncio.run(hfendpoint.run(model=name))
    finally:
        worker.close()


if __name__ == "__main__":
    main()
