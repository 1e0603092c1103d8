"""
Tests for the end of requests the gateway no longer waits for: a cancel
stops one, and the gateway going away stops them all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import hfendpoint
from hfendpoint.library import legacy_calls, modern_calls

from .gateway_end import TIMEOUT, Peer, capture_logs, echo, serve_scenario


class CancelTests(SynchronousTestCase):
    """
    C{hfendpoint.cancel} stops a request, which then sends nothing more.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_async_generator(self) -> None:
        """
        A cancelled async generator is closed (its C{finally} runs) and
        sends nothing after the cancel, nor any error.
        """
        closed = asyncio.Event()

        async def ticks(data: Any) -> Any:
            try:
                yield {"n": 0}
                await asyncio.Event().wait()
                yield {"n": 1}
            finally:
                closed.set()

        async def was_closed(data: Any) -> Any:
            await closed.wait()
            return "closed"

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "ticks")
            replies = [await peer.receive()]
            await peer.cancel(2, 1)
            await peer.send(3, "was_closed")
            replies.append(await peer.receive())
            await peer.send(4, "echo", "last")
            replies.append(await peer.receive())
            return replies

        calls = modern_calls({"ticks": ticks, "was_closed": was_closed, "echo": echo})
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 1, "data": {"n": 0}},
                {"id": 3, "data": "closed"},
                {"id": 4, "data": "last"},
            ],
        )

    def test_endless_fast_stream(self) -> None:
        """
        A handler that sends without ever waiting still lets the cancel be
        read, and stops.
        """

        async def endless(data: Any) -> Any:
            while True:
                yield "token"

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "endless")
            for _ in range(50):
                await peer.receive()
            await peer.cancel(2, 1)
            await peer.send(3, "echo", "after")
            while True:
                reply = await peer.receive()
                if reply["id"] == 3:
                    return reply

        calls = modern_calls({"endless": endless, "echo": echo})
        self.assertEqual(serve_scenario(calls, scenario), {"id": 3, "data": "after"})

    def test_coroutine(self) -> None:
        """
        A cancelled coroutine is cancelled, and even a value it returns
        anyway is not sent.
        """
        cancelled = asyncio.Event()

        async def stubborn(data: Any) -> Any:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
            return "too late"

        async def was_cancelled(data: Any) -> Any:
            await cancelled.wait()
            return "cancelled"

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "stubborn")
            # Once this is answered, the earlier request has started.
            await peer.send(2, "echo", "started")
            replies = [await peer.receive()]
            await peer.cancel(5, 1)
            await peer.send(3, "was_cancelled")
            replies.append(await peer.receive())
            await peer.send(4, "echo", "last")
            replies.append(await peer.receive())
            return replies

        calls = modern_calls(
            {"stubborn": stubborn, "was_cancelled": was_cancelled, "echo": echo}
        )
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 2, "data": "started"},
                {"id": 3, "data": "cancelled"},
                {"id": 4, "data": "last"},
            ],
        )

    def test_unknown_target(self) -> None:
        """
        Cancelling a finished or unknown request is no error and no reply.
        """

        async def scenario(peer: Peer) -> Any:
            await peer.cancel(1, 12345)
            await peer.send_message({"id": 2, "name": "hfendpoint.cancel", "data": {}})
            await peer.send(3, "echo", "still here")
            return await peer.receive()

        self.assertEqual(
            serve_scenario(modern_calls({"echo": echo}), scenario),
            {"id": 3, "data": "still here"},
        )

    def test_legacy_thread(self) -> None:
        """
        A v0.2 handler cannot be interrupted, but once its request is
        cancelled its C{send_chunk} raises L{hfendpoint.Cancelled} and nothing
        more goes out.
        """
        proceed = threading.Event()
        finished = threading.Event()
        outcome: list[str] = []

        def slow(data: Any, send_chunk: Any) -> None:
            try:
                send_chunk({"n": 0})
                proceed.wait(TIMEOUT)
                send_chunk({"n": 1})
                outcome.append("sent")
            except hfendpoint.Cancelled:
                outcome.append("cancelled")
                raise
            finally:
                finished.set()

        def nothing(data: Any, send_chunk: Any) -> None:
            send_chunk(data)

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "slow")
            replies = [await peer.receive()]
            await peer.cancel(2, 1)
            await peer.send(3, "nothing", "barrier")
            replies.append(await peer.receive())
            proceed.set()
            await asyncio.to_thread(finished.wait, TIMEOUT)
            await peer.send(4, "nothing", "last")
            replies.append(await peer.receive())
            return replies

        calls = legacy_calls({"slow": slow, "nothing": nothing})
        self.assertEqual(
            serve_scenario(calls, scenario),
            [
                {"id": 1, "data": {"n": 0}},
                {"id": 3, "data": "barrier"},
                {"id": 4, "data": "last"},
            ],
        )
        self.assertEqual(outcome, ["cancelled"])


class EndTests(SynchronousTestCase):
    """
    The worker ends cleanly when the gateway goes away, whichever way.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_eof_cancels(self) -> None:
        """
        EOF stops the requests in flight and returns normally.
        """
        ended: list[bool] = []

        async def stuck(data: Any) -> Any:
            try:
                await asyncio.Event().wait()
            finally:
                ended.append(True)

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "stuck")
            await peer.send(2, "echo", "started")
            return await peer.receive()

        calls = modern_calls({"stuck": stuck, "echo": echo})
        self.assertEqual(serve_scenario(calls, scenario), {"id": 2, "data": "started"})
        self.assertEqual(ended, [True])
        self.assertEqual(self.logs.messages(logging.WARNING), [])

    def test_write_to_closed_socket(self) -> None:
        """
        When replies can no longer be written, the worker says so once and
        stops, even though the gateway never closed its writing side.
        """
        closed = []

        async def flood(data: Any) -> Any:
            try:
                for n in itertools.count():
                    yield {"n": n, "padding": "x" * 1000}
            finally:
                closed.append(True)

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "flood")
            first = await peer.receive()
            peer.sock.shutdown(socket.SHUT_RD)
            await peer.worker
            return first, list(closed)

        reply, closed_then = serve_scenario(modern_calls({"flood": flood}), scenario)
        self.assertEqual(reply["data"]["n"], 0)
        self.assertEqual(closed_then, [True])
        warnings = self.logs.messages(logging.WARNING)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("Lost the connection", warnings[0])
