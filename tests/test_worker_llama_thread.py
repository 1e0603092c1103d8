"""
Tests for the llama.cpp worker's model thread,
L{hfendpoint.workers._llama_thread}, with plain generators for a model:
they need neither llama.cpp nor a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.workers._llama_thread import ModelThread


class ModelThreadTests(SynchronousTestCase):
    """
    The model's thread, with plain generators for a model.
    """

    def test_turns(self) -> None:
        """
        Streams started together are generated one after the other, whole.
        """
        thread = ModelThread()
        self.addCleanup(thread.shutdown)
        events = []

        def generate(name: str, cancelled: threading.Event) -> Any:
            for index in range(3):
                events.append(f"{name}{index}")
                yield index

        async def consume(name: str) -> list[int]:
            return [item async for item in thread.stream(generate, name)]

        async def both() -> Any:
            return await asyncio.gather(consume("a"), consume("b"))

        self.assertEqual(asyncio.run(both()), [[0, 1, 2], [0, 1, 2]])
        self.assertEqual(events, ["a0", "a1", "a2", "b0", "b1", "b2"])

    def test_cancel(self) -> None:
        """
        A consumer that stops sets the generation's C{cancelled}, and a
        failure in the thread reaches the consumer.
        """
        thread = ModelThread()
        self.addCleanup(thread.shutdown)
        seen = []

        def generate(cancelled: threading.Event) -> Any:
            yield 1
            seen.append(cancelled.wait(30))

        def fail(cancelled: threading.Event) -> Any:
            yield 1
            raise ValueError("broken")

        async def first(function: Any) -> Any:
            async with contextlib.aclosing(thread.stream(function)) as items:
                async for item in items:
                    return item

        async def everything(function: Any) -> Any:
            return [item async for item in thread.stream(function)]

        self.assertEqual(asyncio.run(first(generate)), 1)
        thread.shutdown()
        self.assertEqual(seen, [True])
        thread = ModelThread()
        self.addCleanup(thread.shutdown)
        self.assertRaises(ValueError, asyncio.run, everything(fail))
