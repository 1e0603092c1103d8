"""
The gateway's end of the worker socket: MessagePack framing.

The wire is a bare concatenation of MessagePack values, so this protocol
only turns bytes into whole messages and back; what a message means is
the business of its L{IMessageReceiver} (the worker client).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import msgpack
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from hfendpoint.web._channel import HeldWrites
from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.wire import DEFAULT_MAX_MESSAGE_SIZE

READ_SIZE = 1024 * 1024
#: Replies handled between two flushes of what they wrote (see dataReceived).
FLUSH_EVERY = 256
#: Messages held for the worker before they are sent without waiting for
#: the end of the turn (see send).
SEND_EVERY = 32
#: Bytes of the worker's output quoted where it is not MessagePack: a
#: worker that prints text to its socket shows that text there.
QUOTE = 24


def pack(message: dict) -> bytes:
    """
    C{message} in MessagePack, or C{ValueError} when it is nested too deep
    for the other end to decode.

    MessagePack's decoders (msgpack's, which our worker library uses, as
    the original's did) stop at 1,024 levels, one level before its encoder
    does: a request nested exactly that deep (a client's JSON passed
    through to the worker) would be encoded here and break the worker's
    decoding of its whole socket. Encoded as the one item of an array,
    whose one-byte head is then dropped, a message is refused exactly
    when it is too deep to decode.
    """
    return msgpack.packb([message], use_bin_type=True)[1:]


class ProtocolViolation(Exception):
    """
    The worker sent something that is not a valid reply.
    """


class IMessageReceiver(Interface):
    """
    What a L{WorkerProtocol} reports to.
    """

    flusher = Attribute(
        "The TurnFlusher that the receiver completes its work on and that "
        "its protocol should hold its writes on, or None."
    )

    def connected(protocol: "WorkerProtocol") -> None:
        """
        The socket is up and C{protocol.send} may be used.
        """

    def message_received(message: dict, last: bool, size: int) -> None:
        """
        One whole, well-formed reply (a map with an integer C{id}).

        @param size: the bytes it took on the wire, for a receiver that
            bounds the memory its replies hold.

        @param last: whether it is the last whole reply of what has been
            read from the socket: nothing more is known to be coming in
            this turn of the reactor. With a C{flusher}, such a reply is
            handled as the turn's last work (L{TurnFlusher.run_last}).
        """

    def disconnected(protocol: "WorkerProtocol", reason: Failure) -> None:
        """
        The socket of C{protocol} is gone, either because the worker closed it or
        because it broke the protocol (C{reason} then wraps a
        L{ProtocolViolation}).
        """


class WorkerProtocol(Protocol):
    """
    Decodes replies with a streaming unpacker: messages may be split
    anywhere and many may arrive in one read.

    @ivar max_message_size: the largest message accepted from the worker;
        a larger one is a protocol violation rather than unbounded memory.
    """

    _log = Logger()

    def __init__(
        self,
        receiver: Any,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        flusher: Optional[TurnFlusher] = None,
    ) -> None:
        self._receiver = receiver
        self.max_message_size = max_message_size
        self._flusher = flusher
        self._unpacker = msgpack.Unpacker(
            raw=False, max_buffer_size=max_message_size, strict_map_key=False
        )
        self._violation: Failure | None = None
        self._closed = False
        self._close_waiters: list[Deferred] = []
        self._writes: Optional[HeldWrites] = None
        self._fed = 0
        self._dropped = 0
        self._first_dropped: Any = None

    def connectionMade(self) -> None:
        # Read up to a megabyte at a time (Twisted reads 64 KiB): a busy
        # worker's replies then come in a few big reads, so every stream
        # gets several tokens per write, and a large image costs 4 reads
        # instead of 64.
        self.transport.bufferSize = READ_SIZE
        if self._flusher is not None:
            self._writes = HeldWrites(self.transport, self._flusher)
        self._receiver.connected(self)

    def send(self, message: dict, alone: bool = False) -> None:
        """
        Write one message, at the end of the reactor's turn together with
        the others of the turn; the transport buffers it if the worker is
        slow.

        @param alone: no other call is in flight: the message leaves at
            once, as nothing else would join it.
        @raise ValueError: for a message nested too deep for the worker's
            decoder (the request is refused, the worker never sees it).
        """
        data = pack(message)
        writes = self._writes
        if writes is None:
            self.transport.write(data)
            return
        writes.write(data)
        if alone:
            writes.flush_now()
        elif writes.held() >= SEND_EVERY:
            # A turn that reads a thousand requests at once (streams that
            # all start together) is long: the worker starts on the first
            # ones while the gateway reads the others.
            writes.flush_now()

    def flush_now(self) -> None:
        """
        Send what is held.
        """
        if self._writes is not None:
            self._writes.flush_now()

    def dataReceived(self, data: bytes) -> None:
        if self._violation is not None:
            return
        flusher = self._flusher
        deliver = self._receiver.message_received
        try:
            unpacker = self._unpacker
            unpacker.feed(data)
            self._fed += len(data)
            fed = self._fed
            count = 0
            start = unpacker.tell()
            for message in unpacker:
                end = unpacker.tell()
                size = end - start
                start = end
                # MessagePack gives exact types: type() is enough, and
                # leaves out true and false, which are ints to isinstance.
                ident = message.get("id") if type(message) is dict else None
                if type(ident) is not int:
                    self._drop(message)
                elif end != fed:
                    deliver(message, False, size)
                elif flusher is None:
                    deliver(message, True, size)
                else:
                    # The last reply read is the last work of the turn.
                    flusher.run_last(deliver, message, True, size)
                if flusher is None:
                    continue
                count += 1
                if count == FLUSH_EVERY:
                    # A read of thousands of tokens (a model's step over
                    # thousands of streams) is long: the streams served
                    # first get their token now rather than after the last.
                    count = 0
                    flusher.flush()
        except msgpack.BufferFull:
            self._report_dropped()
            self._violate(
                f"a message from the worker exceeds {self.max_message_size} bytes"
            )
        except (msgpack.UnpackException, ValueError) as e:
            self._report_dropped()
            self._violate(self._malformed(e, data))
        else:
            self._report_dropped()

    def _report_dropped(self) -> None:
        if not self._dropped:
            return
        self._log.warn(
            "Dropping {count} message(s) from the worker that are not replies, "
            "the first: {message!r:.200}",
            count=self._dropped,
            message=self._first_dropped,
        )
        self._dropped = 0
        self._first_dropped = None

    def _malformed(self, error: Exception, data: bytes) -> str:
        """
        Say what was wrong and where: msgpack's own messages are often
        empty (a byte that begins no value raises a bare C{FormatError}).
        """
        offset = self._unpacker.tell()
        index = offset - (self._fed - len(data))
        quote = ""
        if isinstance(error, UnicodeDecodeError):
            what = f"the string ending there is not UTF-8 ({error.reason})"
        elif isinstance(error, msgpack.StackError):
            what = "values are nested deeper than MessagePack readers allow"
        elif isinstance(error, msgpack.FormatError):
            if 0 <= index < len(data):
                what = f"byte 0x{data[index]:02x} begins no MessagePack value"
                quote = f" (there: {data[index:index + QUOTE]!r})"
            else:
                what = "a byte that begins no MessagePack value"
        else:
            what = str(error) or type(error).__name__
        return f"the worker sent malformed MessagePack at byte {offset} of its output: {what}{quote}"

    def _drop(self, message: Any) -> None:
        """
        A message that is not a reply (a map with an integer C{id}) is
        dropped, and said once per read: text printed to the socket by
        mistake is valid MessagePack, one small integer per ASCII byte.
        """
        if not self._dropped:
            self._first_dropped = message
        self._dropped += 1

    def _violate(self, why: str) -> None:
        self._log.error("Worker protocol violation: {why}; closing the socket", why=why)
        self._violation = Failure(ProtocolViolation(why))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._writes is not None:
            self._writes.drop()
        self._receiver.disconnected(self, self._violation or reason)
        self._closed = True
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    def when_closed(self) -> Deferred:
        """
        @return: a new Deferred firing once the socket is closed.
        """
        d: Deferred = Deferred()
        if self._closed:
            d.callback(None)
        else:
            self._close_waiters.append(d)
        return d


class WorkerProtocolFactory(Factory):
    """
    Builds the one protocol for an adopted worker socket, with
    L{WorkerProtocol}'s own arguments (C{max_message_size}, C{flusher}).
    """

    def __init__(self, receiver: Any, **options: Any) -> None:
        self._build = partial(WorkerProtocol, receiver, **options)

    def buildProtocol(self, addr: Any) -> WorkerProtocol:
        return self._build()
