"""
A chat worker for any causal language model that has a chat template,
run with C{transformers}:

    hfendpoint python -m hfendpoint.workers.transformers --model Qwen/Qwen2.5-0.5B-Instruct

It serves C{chat_completions} (and so the chat, completions and responses
endpoints): the conversation goes through the tokenizer's chat template,
with the request's tools; tokens stream back as they are generated, with
C{temperature}, C{top_p}, C{max_tokens}, C{stop}, C{seed}, the penalties
and C{logit_bias} honoured, exact usage, and tool calls parsed out of the
reply. Requests are served one at a time, in order of arrival, each
generation running in a thread of its own so the event loop keeps reading;
a cancelled request stops its generation within a step.

The model is loaded before the worker answers the gateway's handshake, so
being ready means being able to generate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, Optional

import hfendpoint
from hfendpoint.wire import CHAT_N

from ._device import pick_device, set_cpu_threads, torch_dtype

log = logging.getLogger("hfendpoint.workers.transformers")

DTYPES = ("auto", "float32", "float16", "bfloat16")


def parse_options(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hfendpoint.workers.transformers",
        description="Serve a chat model with transformers behind the hfendpoint gateway.",
    )
    parser.add_argument(
        "--model", required=True, help="a model id on the Hugging Face Hub, or a local folder"
    )
    parser.add_argument("--revision", help="the branch, tag or commit of the model on the Hub")
    parser.add_argument(
        "--device",
        help="cpu, cuda, cuda:N or mps (default: the first GPU there is, one per worker, else the CPU)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="the weights' precision (default: float16 on CUDA, float32 elsewhere; "
        "auto: as the checkpoint stores them)",
    )
    parser.add_argument(
        "--max-model-len",
        type=positive,
        help="the most tokens, prompt and reply, per request (default: the model's context length)",
    )
    parser.add_argument(
        "--threads",
        type=positive,
        help="CPU threads for torch (default: the cores shared out among the gateway's workers)",
    )
    parser.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template to use instead of the tokenizer's",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code a model repository ships (only for repositories you trust)",
    )
    parser.add_argument(
        "--served-model-name",
        help="the model name responses carry (default: HFENDPOINT_MODEL_NAME, else --model)",
    )
    return parser.parse_args(argv)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def load(options: argparse.Namespace) -> Any:
    """
    Load the tokenizer and the model exactly as for any Hub model, onto
    the device.

    @return: the L{Engine} serving them.
    @raise SystemExit: if the model has no chat template.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ._tf_engine import Engine
    except ImportError as error:
        raise SystemExit(
            f"this worker needs torch and transformers ({error}): "
            "pip install 'hfendpoint[transformers]'"
        ) from error

    device = pick_device(options.device)
    set_cpu_threads(device, options.threads)
    dtype = "auto" if options.dtype == "auto" else torch_dtype(options.dtype, device)
    common: dict[str, Any] = {"revision": options.revision}
    if options.trust_remote_code:
        common["trust_remote_code"] = True
    log.info("Loading %s on %s", options.model, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(options.model, **common)
    except OSError as error:
        # Not found, not downloadable, not a model: the message says which.
        raise SystemExit(f"cannot load {options.model}: {error}") from error
    if options.chat_template:
        with open(options.chat_template, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(
            f"{options.model} has no chat template; give one with --chat-template FILE"
        )
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=dtype, **common)
    model.to(device)
    model.eval()
    engine = Engine(model, tokenizer, max_model_len=options.max_model_len)
    log.info(
        "Ready: %s on %s (%s), %d tokens of context",
        options.model,
        device,
        str(model.dtype).removeprefix("torch."),
        engine.max_model_len,
    )
    return engine


def chat_handler(engine: Any) -> Any:
    """
    The C{chat_completions} handler serving C{engine}.
    """
    from ._tf_request import read_request

    async def chat_completions(data: Any) -> AsyncIterator[dict[str, Any]]:
        request = read_request(data, engine.vocabulary)
        async for chunk in engine.stream(request):
            yield chunk

    return chat_completions


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s", level=logging.INFO)
    options = parse_options(argv)
    if "HFENDPOINT_FD" not in os.environ:
        # Before minutes of loading, rather than after.
        raise SystemExit(
            "this program is an hfendpoint worker; start it through the gateway: "
            "hfendpoint python -m hfendpoint.workers.transformers --model ..."
        )
    engine = load(options)
    hfendpoint.handler("chat_completions")(chat_handler(engine))
    name = options.served_model_name or os.environ.get("HFENDPOINT_MODEL_NAME") or options.model
    try:
        # It answers n choices in one batch (each chunk tagged with its
        # index), rather than the n calls of one choice a gateway sends
        # otherwise, which would all share one seed.
        asyncio.run(hfendpoint.run(model=name, features=[CHAT_N]))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
