"""
The generation engine: one model, one generation at a time, in a thread
of its own.

Requests wait their turn in the engine's queue (a single-thread
executor), so that two generations never share the device nor interleave
their tokens, and the event loop stays free to read the gateway's next
requests and cancels meanwhile. Each step of C{generate} goes through
L{Tap}, a stopping criterion that sees every new token: it decodes the
token, hands the text to the event loop, decides whether each choice is
over, and stops the whole generation as soon as its request is
cancelled, so a cancel costs at most the step under way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from hfendpoint import InvalidRequest

from ._tf_request import ChatRequest
from ._tf_sampling import generation_config, logits_processors, seed_for
from ._tf_text import Detokenizer, TextFilter

log = logging.getLogger("hfendpoint.workers.transformers")

#: The context length assumed when neither the model nor its tokenizer
#: tells one (C{--max-model-len} overrides it).
FALLBACK_CONTEXT = 2048

Chunk = dict[str, Any]


class Job:
    """
    One C{chat_completions} call: its request, where its chunks go, and
    whether it was cancelled.

    @ivar emit: called from the generation thread with the chunks of each
        step, in order.
    @ivar steps: the generation steps run for it so far (one token per
        choice each).
    @ivar cancelled_at: how many steps had run when the cancel came.
    """

    def __init__(self, request: ChatRequest, emit: Callable[[list[Chunk]], None]) -> None:
        self.request = request
        self.emit = emit
        self.steps = 0
        self.cancelled_at: Optional[int] = None
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """
        Stop the generation at the end of the step under way; from any
        thread.
        """
        if not self._cancelled.is_set():
            self.cancelled_at = self.steps
            self._cancelled.set()


class Choice:
    """
    One choice of a job as its tokens come.

    @ivar finish_reason: set once it is over.
    """

    def __init__(self, engine: Engine, request: ChatRequest, prompt_tokens: int, limit: int) -> None:
        self.eos = engine.eos
        self.detokenizer = Detokenizer(engine.tokenizer)
        self.text = TextFilter(request.stop, tools=bool(request.tools))
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        self.tokens = 0
        self.finish_reason: Optional[str] = None

    def step(self, token: int) -> Optional[Chunk]:
        """
        Take the next token.

        @return: the chunk to send for it, if any: a token with no text
            of its own yet sends nothing.
        """
        self.tokens += 1
        reason = None
        if token in self.eos:
            reason = "stop"
            content = self.text.feed(self.detokenizer.flush())
        else:
            content = self.text.feed(self.detokenizer.add(token))
        if self.text.stopped:
            reason = "stop"
        elif reason is None and self.tokens >= self.limit:
            reason = "length"
            content += self.text.feed(self.detokenizer.flush())
        if reason is None:
            return {"content": content, "finish_reason": None} if content else None
        return self.last_chunk(content, reason)

    def last_chunk(self, content: str, reason: str) -> Chunk:
        rest, calls = self.text.finish()
        self.finish_reason = "tool_calls" if calls else reason
        chunk: Chunk = {
            "content": content + rest,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.tokens,
                "total_tokens": self.prompt_tokens + self.tokens,
            },
        }
        if calls:
            chunk["tool_calls"] = calls
        return chunk


class Tap(StoppingCriteria):
    """
    The stopping criterion that C{generate} calls after each step with the
    tokens so far: it streams the new tokens out and says which choices
    are over, all of them once the job is cancelled.
    """

    def __init__(self, job: Job, choices: list[Choice]) -> None:
        self.job = job
        self.choices = choices

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.job.steps += 1
        if not self.job.cancelled:
            self.send(input_ids[:, -1].tolist())
        if self.job.cancelled:
            done = [True] * len(self.choices)
        else:
            done = [choice.finish_reason is not None for choice in self.choices]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def send(self, tokens: list[int]) -> None:
        chunks = []
        for index, choice in enumerate(self.choices):
            if choice.finish_reason is not None:
                continue
            chunk = choice.step(tokens[index])
            if chunk is not None:
                chunks.append(tagged(chunk, index, len(self.choices)))
        if chunks:
            try:
                self.job.emit(chunks)
            except RuntimeError:
                # The event loop is gone: the worker is stopping.
                self.job.cancel()


def tagged(chunk: Chunk, index: int, choices: int) -> Chunk:
    """
    C{chunk} with the index of its choice when there are several; a
    single choice's chunks stay two fields, the shape the gateway reads
    fastest.
    """
    if choices > 1:
        chunk["index"] = index
    return chunk


def token_ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, (list, tuple)):
        return {v for v in value if isinstance(v, int)}
    return set()


def context_length(model: Any, tokenizer: Any) -> int:
    """
    How many tokens, prompt and reply, the model takes: its position
    embeddings, else what its tokenizer says, else L{FALLBACK_CONTEXT}.
    """
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000_000:
        return value
    log.warning("The model does not say its context length; taking %d tokens", FALLBACK_CONTEXT)
    return FALLBACK_CONTEXT


class Engine:
    """
    A model and its tokenizer, generating for one job at a time.

    @ivar eos: the token ids that end a reply: the generation config's and
        the tokenizer's end of sequence.
    """

    def __init__(self, model: Any, tokenizer: Any, max_model_len: Optional[int] = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len or context_length(model, tokenizer)
        base = model.generation_config
        self.eos = token_ids(base.eos_token_id) | token_ids(tokenizer.eos_token_id)
        pad = base.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(self.eos) if self.eos else 0
        self.pad = pad
        self.vocabulary = model.get_output_embeddings().weight.shape[0]
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def close(self) -> None:
        """
        Drop the jobs still waiting and wait for the one running (cancel
        it first).
        """
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """
        Queue a generation and give its chunks as they come; leaving the
        iteration early (the request was cancelled) cancels it, whether it
        runs or waits.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Optional[list[Chunk]]] = asyncio.Queue()

        def emit(items: list[Chunk]) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, items)

        job = Job(request, emit)
        future = loop.run_in_executor(self.executor, self.run, job)

        def finished(future: asyncio.Future[None]) -> None:
            if not future.cancelled():
                future.exception()  # read below, or not at all if cancelled
            chunks.put_nowait(None)

        future.add_done_callback(finished)
        try:
            while (items := await chunks.get()) is not None:
                for item in items:
                    yield item
            future.result()
        finally:
            job.cancel()
            future.cancel()

    def prompt(self, request: ChatRequest) -> list[int]:
        """
        The conversation through the model's chat template, as token ids.
        """
        options: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}
        if request.tools:
            options["tools"] = request.tools
        try:
            encoded = self.tokenizer.apply_chat_template(request.messages, **options)
        except Exception as error:
            raise InvalidRequest(f"The chat template refused the conversation: {error}") from error
        return list(encoded["input_ids"])

    def run(self, job: Job) -> None:
        """
        Generate for C{job}, in the engine's thread.

        @raise WorkerError: if the prompt leaves no room for a reply.
        """
        if job.cancelled:
            return
        request = job.request
        ids = self.prompt(request)
        room = self.max_model_len - len(ids)
        if room <= 0:
            raise InvalidRequest(
                f"The prompt is {len(ids)} tokens long; this model takes {self.max_model_len} "
                "tokens in all, prompt and reply."
            )
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        choices = [Choice(self, request, len(ids), limit) for _ in range(request.n)]
        if limit == 0:
            job.emit([tagged(c.last_chunk("", "length"), i, request.n) for i, c in enumerate(choices)])
            return
        self.generate(job, ids, choices, limit)
        if job.cancelled:
            log.info(
                "A generation was cancelled at step %s; it stopped after step %d",
                job.cancelled_at,
                job.steps,
            )

    def generate(self, job: Job, ids: list[int], choices: list[Choice], limit: int) -> None:
        request = job.request
        config = generation_config(self.model.generation_config, request)
        config.max_new_tokens = limit
        config.max_length = None
        config.eos_token_id = sorted(self.eos) or None
        config.pad_token_id = self.pad
        inputs = torch.tensor([ids] * request.n, dtype=torch.long, device=self.model.device)
        torch.manual_seed(seed_for(request))
        with torch.inference_mode():
            self.model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                generation_config=config,
                logits_processor=logits_processors(request, len(ids)),
                stopping_criteria=StoppingCriteriaList([Tap(job, choices)]),
            )
