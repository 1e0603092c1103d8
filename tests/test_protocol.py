"""
Framing of the worker socket, fed in every split.
"""

import json
import socket

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from hfendpoint.web import _channel as channel
from hfendpoint.backend._protocol import (
    pack,
    FLUSH_EVERY,
    IMessageReceiver,
    ProtocolViolation,
    SEND_EVERY,
    WorkerProtocol,
    WorkerProtocolFactory,
)
from hfendpoint.web._coalescing import TurnFlusher


def reactor_of():
    from twisted.internet import reactor

    return reactor


async def receive_messages(sock, count):
    """
    Read C{count} messages from the worker's end of the socket, letting the
    reactor run between two reads: on Twisted's public path, the transport
    sends what it was given when the reactor finds the socket writable.
    """
    sock.setblocking(False)
    unpacker = msgpack.Unpacker(raw=False)
    received = []
    while len(received) < count:
        try:
            unpacker.feed(sock.recv(65536))
        except BlockingIOError:
            await deferLater(reactor_of(), 0, lambda: None)
        received.extend(unpacker)
    return received



@implementer(IMessageReceiver)
class Recorder:
    flusher = None

    def __init__(self):
        self.messages = []
        self.lasts = []
        self.sizes = []
        self.lost = []
        self.protocol = None

    def connected(self, protocol):
        self.protocol = protocol

    def message_received(self, message, last, size):
        self.messages.append(message)
        self.lasts.append(last)
        self.sizes.append(size)

    def disconnected(self, protocol, reason):
        self.lost.append(reason)


REPLIES = [
    {"id": 1, "data": {"content": "Hel", "finish_reason": None}},
    {"id": 2, "data": {"png": b"\x89PNG\r\n\x1a\n" + bytes(range(256))}},
    {"id": 1, "data": {"content": "lo", "finish_reason": "stop"}},
    {"id": 3, "error": "boom"},
    {"id": 4, "data": {"embeddings": [[0.5, -0.25], None]}},
]
WIRE = b"".join(msgpack.packb(m, use_bin_type=True) for m in REPLIES)


def connect(max_message_size=None):
    receiver = Recorder()
    protocol = WorkerProtocol(receiver) if max_message_size is None else WorkerProtocol(receiver, max_message_size)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return receiver, protocol, transport


class FramingTests(SynchronousTestCase):
    def test_receiver_interface(self):
        verifyObject(IMessageReceiver, Recorder())

    def test_connected(self):
        receiver, protocol, _ = connect()
        self.assertIs(receiver.protocol, protocol)

    def test_one_read(self):
        receiver, protocol, _ = connect()
        protocol.dataReceived(WIRE)
        self.assertEqual(receiver.messages, REPLIES)

    def test_byte_by_byte(self):
        receiver, protocol, _ = connect()
        for i in range(len(WIRE)):
            protocol.dataReceived(WIRE[i : i + 1])
        self.assertEqual(receiver.messages, REPLIES)

    def test_every_single_split(self):
        for cut in range(1, len(WIRE)):
            receiver, protocol, _ = connect()
            protocol.dataReceived(WIRE[:cut])
            protocol.dataReceived(WIRE[cut:])
            self.assertEqual(receiver.messages, REPLIES, f"split at {cut}")

    @given(st.lists(st.integers(min_value=1, max_value=len(WIRE) - 1), max_size=12))
    def test_any_splits(self, cuts):
        receiver, protocol, _ = connect()
        edges = [0, *sorted(set(cuts)), len(WIRE)]
        for start, end in zip(edges, edges[1:]):
            protocol.dataReceived(WIRE[start:end])
        self.assertEqual(receiver.messages, REPLIES)

    def test_send(self):
        _, protocol, transport = connect()
        protocol.send({"id": 7, "name": "tokenize", "data": {"input": ["a"]}})
        protocol.send({"id": 8, "name": "images_editions", "data": {"image": b"\x00\x01"}})
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(transport.value())
        first, second = list(unpacker)
        self.assertEqual(first, {"id": 7, "name": "tokenize", "data": {"input": ["a"]}})
        # Binary payloads go as msgpack bin, as the original's workers expect.
        self.assertEqual(transport.value()[-3:], b"\xc4\x02\x00\x01"[-3:])
        self.assertIsInstance(second["data"]["image"], bytes)

    def test_not_a_reply_is_dropped(self):
        receiver, protocol, transport = connect()
        protocol.dataReceived(msgpack.packb([1, 2]) + msgpack.packb({"id": "x"}) + msgpack.packb({"id": 5, "data": 1}))
        self.assertEqual(receiver.messages, [{"id": 5, "data": 1}])
        self.assertFalse(transport.disconnecting)

    def test_malformed_bytes(self):
        receiver, protocol, transport = connect()
        protocol.dataReceived(msgpack.packb({"id": 1, "data": 1}) + b"\xc1garbage")
        self.assertEqual(receiver.messages, [{"id": 1, "data": 1}])
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(Exception("closed")))
        [reason] = receiver.lost
        self.assertTrue(reason.check(ProtocolViolation))
        self.assertIn("malformed", str(reason.value))

    def test_oversized_message(self):
        receiver, protocol, transport = connect(max_message_size=1024)
        protocol.dataReceived(msgpack.packb({"id": 1, "data": b"x" * 4096}, use_bin_type=True))
        self.assertEqual(receiver.messages, [])
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertIn("exceeds 1024 bytes", str(receiver.lost[0].value))

    def test_nothing_after_violation(self):
        receiver, protocol, _ = connect()
        protocol.dataReceived(b"\xc1")
        protocol.dataReceived(msgpack.packb({"id": 1, "data": 1}))
        self.assertEqual(receiver.messages, [])

    def test_when_closed(self):
        receiver, protocol, _ = connect()
        before = protocol.when_closed()
        self.assertNoResult(before)
        protocol.connectionLost(Failure(Exception("eof")))
        self.assertIsNone(self.successResultOf(before))
        self.assertIsNone(self.successResultOf(protocol.when_closed()))
        self.assertEqual(len(receiver.lost), 1)


