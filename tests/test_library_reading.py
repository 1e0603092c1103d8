"""
Tests for how the worker library reads the gateway's requests: whole
MessagePack values split anywhere, served concurrently, malformed ones
skipped.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.library import Connection, modern_calls

from .gateway_end import TIMEOUT, Peer, capture_logs, echo, serve_scenario


class ReadingTests(SynchronousTestCase):
    """
    Requests are whole MessagePack values split anywhere; replies of
    concurrent requests interleave.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_split_anywhere(self) -> None:
        """
        Fed one byte at a time, each request starts exactly when its last
        byte arrives, and all are answered.
        """
        messages = [
            {"id": 1, "name": "echo", "data": {"text": "héllo"}},
            {"id": 2, "name": "echo", "data": {"blob": bytes(range(40))}},
            {"id": 3, "name": "echo", "data": {"list": [1, 2.5, None, True]}},
        ]
        started: list[int] = []

        async def scenario() -> list[Any]:
            ours, theirs = socket.socketpair()
            _, worker_writer = await asyncio.open_unix_connection(sock=theirs)
            connection = Connection(worker_writer, modern_calls({"echo": echo}))
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            peer = Peer(reader, writer, ours, asyncio.get_running_loop().create_future())
            for message in messages:
                payload = msgpack.packb(message, use_bin_type=True)
                for index in range(len(payload)):
                    connection.feed(payload[index : index + 1])
                    started.append(len(connection.requests))
            replies = [await peer.receive() for _ in messages]
            await connection.close()
            writer.close()
            return replies

        replies = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        sizes = [len(msgpack.packb(m, use_bin_type=True)) for m in messages]
        expected = []
        for count, size in enumerate(sizes):
            expected += [count] * (size - 1) + [count + 1]
        self.assertEqual(started, expected)
        self.assertEqual(
            sorted(replies, key=lambda r: r["id"]),
            [{"id": m["id"], "data": m["data"]} for m in messages],
        )

    def test_many_in_one_read(self) -> None:
        """
        Requests arriving together in one write are all served.
        """

        async def scenario(peer: Peer) -> list[Any]:
            peer.writer.write(
                b"".join(
                    msgpack.packb({"id": i, "name": "echo", "data": {"i": i}})
                    for i in range(1, 51)
                )
            )
            return [await peer.receive() for _ in range(50)]

        replies = serve_scenario(modern_calls({"echo": echo}), scenario)
        self.assertEqual(
            sorted(r["id"] for r in replies), list(range(1, 51))
        )
        for reply in replies:
            self.assertEqual(reply["data"], {"i": reply["id"]})

    def test_interleaved(self) -> None:
        """
        A request is served while an earlier one is still streaming, and
        their replies interleave on the wire.
        """
        released = asyncio.Event()

        async def slow(data: Any) -> Any:
            yield "a"
            await released.wait()
            yield "c"

        async def quick(data: Any) -> Any:
            released.set()
            return "b"

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "slow")
            first = await peer.receive()
            await peer.send(2, "quick")
            return [first, await peer.receive(), await peer.receive()]

        replies = serve_scenario(
            modern_calls({"slow": slow, "quick": quick}), scenario
        )
        self.assertEqual(
            replies,
            [{"id": 1, "data": "a"}, {"id": 2, "data": "b"}, {"id": 1, "data": "c"}],
        )

    def test_malformed_skipped(self) -> None:
        """
        Messages that are not requests get no reply and stop nothing.
        """

        async def scenario(peer: Peer) -> Any:
            for message in [
                5,
                "echo",
                [1, "echo", {}],
                {"id": "1", "name": "echo"},
                {"id": True, "name": "echo"},
                {"id": 2, "name": 7},
                {"name": "echo"},
            ]:
                await peer.send_message(message)
            await peer.send(9, "echo", {"ok": 1})
            return await peer.receive()

        reply = serve_scenario(modern_calls({"echo": echo}), scenario)
        self.assertEqual(reply, {"id": 9, "data": {"ok": 1}})
        skipped = [m for m in self.logs.messages() if "malformed" in m]
        self.assertEqual(len(skipped), 7, skipped)

    def test_garbage_stops(self) -> None:
        """
        A stream that is not MessagePack cannot be resynchronised: the
        worker says so and stops rather than guessing.
        """

        async def scenario(peer: Peer) -> None:
            peer.writer.write(b"\xc1")
            await peer.worker

        serve_scenario(modern_calls({}), scenario)
        self.assertTrue(any("malformed MessagePack" in m for m in self.logs.messages()))
