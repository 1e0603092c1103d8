"""
The handlers of both generations of the original library, each adapted to
one shape, a L{Call}, so that the connection serves them all alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from hfendpoint.library._connection import Call, Request
from hfendpoint.library._errors import Cancelled

#: A worker's function serving one call: v0.3, C{handler(data)}, or v0.2,
#: C{handler(data, send_chunk)}.
Handler = Callable[..., Any]


def is_coroutine_function(function: Any) -> bool:
    """
    Like L{inspect.iscoroutinefunction}, but also for objects with an
    C{async def __call__}.
    """
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)
    )


async def send_all(request: Request, items: Any) -> None:
    """
    Send each item of an async iterable as one reply, closing it whatever
    happens so that the handler's C{finally} runs on cancel.
    """
    try:
        async for item in items:
            await request.send(item)
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def modern_call(function: Handler) -> Call:
    """
    Adapt a v0.3 handler, which takes C{data} and returns, awaits or yields
    its replies.

    A plain function runs in a thread so that a blocking model call does not
    stop the other requests; whatever it returns may still be awaitable or
    an async iterable, for handlers wrapped by decorators that hide what
    they are.
    """
    if inspect.isasyncgenfunction(function):

        async def call(request: Request, data: Any) -> None:
            await send_all(request, function(data))

    elif is_coroutine_function(function):

        async def call(request: Request, data: Any) -> None:
            await request.send(await function(data))

    else:

        async def call(request: Request, data: Any) -> None:
            result = await asyncio.to_thread(function, data)
            if hasattr(result, "__aiter__"):
                await send_all(request, result)
                return
            if inspect.isawaitable(result):
                result = await result
            await request.send(result)

    return call


def legacy_call(function: Handler) -> Call:
    """
    Adapt a v0.2 handler, C{function(data, send_chunk)}, which blocks: it
    runs in a thread, and its C{send_chunk} hands each reply to the event
    loop and waits until it is written, so that backpressure reaches it.
    """

    async def call(request: Request, data: Any) -> None:
        loop = asyncio.get_running_loop()

        def send_chunk(chunk: Any) -> None:
            if request.cancelled:
                raise Cancelled(f"request {request.id} was cancelled")
            sending = request.send(chunk)
            try:
                future = asyncio.run_coroutine_threadsafe(sending, loop)
            except RuntimeError:
                sending.close()
                raise Cancelled("the worker is shutting down") from None
            try:
                future.result()
            except concurrent.futures.CancelledError:
                raise Cancelled("the worker is shutting down") from None

        await asyncio.to_thread(function, data, send_chunk)

    return call


def modern_calls(handlers: Mapping[str, Handler]) -> dict[str, Call]:
    """
    @return: the calls serving v0.3 C{handlers}.
    """
    return {name: modern_call(function) for name, function in handlers.items()}


def legacy_calls(handlers: Mapping[str, Handler]) -> dict[str, Call]:
    """
    @return: the calls serving v0.2 C{handlers}.
    """
    return {name: legacy_call(function) for name, function in handlers.items()}