class CountingFlusher:
    def __init__(self, receiver):
        self.receiver = receiver
        self.flushed_at = []

    def flush(self):
        self.flushed_at.append(len(self.receiver.messages))

    def run_last(self, function, *args):
        function(*args)


class FlushTests(SynchronousTestCase):
    def test_long_reads_flushed_as_they_are_handled(self):
        """
        The writes of a read of many replies are flushed every
        FLUSH_EVERY replies, and every reply is handled, in order.
        """
        receiver = Recorder()
        flusher = CountingFlusher(receiver)
        protocol = WorkerProtocol(receiver, flusher=flusher)
        protocol.makeConnection(StringTransport())
        count = 2 * FLUSH_EVERY + 5
        protocol.dataReceived(
            b"".join(msgpack.packb({"id": i, "data": i}) for i in range(count))
        )
        self.assertEqual([m["id"] for m in receiver.messages], list(range(count)))
        self.assertEqual(flusher.flushed_at, [FLUSH_EVERY, 2 * FLUSH_EVERY])

    def test_last_reply_of_what_was_read(self):
        """
        The receiver is told which reply is the last one of what has been
        read; a reply cut short by the read is more to come.
        """
        for flusher in (None, CountingFlusher(Recorder())):
            receiver = Recorder()
            protocol = WorkerProtocol(receiver, flusher=flusher)
            protocol.makeConnection(StringTransport())
            wire = [msgpack.packb({"id": i, "data": "x" * 10}) for i in range(4)]
            protocol.dataReceived(wire[0] + wire[1])
            protocol.dataReceived(wire[2] + wire[3][:5])
            self.assertEqual(receiver.lasts, [False, True, False])
            protocol.dataReceived(wire[3][5:])
            self.assertEqual([m["id"] for m in receiver.messages], [0, 1, 2, 3])
            self.assertEqual(receiver.lasts, [False, True, False, True])


