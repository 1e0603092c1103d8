"""
Tests for the handlers of both generations of the original library: v0.3
(C{data} in; a value, an awaitable or an async generator out) and v0.2
(C{handler(data, send_chunk)}), in-process.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import hfendpoint
from hfendpoint.library import legacy_calls, modern_calls

from .gateway_end import TIMEOUT, Peer, capture_logs, serve_scenario


class ModernHandlerTests(SynchronousTestCase):
    """
    v0.3 handlers: whatever shape they take, they answer.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def call(self, function: Any, data: Any = None, count: int = 1) -> list[Any]:
        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "call", data)
            return [await peer.receive() for _ in range(count)]

        return serve_scenario(modern_calls({"call": function}), scenario)

    def test_request_id(self) -> None:
        """
        The HTTP request's id the gateway sends beside the call is what
        C{hfendpoint.request_id()} gives its handler, and is in the log
        line of its failure; without one, it is C{None}.
        """

        async def which(data: Any) -> Any:
            if data.get("fail"):
                raise hfendpoint.WorkerError("refused")
            return {"request_id": hfendpoint.request_id()}

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send_message({"id": 1, "name": "call", "data": {}, "request_id": "req-7"})
            first = await peer.receive()
            await peer.send(2, "call", {})
            second = await peer.receive()
            await peer.send_message({"id": 3, "name": "call", "data": {"fail": True}, "request_id": "req-8"})
            return [first, second, await peer.receive()]

        replies = serve_scenario(modern_calls({"call": which}), scenario)
        self.assertEqual(replies[0], {"id": 1, "data": {"request_id": "req-7"}})
        self.assertEqual(replies[1], {"id": 2, "data": {"request_id": None}})
        self.assertEqual(replies[2], {"id": 3, "error": "refused"})
        self.assertIn("request req-8", self.logs.records[-1].getMessage())
        self.assertIsNone(hfendpoint.request_id())

    def test_sync_function(self) -> None:
        """
        A plain function runs off the event loop's thread and its result is
        the one reply.
        """

        def double(data: Any) -> Any:
            return {
                "twice": data["x"] * 2,
                "thread": threading.current_thread() is not threading.main_thread(),
            }

        self.assertEqual(
            self.call(double, {"x": 21}),
            [{"id": 1, "data": {"twice": 42, "thread": True}}],
        )

    def test_coroutine(self) -> None:
        async def double(data: Any) -> Any:
            await asyncio.sleep(0)
            return data["x"] * 2

        self.assertEqual(self.call(double, {"x": 4}), [{"id": 1, "data": 8}])

    def test_returns_awaitable(self) -> None:
        def later(data: Any) -> Any:
            return asyncio.sleep(0, result={"later": data["x"]})

        self.assertEqual(self.call(later, {"x": 1}), [{"id": 1, "data": {"later": 1}}])

    def test_async_generator(self) -> None:
        async def count(data: Any) -> Any:
            for n in range(data["n"]):
                yield {"n": n}

        self.assertEqual(
            self.call(count, {"n": 3}, count=3),
            [{"id": 1, "data": {"n": n}} for n in range(3)],
        )

    def test_returns_async_iterator(self) -> None:
        """
        A plain function handing back an async generator streams it, as a
        decorator may hide what the handler is.
        """

        async def count(data: Any) -> Any:
            for n in range(2):
                yield n

        def wrapped(data: Any) -> Any:
            return count(data)

        self.assertEqual(
            self.call(wrapped, count=2), [{"id": 1, "data": 0}, {"id": 1, "data": 1}]
        )

    def test_exception(self) -> None:
        def broken(data: Any) -> Any:
            raise ValueError("bad value")

        self.assertEqual(self.call(broken), [{"id": 1, "error": "bad value"}])
        self.assertIsNotNone(self.logs.records[-1].exc_info)

    def test_worker_error(self) -> None:
        async def refuse(data: Any) -> Any:
            raise hfendpoint.WorkerError("input must not be empty")

        self.assertEqual(self.call(refuse), [{"id": 1, "error": "input must not be empty"}])

    def test_client_status(self) -> None:
        """
        A request at fault carries its 4xx status; any other stays a plain
        error, which the gateway answers with a 500.
        """

        async def invalid(data: Any) -> Any:
            raise hfendpoint.InvalidRequest("the prompt is too long")

        async def conflict(data: Any) -> Any:
            raise hfendpoint.WorkerError("busy", status=409)

        async def not_a_client_error(data: Any) -> Any:
            raise hfendpoint.WorkerError("broken", status=503)

        self.assertEqual(
            self.call(invalid), [{"id": 1, "error": "the prompt is too long", "status": 400}]
        )
        self.assertEqual(self.call(conflict), [{"id": 1, "error": "busy", "status": 409}])
        self.assertEqual(self.call(not_a_client_error), [{"id": 1, "error": "broken"}])

    def test_empty_message(self) -> None:
        """
        An exception without a message still says something.
        """

        async def broken(data: Any) -> Any:
            raise RuntimeError()

        self.assertEqual(self.call(broken), [{"id": 1, "error": "RuntimeError"}])

    def test_generator_fails_midway(self) -> None:
        async def partial(data: Any) -> Any:
            yield 1
            raise hfendpoint.WorkerError("out of memory")

        self.assertEqual(
            self.call(partial, count=2),
            [{"id": 1, "data": 1}, {"id": 1, "error": "out of memory"}],
        )

    def test_unserializable_result(self) -> None:
        """
        A result MessagePack cannot carry fails its request, not the worker.
        """
        [reply] = self.call(lambda data: {"value": object()})
        self.assertEqual(reply["id"], 1)
        self.assertIn("serialize", reply["error"])

    def test_unknown_name(self) -> None:
        async def scenario(peer: Peer) -> Any:
            await peer.send(7, "transcribe")
            return await peer.receive()

        self.assertEqual(
            serve_scenario(modern_calls({}), scenario),
            {"id": 7, "error": "No handler implemented for 'transcribe'"},
        )


class LegacyHandlerTests(SynchronousTestCase):
    """
    v0.2 handlers, C{handler(data, send_chunk)}, in-process.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_concurrent(self) -> None:
        """
        Two blocking handlers run at once: the first waits for the second.
        """
        arrived = threading.Event()

        def waiter(data: Any, send_chunk: Any) -> None:
            if not arrived.wait(TIMEOUT / 2):
                raise hfendpoint.WorkerError("the other request never ran")
            send_chunk("waited")

        def arriver(data: Any, send_chunk: Any) -> None:
            arrived.set()
            send_chunk("arrived")

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "waiter")
            await peer.send(2, "arriver")
            return [await peer.receive(), await peer.receive()]

        calls = legacy_calls({"waiter": waiter, "arriver": arriver})
        self.assertEqual(
            sorted(serve_scenario(calls, scenario), key=lambda r: r["id"]),
            [{"id": 1, "data": "waited"}, {"id": 2, "data": "arrived"}],
        )

    def test_errors(self) -> None:
        def refuse(data: Any, send_chunk: Any) -> None:
            raise hfendpoint.WorkerError("no such model")

        def broken(data: Any, send_chunk: Any) -> None:
            send_chunk("partial")
            raise KeyError("input")

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "refuse")
            first = await peer.receive()
            await peer.send(2, "broken")
            return [first, await peer.receive(), await peer.receive()]

        calls = legacy_calls({"refuse": refuse, "broken": broken})
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 1, "error": "no such model"},
                {"id": 2, "data": "partial"},
                {"id": 2, "error": "'input'"},
            ],
        )
