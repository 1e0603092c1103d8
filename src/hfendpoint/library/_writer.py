"""
How the worker's replies go into the gateway socket: many small ones
(tokens) together, a big one (an image) alone and without a copy, and
never so fast that a cancel cannot be read meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hfendpoint.library._errors import Cancelled
from hfendpoint.library._packing import BIG_MESSAGE, pack_parts

log = logging.getLogger("hfendpoint")

#: A big message is written in pieces of this many bytes (see
#: L{ReplyWriter._write_in_pieces}).
WRITE_PIECE = 256 * 1024
#: A handler that sends this many replies in a row, with no other
#: handler's in between, is made to yield to the event loop.
YIELD_EVERY = 16
#: Replies of one round of the event loop written together at most.
WRITE_EVERY = 256


class ReplyWriter:
    """
    The writing side of the gateway socket.

    @ivar writer: the asyncio stream it writes to.
    @ivar closed: no message can be written any more; set when the socket
        failed or the connection is closing.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closed = False
        self._big_writes = asyncio.Lock()
        self._outgoing: list[bytes] = []
        self._round_open = False
        self._sender: Any = None
        self._sender_sends = 0

    async def send(self, message: dict[str, Any], sender: Any = None) -> None:
        """
        Write one whole message and wait until the socket takes it, so that a
        fast producer cannot queue unbounded replies.

        @param sender: what sends it (its request), to tell a handler that
            sends reply after reply from handlers that take turns.
        @raise Cancelled: if the connection is gone.
        """
        if self.closed:
            raise Cancelled("the connection to the gateway is closed")
        parts = pack_parts(message)
        try:
            if len(parts) == 1 and len(parts[0]) < BIG_MESSAGE and not self._big_writes.locked():
                self._queue(parts[0])
                await self.writer.drain()
            else:
                async with self._big_writes:
                    self._write_outgoing()
                    await self._write_in_pieces(parts)
        except OSError as error:
            self.lose(error)
            raise Cancelled("the connection to the gateway is lost") from error
        # drain() does not yield when the socket keeps up: a handler that
        # sends reply after reply without waiting for anything is made to
        # yield every YIELD_EVERY of them, so that it cannot starve the
        # reading of a cancel. Handlers that take turns (a model stepping
        # its streams) never are, so their order is kept step after step.
        if sender is self._sender:
            self._sender_sends += 1
            if self._sender_sends >= YIELD_EVERY:
                self._sender_sends = 0
                await asyncio.sleep(0)
        else:
            self._sender = sender
            self._sender_sends = 1

    def _queue(self, payload: bytes) -> None:
        """
        Write the first reply of a round of the event loop at once (a lone
        reply should not wait), and the others of the round together at
        its end, in one write: a model stepping a batch of streams sends
        each a token at the same time, and a write, a system call, per
        token would cost more than the token.
        """
        if self._round_open:
            self._outgoing.append(payload)
            if len(self._outgoing) >= WRITE_EVERY:
                self._write_outgoing()
            return
        self._round_open = True
        asyncio.get_running_loop().call_soon(self._end_round)
        if not self.closed:
            self.writer.write(payload)

    def _end_round(self) -> None:
        self._round_open = False
        self._write_outgoing()

    def _write_outgoing(self) -> None:
        if self._outgoing:
            data = b"".join(self._outgoing) if len(self._outgoing) > 1 else self._outgoing[0]
            self._outgoing = []
            if not self.closed:
                self.writer.write(data)

    async def _write_in_pieces(self, parts: list[bytes]) -> None:
        """
        Write a big message a piece at a time, each once the socket took the
        last. asyncio copies what a send leaves over into its buffer and
        moves the rest of that buffer after every partial send, so a whole
        image written at once is copied over and over; pieces of a view are
        not copied at all when the socket keeps up. Other messages wait
        (the caller holds C{_big_writes}) so that none lands in between.
        """
        transport = self.writer.transport
        low, high = transport.get_write_buffer_limits()
        # drain() then waits until the buffer is empty, not merely low.
        transport.set_write_buffer_limits(0, 0)
        try:
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), WRITE_PIECE):
                    self.writer.write(view[start : start + WRITE_PIECE])
                    await self.writer.drain()
        finally:
            transport.set_write_buffer_limits(high, low)

    def lose(self, error: BaseException) -> None:
        """
        The socket failed: say so once (every pending reply would fail the
        same way) and drop the connection.
        """
        if self.closed:
            return
        self.closed = True
        log.warning("Lost the connection to the gateway (%s); stopping.", error)
        self.writer.transport.abort()

    async def close(self) -> None:
        """
        Close the socket, dropping what a round still held: once the
        connection is closing, nobody reads the replies of what it stopped.
        """
        self.closed = True
        self._outgoing = []
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