class HeldWritesTests(TestCase):
    """
    On a real socket, what the gateway writes to the worker in a turn
    leaves in one send at the end of the turn.
    """

    def setUp(self):
        self.flusher = TurnFlusher(reactor_of())

    def connect(self, receiver=None):
        from twisted.internet import reactor

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        receiver = receiver or Recorder()
        transport = reactor.adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX, WorkerProtocolFactory(receiver, flusher=self.flusher)
        )
        ours.close()
        self.addCleanup(transport.abortConnection)
        sends = []
        real = channel.send
        self.patch(channel, "send", lambda t, data: (sends.append(data), real(t, data)))
        return transport.protocol, transport, theirs, sends

    async def test_a_lone_call_leaves_at_once(self):
        """
        A call made while no other is in flight is sent at once; one made
        while another is in flight waits for the end of the turn, as usual.
        """
        from hfendpoint.backend._client import WorkerClient

        reactor = reactor_of()
        client = WorkerClient(reactor, flusher=self.flusher)
        _, _, _, sends = self.connect(client)
        calls = [client.request("chat_completions", {"n": 1}, lambda reply: True)]
        self.assertEqual(len(sends), 1)
        calls.append(client.request("chat_completions", {"n": 2}, lambda reply: True))
        self.assertEqual(len(sends), 1)
        await deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(sends), 2)
        for call in calls:
            call.addErrback(lambda f: None)
            call.cancel()

    async def test_writes_of_a_turn_leave_together_in_order(self):
        protocol, _, theirs, sends = self.connect()
        messages = [{"id": i, "name": "chat_completions", "data": {"n": i}} for i in range(3)]
        for message in messages:
            protocol.send(message)
        self.assertEqual(sends, [])
        await deferLater(reactor_of(), 0, lambda: None)
        self.assertEqual(len(sends), 1)
        self.assertEqual(await receive_messages(theirs, len(messages)), messages)

    async def test_many_in_a_turn_leave_without_waiting_for_its_end(self):
        """
        Every SEND_EVERY messages held are sent at once, the rest at the
        end of the turn; all arrive, in order.
        """
        protocol, _, theirs, sends = self.connect()
        count = 2 * SEND_EVERY + 3
        messages = [{"id": i, "name": "chat_completions", "data": {}} for i in range(count)]
        for message in messages:
            protocol.send(message)
        self.assertEqual(len(sends), 2)
        await deferLater(reactor_of(), 0, lambda: None)
        self.assertEqual(len(sends), 3)
        self.assertEqual(await receive_messages(theirs, count), messages)

    async def test_closing_sends_what_is_held_first(self):
        from hfendpoint.backend._process import WorkerProcess

        protocol, transport, theirs, sends = self.connect()
        protocol.send({"id": 1, "name": "embeddings", "data": {}})
        worker = WorkerProcess.__new__(WorkerProcess)
        worker._connection, worker._socket_protocol = transport, protocol
        worker.close_socket()
        self.assertEqual(len(sends), 1)
        await protocol.when_closed()
        theirs.settimeout(5)
        received = b""
        while True:
            data = theirs.recv(65536)
            if not data:
                break
            received += data
        self.assertEqual(msgpack.unpackb(received), {"id": 1, "name": "embeddings", "data": {}})


class DepthTests(SynchronousTestCase):
    """
    A message nested too deep for the worker's decoder is refused by the
    gateway, never sent: one that deep used to break the worker's decoding
    of its whole socket.
    """

    def message(self, levels):
        value = []
        for _ in range(levels):
            value = [value]
        return {"id": 1, "name": "chat_completions", "data": {"extra": value}}

    def test_every_packed_message_decodes(self):
        refused = 0
        for levels in range(1000, 1030):
            try:
                data = pack(self.message(levels))
            except ValueError:
                refused += 1
                continue
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(data)
            self.assertEqual(next(unpacker)["id"], 1)
        self.assertGreater(refused, 0)

    def test_same_bytes_as_packb(self):
        message = {"id": 7, "name": "embeddings", "data": {"input": [[1, 2, 3]], "b": b"\x00" * 300}}
        self.assertEqual(pack(message), msgpack.packb(message, use_bin_type=True))


class DeepRequestTests(TestCase):
    """
    Through the gateway: a request whose passed-through field is that deep
    is a 400, and the worker goes on serving.
    """

    async def test_refused_and_the_worker_serves_on(self):
        from .gateway import start_memory_gateway

        memory = start_memory_gateway(self)
        body = (
            b'{"messages":[{"role":"user","content":"x"}],"zzz":'
            + b"[" * 1023 + b"]" * 1023 + b"}"
        )
        response = await memory.http.post(
            memory.url + "/v1/chat/completions", data=body, headers={b"content-type": [b"application/json"]}
        )
        answer = json.loads(await response.content())
        self.assertEqual(response.code, 400, answer)
        error = answer["error"]
        self.assertIn("cannot be sent to the worker", error["message"])
        response = await memory.http.post(
            memory.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
        )
        self.assertEqual(response.code, 200, await response.content())
