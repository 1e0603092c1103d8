"""
Tests for how the worker library writes its replies: a round's small ones
together, big ones alone and in pieces, streams stepped together in order.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.library import Connection, modern_calls
from hfendpoint.library._packing import BIG_MESSAGE, pack_parts
from hfendpoint.library._writer import WRITE_EVERY, WRITE_PIECE

from .gateway_end import TIMEOUT, Peer, capture_logs, serve_scenario


class WritingTests(SynchronousTestCase):
    """
    Replies of concurrent requests all arrive whole, each stream's in order,
    in as few writes as keeps them flowing.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def test_big_replies_one_at_a_time(self) -> None:
        """
        Big replies of concurrent requests all arrive whole and in order,
        and each goes into the socket's buffer only once the previous one
        has left it.
        """
        buffered: list[int] = []
        write = asyncio.StreamWriter.write

        def recording_write(writer: asyncio.StreamWriter, data: bytes) -> None:
            if len(data) >= BIG_MESSAGE:
                buffered.append(writer.transport.get_write_buffer_size())
            write(writer, data)

        self.patch(asyncio.StreamWriter, "write", recording_write)

        async def images(data: Any) -> Any:
            for part in range(3):
                yield bytes([data["i"], part]) * (BIG_MESSAGE // 2 + 1)
            yield "done"

        async def scenario(peer: Peer) -> list[Any]:
            for i in range(1, 6):
                await peer.send(i, "images", {"i": i})
            return [await peer.receive() for _ in range(20)]

        replies = serve_scenario(modern_calls({"images": images}), scenario)
        for i in range(1, 6):
            mine = [r["data"] for r in replies if r["id"] == i]
            expected = [bytes([i, part]) * (BIG_MESSAGE // 2 + 1) for part in range(3)]
            self.assertEqual(mine, expected + ["done"])
        self.assertEqual(len(buffered), 15)
        self.assertLess(max(buffered), BIG_MESSAGE)

    def test_big_values_and_small_replies_do_not_mix(self) -> None:
        """
        Images written in pieces and tokens of another stream, written at
        the same time, all arrive whole and each stream in its order.
        """
        size = 3 * WRITE_PIECE + 5

        async def images(data: Any) -> Any:
            for part in range(3):
                yield {"png": bytes([part]) * size, "index": part}

        async def tokens(data: Any) -> Any:
            for i in range(300):
                yield {"content": str(i), "finish_reason": None}

        async def scenario(peer: Peer) -> list[Any]:
            await peer.send(1, "images")
            await peer.send(2, "tokens")
            await peer.send(3, "images")
            return [await peer.receive() for _ in range(306)]

        replies = serve_scenario(modern_calls({"images": images, "tokens": tokens}), scenario)
        for ident in (1, 3):
            mine = [r["data"] for r in replies if r["id"] == ident]
            self.assertEqual(mine, [{"png": bytes([part]) * size, "index": part} for part in range(3)])
        self.assertEqual(
            [r["data"]["content"] for r in replies if r["id"] == 2], [str(i) for i in range(300)]
        )

    def test_replies_of_a_round_written_together(self) -> None:
        """
        The replies that streams send in the same round of the event loop
        leave in one write; every one arrives, each stream's in order.
        """
        writes: list[bytes] = []
        write = asyncio.StreamWriter.write

        def recording_write(writer: asyncio.StreamWriter, data: bytes) -> None:
            writes.append(bytes(data))
            write(writer, data)

        self.patch(asyncio.StreamWriter, "write", recording_write)

        async def tokens(data: Any) -> Any:
            for i in range(100):
                yield {"content": f"{data['s']}.{i}", "finish_reason": None}

        async def scenario(peer: Peer) -> list[Any]:
            for s in range(1, 21):
                await peer.send(s, "tokens", {"s": s})
            return [await peer.receive() for _ in range(2000)]

        replies = serve_scenario(modern_calls({"tokens": tokens}), scenario)
        for s in range(1, 21):
            self.assertEqual(
                [r["data"]["content"] for r in replies if r["id"] == s], [f"{s}.{i}" for i in range(100)]
            )
        self.assertLess(len(writes), 2000 // 10)

    def test_first_reply_of_a_round_written_at_once(self) -> None:
        """
        A lone reply does not wait for the end of the round; the next ones
        of the same round do, and all arrive in order.
        """

        async def scenario() -> tuple[bytes, bytes]:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            _, writer = await asyncio.open_unix_connection(sock=theirs)
            connection = Connection(writer, {})
            await connection.send({"id": 1, "data": "a"})
            await connection.send({"id": 2, "data": "b"})
            first = ours.recv(4096)
            await asyncio.sleep(0)
            rest = ours.recv(4096)
            await connection.close()
            ours.close()
            return first, rest

        first, rest = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        self.assertEqual(first, msgpack.packb({"id": 1, "data": "a"}))
        self.assertEqual(rest, msgpack.packb({"id": 2, "data": "b"}))

    def test_long_round_written_every_write_every_replies(self) -> None:
        """
        A round of thousands of replies (a model's step over thousands of
        streams) is written WRITE_EVERY replies at a time, not only at its
        end, so that the gateway reads the first while the rest are made.
        """

        async def scenario() -> tuple[bytes, bytes]:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            _, writer = await asyncio.open_unix_connection(sock=theirs)
            connection = Connection(writer, {})
            count = 1 + WRITE_EVERY + 3
            for i in range(count):
                await connection.send({"id": i, "data": "t"}, sender=object())
            before_the_end = ours.recv(1 << 20)
            await asyncio.sleep(0)
            rest = ours.recv(1 << 20)
            await connection.close()
            ours.close()
            return before_the_end, rest

        before_the_end, rest = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        every = WRITE_EVERY
        self.assertEqual(
            before_the_end, b"".join(msgpack.packb({"id": i, "data": "t"}) for i in range(1 + every))
        )
        self.assertEqual(rest, b"".join(msgpack.packb({"id": i, "data": "t"}) for i in range(1 + every, 4 + every)))

    def test_streams_stepped_together_keep_their_order(self) -> None:
        """
        Streams that each send one reply per step of a shared clock (a
        model decoding a batch) reply in the same order at every step:
        none is made to yield and fall behind the others.
        """
        waiters: list[asyncio.Future] = []

        async def step() -> None:
            future = asyncio.get_running_loop().create_future()
            waiters.append(future)
            await future

        async def stepped(data: Any) -> Any:
            for i in range(20):
                yield i
                await step()

        async def scenario(peer: Peer) -> list[Any]:
            for ident in range(1, 41):
                await peer.send(ident, "stepped")
            replies = [await peer.receive() for _ in range(40)]
            for _ in range(19):
                while len(waiters) < 40:
                    await asyncio.sleep(0)
                ready = waiters[:]
                del waiters[:]
                for future in ready:
                    future.set_result(None)
                replies += [await peer.receive() for _ in range(40)]
            return replies

        replies = serve_scenario(modern_calls({"stepped": stepped}), scenario)
        steps = [replies[i : i + 40] for i in range(0, 800, 40)]
        for number, replies_of_step in enumerate(steps):
            self.assertEqual({r["data"] for r in replies_of_step}, {number})
        orders = [[r["id"] for r in replies_of_step] for replies_of_step in steps[1:]]
        self.assertEqual(orders, [orders[0]] * len(orders))


class PackPartsTests(SynchronousTestCase):
    """
    Big bytes values of a reply's data go out as they are, the rest packed
    around them, and the whole is what msgpack would have packed.
    """

    def test_small_messages_packed_whole(self) -> None:
        for message in (
            {"id": 1, "data": {"content": "x", "finish_reason": None}},
            {"id": 2, "data": [b"a" * BIG_MESSAGE]},
            {"id": 3, "data": b"b" * BIG_MESSAGE},
            {"id": 4, "error": "no"},
        ):
            self.assertEqual(pack_parts(message), [msgpack.packb(message, use_bin_type=True)])

    def test_big_values_apart(self) -> None:
        first = bytes(range(256)) * (BIG_MESSAGE // 256)
        second = b"z" * (BIG_MESSAGE + 3)
        message = {
            "id": 7,
            "data": {"a": 1, "png": first, "small": b"s" * 10, "more": second, "t": "é"},
        }
        parts = pack_parts(message)
        self.assertEqual(b"".join(parts), msgpack.packb(message, use_bin_type=True))
        self.assertIs(parts[1], first)
        self.assertIs(parts[3], second)
        self.assertEqual(len(parts), 5)
        self.assertEqual(msgpack.unpackb(b"".join(parts)), message)
