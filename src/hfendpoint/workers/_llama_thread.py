"""
The llama.cpp worker's model thread: one thread that alone touches the
model, so that requests take turns whole (a llama.cpp context holds one
conversation at a time) while the event loop stays free to read cancels
and write replies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()


class ModelThread:
    """
    Runs jobs one after the other, in the order they were given, in a
    thread of its own.
    """

    def __init__(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llama"
        )

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """
        The result of C{function(*args)}, computed in the model's thread
        once the jobs before it are done.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, *args)

    async def stream(
        self,
        generate: Callable[..., Iterator[T]],
        *args: Any,
    ) -> AsyncIterator[T]:
        """
        The items of C{generate(*args, cancelled)}, generated in the model's
        thread and handed to the event loop one by one as they come.

        When the consumer stops (the request was cancelled, or the gateway
        is gone), C{cancelled} is set: C{generate} checks it between tokens
        and returns, and a job still waiting for its turn does nothing.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                # The event loop is closed: nobody waits any more.
                cancelled.set()

        def work() -> None:
            if cancelled.is_set():
                return
            try:
                for item in generate(*args, cancelled):
                    if cancelled.is_set():
                        return
                    hand_over(item)
            except BaseException as error:
                hand_over(Failure(error))
            finally:
                hand_over(_END)

        job = loop.run_in_executor(self.executor, work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Failure):
                    raise item.error
                yield item
        finally:
            cancelled.set()
            # The job is left to end by itself: waiting for it here would
            # hold the cancel up by a token.
            job.add_done_callback(_ignore)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Failure:
    """
    An exception raised in the model's thread, on its way to the loop.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _ignore(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()
