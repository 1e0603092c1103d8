#!/usr/bin/env python3
"""
The benchmark's worker: written on our worker library (v0.3 style) like
any worker, but answering instantly, so that a benchmark measures the
gateway rather than a model. Its conventions are in bench/shapes.py.

Run it behind the gateway (``hfendpoint ... bench/null_worker.py``) or
spawn it with HFENDPOINT_FD yourself, as the load client's floor does.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from typing import Any, AsyncIterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hfendpoint  # noqa: E402
from hfendpoint import WorkerError  # noqa: E402

from shapes import (  # noqa: E402
    BIN_BASE,
    DEFAULT_CHAT_TOKENS,
    DEFAULT_DIMS,
    DIM_BASE,
    MODEL,
    TOKEN_TEXT,
    fixed_vector,
    fixed_vector_bytes,
    make_png,
)

TOKEN_REPLY = {"content": TOKEN_TEXT, "finish_reason": None}


def _number(data: dict, key: str, default: float, kind: type) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise WorkerError(f"{key} must be a non-negative number")
    return kind(value)


class Steps:
    """
    The decoding steps of a model serving its streams as one batch: every
    C{interval} seconds, each stream waiting for a step gets its next token.

    One timer for all the streams on a clock, rather than one sleep per
    stream and token, keeps the worker cheap enough to pace thousands of
    streams; a step that comes late (the loop was busy) is not made up for,
    as a model that falls behind does not catch up.
    """

    clocks: dict[float, "Steps"] = {}

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.epoch: float = 0.0
        self.waiters: list[asyncio.Future] = []

    @classmethod
    def of(cls, interval: float) -> "Steps":
        steps = cls.clocks.get(interval)
        if steps is None:
            steps = cls.clocks[interval] = cls(interval)
        return steps

    def next(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self.waiters:
            now = loop.time()
            if not self.epoch:
                self.epoch = now
            ticks = math.floor((now - self.epoch) / self.interval) + 1
            loop.call_at(self.epoch + ticks * self.interval, self._step)
        self.waiters.append(waiter)
        return waiter

    def _step(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@hfendpoint.handler("chat_completions")
async def chat_completions(data: dict) -> AsyncIterator[dict]:
    tokens = _number(data, "bench_tokens", DEFAULT_CHAT_TOKENS, int)
    interval = _number(data, "bench_interval", 0.0, float)
    steps = Steps.of(interval) if interval else None
    for i in range(tokens):
        if steps is not None and i:
            await steps.next()
        yield TOKEN_REPLY
    yield {
        "content": "",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3},
    }


@hfendpoint.handler("tokenize")
async def tokenize(data: dict) -> dict:
    texts = data.get("input")
    if not isinstance(texts, list):
        raise WorkerError("input must be a list of strings")
    return {"tokens": [list(range(1, len(str(t).split()) + 2)) for t in texts]}


@hfendpoint.handler("embeddings")
async def embeddings(data: dict) -> dict:
    inputs = data.get("input")
    if not isinstance(inputs, list):
        raise WorkerError("input must be a list of token lists")
    vectors: list = []
    for tokens in inputs:
        head = tokens[0] if isinstance(tokens, list) and tokens else 0
        if not isinstance(head, int) or head <= DIM_BASE:
            vectors.append(fixed_vector(DEFAULT_DIMS))
        elif head > BIN_BASE:
            vectors.append(fixed_vector_bytes(head - BIN_BASE))
        else:
            vectors.append(fixed_vector(head - DIM_BASE))
    return {"embeddings": vectors}


async def images(data: dict) -> AsyncIterator[dict]:
    count = _number(data, "n", 1, int)
    png = make_png(_number(data, "width", 1, int) * _number(data, "height", 1, int))
    for _ in range(count):
        yield {"png": png}


hfendpoint.handler("images_generations")(images)
hfendpoint.handler("images_editions")(images)


if __name__ == "__main__":
    asyncio.run(hfendpoint.run(model=os.environ.get("HFENDPOINT_MODEL_NAME") or MODEL))
