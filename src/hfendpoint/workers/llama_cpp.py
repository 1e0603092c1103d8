"""
The llama.cpp worker: a GGUF model served through llama-cpp-python.

    hfendpoint python -m hfendpoint.workers.llama_cpp --model ./model.gguf

Without C{--embedding} it serves C{chat_completions} (the model's chat
template, or the prompt as it is for C{/v1/completions}) and C{tokenize};
with it, C{embeddings} and C{tokenize}. The model is loaded before the
worker answers the gateway's handshake, so a ready gateway has a model.

The model is touched by one thread only (see L{_llama_thread}): requests
are served one after the other, whole, in the order they came, while the
event loop keeps reading cancels, which stop a generation within a token.

Install it with C{pip install 'hfendpoint[llama-cpp]'}; llama-cpp-python
compiles llama.cpp on installation (see the llama-cpp-python
documentation for GPU builds).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, Optional

import hfendpoint
from hfendpoint.workers._llama_chat import Chat, parse_chat
from hfendpoint.workers._llama_embed import POOLINGS, Embedder, token_lists, tokenize
from hfendpoint.workers._llama_thread import ModelThread

log = logging.getLogger("hfendpoint.workers.llama_cpp")

DEFAULT_CONTEXT = 4096


class LlamaWorker:
    """
    The handlers of the worker, on one loaded model.

    @ivar chat: generation, or L{None} when the model was loaded for
        embeddings.
    @ivar embedder: embeddings, or L{None} when it was not.
    """

    def __init__(self, llama: Any, template: Any, embedding: bool, normalize: bool) -> None:
        self.llama = llama
        self.thread = ModelThread()
        self.vocabulary = llama.n_vocab()
        self.chat = None if embedding else Chat(llama, template)
        self.embedder = Embedder(llama, normalize) if embedding else None

    def handlers(self) -> dict[str, Any]:
        calls: dict[str, Any] = {"tokenize": self.tokenize}
        if self.chat is not None:
            calls["chat_completions"] = self.chat_completions
        if self.embedder is not None:
            calls["embeddings"] = self.embeddings
        return calls

    async def chat_completions(self, data: Any) -> AsyncIterator[dict[str, Any]]:
        request = parse_chat(data, self.vocabulary)
        assert self.chat is not None
        async for chunk in self.thread.stream(self.chat.generate, request):
            yield chunk

    async def tokenize(self, data: Any) -> dict[str, Any]:
        # The vocabulary is read-only: tokenizing needs no turn in the
        # model's thread, only to stay off the event loop.
        return await asyncio.to_thread(tokenize, self.llama, data)

    async def embeddings(self, data: Any) -> dict[str, Any]:
        assert self.embedder is not None
        inputs = token_lists(data, self.vocabulary, self.embedder.capacity)
        return {"embeddings": await self.thread.call(self.embedder.embed, inputs)}


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(
        prog="python -m hfendpoint.workers.llama_cpp",
        description="Serve a GGUF model with llama.cpp behind the hfendpoint gateway.",
    )
    options.add_argument("--model", required=True, metavar="PATH", help="the GGUF file")
    options.add_argument(
        "--model-name",
        metavar="NAME",
        help="the name responses carry (default: HFENDPOINT_MODEL_NAME, else the file's name without .gguf)",
    )
    options.add_argument(
        "--n-ctx",
        type=int,
        default=DEFAULT_CONTEXT,
        metavar="N",
        help=f"the context in tokens, prompt and reply together; 0 for the model's own (default {DEFAULT_CONTEXT})",
    )
    options.add_argument(
        "--n-batch", type=int, default=512, metavar="N", help="tokens read per step (default 512)"
    )
    options.add_argument(
        "--n-threads",
        type=int,
        metavar="N",
        help="CPU threads (default: the cores this process may use, shared among the gateway's workers)",
    )
    options.add_argument(
        "--n-gpu-layers",
        type=int,
        default=0,
        metavar="N",
        help="layers offloaded to the GPU by a GPU build; -1 for all (default 0)",
    )
    options.add_argument(
        "--main-gpu", type=int, default=0, metavar="I", help="the GPU of a single-GPU split (default 0)"
    )
    options.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template file to use instead of the model's",
    )
    options.add_argument(
        "--embedding",
        action="store_true",
        help="load the model for embeddings: serve embeddings and tokenize, not chat",
    )
    options.add_argument(
        "--pooling",
        choices=sorted(POOLINGS),
        help="how token vectors become one (default: the model's; the mean for a model without one)",
    )
    options.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale embeddings to unit length (default: yes)",
    )
    options.add_argument(
        "--flash-attn", action="store_true", help="use flash attention where llama.cpp supports it"
    )
    options.add_argument(
        "--verbose", action="store_true", help="let llama.cpp log what it does (to stderr)"
    )
    return options


def default_threads() -> int:
    """
    This worker's share of the cores, among the gateway's workers.
    """
    try:
        workers = max(1, int(os.environ.get("HFENDPOINT_WORKERS", "1")))
    except ValueError:
        workers = 1
    return max(1, len(os.sched_getaffinity(0)) // workers)


def check_options(options: argparse.Namespace) -> Optional[str]:
    """
    @return: what is wrong with C{options}, if anything.
    """
    if not os.path.isfile(options.model):
        return f"--model: no such file: {options.model}"
    if options.n_ctx < 0:
        return "--n-ctx must be 0 or more"
    if options.n_batch < 1:
        return "--n-batch must be at least 1"
    if options.n_threads is not None and options.n_threads < 1:
        return "--n-threads must be at least 1"
    if options.chat_template and not os.path.isfile(options.chat_template):
        return f"--chat-template: no such file: {options.chat_template}"
    if options.pooling and not options.embedding:
        return "--pooling needs --embedding"
    return None


def load(options: argparse.Namespace) -> Any:
    """
    The model, as C{options} say.
    """
    import llama_cpp

    pooling = POOLINGS.get(options.pooling or "", llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)
    n_batch = options.n_batch
    if options.embedding:
        # A sequence is embedded in one step: the batch holds the context.
        n_batch = max(options.n_ctx, n_batch)
    threads = options.n_threads or default_threads()
    return llama_cpp.Llama(
        model_path=options.model,
        n_ctx=options.n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch if options.embedding else min(512, n_batch),
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=options.n_gpu_layers,
        main_gpu=options.main_gpu,
        embedding=options.embedding,
        pooling_type=pooling,
        flash_attn=options.flash_attn,
        verbose=options.verbose,
    )


def chat_template(llama: Any, path: Optional[str]) -> Any:
    """
    The formatter making a prompt of messages: llama-cpp-python's Jinja
    formatter on the template of C{path}, else the model's own, else
    ChatML (with a warning: the model may not know it).
    """
    from llama_cpp import llama_chat_format

    if path:
        with open(path, encoding="utf-8") as f:
            template = f.read()
    else:
        template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        log.warning("The model has no chat template; ChatML is used.")
        template = llama_chat_format.CHATML_CHAT_TEMPLATE

    def text(token: int) -> str:
        return llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=text(llama.token_eos()),
        bos_token=text(llama.token_bos()),
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s", level=logging.INFO)
    options = parser().parse_args(argv)
    problem = check_options(options)
    if problem:
        parser().error(problem)
    if "HFENDPOINT_FD" not in os.environ:
        # Say so before spending a minute loading the model.
        raise SystemExit(
            "this program is an hfendpoint worker; start it through the hfendpoint gateway"
        )
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("llama-cpp-python is not installed: pip install 'hfendpoint[llama-cpp]'")
    log.info("Loading %s", options.model)
    try:
        llama = load(options)
    except (ValueError, RuntimeError) as error:
        raise SystemExit(f"could not load {options.model}: {error}")
    template = None if options.embedding else chat_template(llama, options.chat_template)
    worker = LlamaWorker(llama, template, options.embedding, options.normalize)
    for name, function in worker.handlers().items():
        hfendpoint.handler(name)(function)
    model = (
        options.model_name
        or os.environ.get("HFENDPOINT_MODEL_NAME")
        or os.path.basename(options.model).removesuffix(".gguf")
    )
    log.info("Serving %s (%s)", model, ", ".join(sorted(worker.handlers())))
    try:
        asyncio.run(hfendpoint.run(model=model))
    finally:
        worker.thread.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
