"""
The worker client: ids, routing by id, streams, errors, timeouts and
cancellation, over an in-memory transport and clock.
"""

import msgpack
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from hfendpoint.backend._client import WorkerClient, WorkerInfo
from hfendpoint.wire import CANCEL
from hfendpoint.errors import OpenAIError
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.backend._protocol import IMessageReceiver, WorkerProtocol
from hfendpoint.testing import FakeWorkerClient
from hfendpoint.web._coalescing import TurnFlusher


def sent(transport):
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(transport.value())
    return list(unpacker)


class Harness:
    def __init__(self, reply_timeout=300.0):
        self.clock = Clock()
        self.client = WorkerClient(self.clock, reply_timeout=reply_timeout)
        self.protocol = WorkerProtocol(self.client)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def reply(self, **message):
        self.protocol.dataReceived(msgpack.packb(message, use_bin_type=True))

    def lose(self, reason=None):
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class NothingToFlush:
    def flush_now(self):
        pass


class EndOfTurnTests(SynchronousTestCase):
    """
    With a flusher, a call ended by a reply that is not the last one read
    completes at the end of the turn; the last one read, at once.
    """

    def setUp(self):
        self.clock = Clock()
        self.flusher = flusher = TurnFlusher(self.clock)
        self.client = WorkerClient(self.clock, flusher=flusher)
        self.protocol = WorkerProtocol(self.client, flusher=flusher)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def read(self, *messages):
        self.protocol.dataReceived(b"".join(msgpack.packb(m, use_bin_type=True) for m in messages))

    def test_ended_mid_read_completes_at_the_end_of_the_turn(self):
        first = self.client.call("a", {})
        second = self.client.call("b", {})
        self.read({"id": 1, "data": "one"}, {"id": 2, "data": "two"})
        self.assertEqual(self.client.pending_count(), 0)
        self.assertNoResult(first)
        self.assertEqual(self.successResultOf(second), "two")
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_last_reply_read_is_the_last_work_of_the_turn(self):
        """
        What the last reply read completes runs as the turn's last work
        (L{TurnFlusher.run_last}): a write it leaves alone may go at once.
        What an earlier reply completes, at the end of the turn, may not.
        """
        seen = []
        first = self.client.call("a", {})
        second = self.client.call("b", {})
        third = self.client.call("c", {})
        self.clock.advance(0)
        item = NothingToFlush()
        self.flusher.add(item)
        for name, call in (("a", first), ("b", second)):
            call.addCallback(lambda _, name=name: seen.append((name, self.flusher.alone(item))))
        third.addErrback(lambda _: seen.append(("c", self.flusher.alone(item))))
        self.read({"id": 1, "data": "one"}, {"id": 2, "data": "two"})
        self.assertEqual(seen, [("b", True)])
        self.read({"id": 3, "error": "boom"})
        self.assertEqual(seen, [("b", True), ("c", True)])
        self.assertFalse(self.flusher.alone(item))
        self.clock.advance(0)
        self.assertEqual(seen, [("b", True), ("c", True), ("a", False)])

    def test_calls_leave_at_the_end_of_the_turn_unless_alone(self):
        """
        A call made while no other is in flight is written at once; the
        others of the turn are written together at its end.
        """
        self.client.call("a", {})
        self.assertEqual(len(sent(self.transport)), 1)
        self.client.call("b", {})
        self.client.call("c", {})
        self.assertEqual(len(sent(self.transport)), 1)
        self.clock.advance(0)
        self.assertEqual([m["name"] for m in sent(self.transport)], ["a", "b", "c"])

    def test_cancelled_before_the_end_of_the_turn(self):
        first = self.client.call("a", {})
        self.client.call("b", {})
        self.read({"id": 1, "data": "one"}, {"id": 2, "data": "two"})
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InterfaceTests(SynchronousTestCase):
    def test_client(self):
        client = WorkerClient(Clock())
        verifyObject(IWorkerClient, client)
        verifyObject(IMessageReceiver, client)

    def test_fake(self):
        verifyObject(IWorkerClient, FakeWorkerClient())


class RequestTests(SynchronousTestCase):
    def test_ids_start_at_one_and_increase(self):
        h = Harness()
        h.client.call("a", {})
        h.client.call("b", {"x": 1})
        self.assertEqual(
            sent(h.transport),
            [{"id": 1, "name": "a", "data": {}}, {"id": 2, "name": "b", "data": {"x": 1}}],
        )

    def test_single_reply(self):
        h = Harness()
        d = h.client.call("tokenize", {"input": ["a"]})
        self.assertNoResult(d)
        h.reply(id=1, data={"tokens": [[1]]})
        self.assertEqual(self.successResultOf(d), {"tokens": [[1]]})
        self.assertEqual(h.client.pending_count(), 0)

    def test_interleaved_replies_are_routed_by_id(self):
        h = Harness()
        got = {1: [], 2: []}

        def collect(ident):
            def on_reply(data):
                got[ident].append(data)
                return data.get("finish_reason") is not None

            return on_reply

        d1 = h.client.request("chat_completions", {}, collect(1))
        d2 = h.client.request("chat_completions", {}, collect(2))
        h.reply(id=2, data={"content": "b1", "finish_reason": None})
        h.reply(id=1, data={"content": "a1", "finish_reason": None})
        h.reply(id=2, data={"content": "b2", "finish_reason": "stop"})
        self.assertEqual(self.successResultOf(d2), None)
        self.assertNoResult(d1)
        h.reply(id=1, data={"content": "a2", "finish_reason": "length"})
        self.successResultOf(d1)
        self.assertEqual([c["content"] for c in got[1]], ["a1", "a2"])
        self.assertEqual([c["content"] for c in got[2]], ["b1", "b2"])
        self.assertEqual(h.client.pending_count(), 0)

    def test_error_reply(self):
        h = Harness()
        d = h.client.call("embeddings", {})
        h.reply(id=1, error="out of memory")
        error = self.failureResultOf(d, OpenAIError).value
        self.assertEqual((error.status, error.type, error.message), (500, "api_error", "out of memory"))
        self.assertEqual(h.client.pending_count(), 0)

    def test_error_reply_blaming_the_request(self):
        """
        A worker's 4xx status makes a client error; anything else a 500.
        """
        h = Harness()
        d = h.client.call("embeddings", {})
        h.reply(id=1, error="the prompt is too long", status=400)
        error = self.failureResultOf(d, OpenAIError).value
        self.assertEqual(
            (error.status, error.type, error.message), (400, "invalid_request_error", "the prompt is too long")
        )
        for ident, status in enumerate((500, 302, "400", True), 2):
            d = h.client.call("embeddings", {})
            h.reply(id=ident, error="x", status=status)
            self.assertEqual(self.failureResultOf(d, OpenAIError).value.status, 500, status)

    def test_error_ends_a_stream(self):
        h = Harness()
        chunks = []
        d = h.client.request("chat_completions", {}, lambda c: chunks.append(c) and False)
        h.reply(id=1, data={"content": "a", "finish_reason": None})
        h.reply(id=1, error="boom")
        self.assertEqual(self.failureResultOf(d, OpenAIError).value.status, 500)
        self.assertEqual(len(chunks), 1)

    def test_unknown_id_is_dropped(self):
        h = Harness()
        d = h.client.call("a", {})
        h.reply(id=99, data={"x": 1})
        h.reply(id=1, data={"ok": True})
        self.assertEqual(self.successResultOf(d), {"ok": True})
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_reply_without_data_or_error(self):
        h = Harness()
        d = h.client.call("a", {})
        h.reply(id=1, something="else")
        self.assertEqual(self.failureResultOf(d, OpenAIError).value.status, 502)
        self.assertEqual(h.client.pending_count(), 0)

    def test_unusable_reply(self):
        """
        A reply the translator cannot use fails that call alone, cleanly.
        """
        h = Harness()

        def on_reply(data):
            raise KeyError("content")

        d = h.client.request("chat_completions", {}, on_reply)
        other = h.client.call("tokenize", {})
        h.reply(id=1, data={})
        self.assertEqual(self.failureResultOf(d, OpenAIError).value.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        h.reply(id=2, data={"tokens": []})
        self.assertEqual(self.successResultOf(other), {"tokens": []})

    def test_unsendable_data(self):
        h = Harness()
        d = h.client.call("a", {"big": 2**70})
        self.assertEqual(self.failureResultOf(d, OpenAIError).value.status, 400)
        self.assertEqual(h.client.pending_count(), 0)

    def test_no_worker(self):
        client = WorkerClient(Clock())
        error = self.failureResultOf(client.call("a", {}), OpenAIError).value
        self.assertEqual(error.status, 503)


class FailureTests(SynchronousTestCase):
    def test_worker_exit_fails_every_pending_call(self):
        h = Harness()
        calls = [h.client.call("a", {}) for _ in range(5)]
        stream = h.client.request("chat_completions", {}, lambda c: False)
        h.reply(id=6, data={"content": "x"})
        h.lose()
        for d in [*calls, stream]:
            error = self.failureResultOf(d, OpenAIError).value
            self.assertEqual((error.status, error.type), (502, "api_error"))
            self.assertIn("exited", error.message)
        self.assertEqual(h.client.pending_count(), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        # With no worker, new calls fail at once.
        self.assertEqual(self.failureResultOf(h.client.call("a", {}), OpenAIError).value.status, 503)

    def test_malformed_bytes_fail_every_pending_call(self):
        h = Harness()
        d = h.client.call("a", {})
        h.protocol.dataReceived(b"\xc1")
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost(Failure(ConnectionDone()))
        error = self.failureResultOf(d, OpenAIError).value
        self.assertEqual(error.status, 502)
        self.assertIn("malformed", error.message)

    def test_old_socket_closing_late_spares_the_new_worker(self):
        h = Harness()
        old = h.protocol
        new = WorkerProtocol(h.client)
        new_transport = StringTransport()
        new.makeConnection(new_transport)
        d = h.client.call("a", {})
        old.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        new.dataReceived(msgpack.packb({"id": 1, "data": "ok"}))
        self.assertEqual(self.successResultOf(d), "ok")


class TimeoutTests(SynchronousTestCase):
    def test_no_reply_in_time(self):
        h = Harness(reply_timeout=10)
        h.client.info = WorkerInfo(cancel=True)
        d = h.client.call("a", {})
        h.clock.advance(9.9)
        self.assertNoResult(d)
        h.clock.advance(0.2)
        error = self.failureResultOf(d, OpenAIError).value
        self.assertEqual((error.status, error.code), (504, "timeout"))
        self.assertEqual(sent(h.transport)[-1], {"id": 2, "name": CANCEL, "data": {"id": 1}})
        self.assertEqual(h.client.pending_count(), 0)

    def test_each_reply_resets_the_timer(self):
        h = Harness(reply_timeout=10)
        d = h.client.request("chat_completions", {}, lambda c: c.get("finish_reason") is not None)
        for _ in range(5):
            h.clock.advance(8)
            h.reply(id=1, data={"content": "x", "finish_reason": None})
        self.assertNoResult(d)
        h.reply(id=1, data={"content": "", "finish_reason": "stop"})
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_late_reply_after_timeout_is_dropped(self):
        h = Harness(reply_timeout=1)
        d = h.client.call("a", {})
        h.clock.advance(2)
        self.failureResultOf(d, OpenAIError)
        h.reply(id=1, data="late")
        self.assertEqual(h.client.pending_count(), 0)


class CancelTests(SynchronousTestCase):
    def test_cancel_tells_a_worker_that_understands(self):
        h = Harness()
        h.client.info = WorkerInfo(cancel=True)
        d = h.client.request("chat_completions", {}, lambda c: False)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(sent(h.transport)[-1], {"id": 2, "name": CANCEL, "data": {"id": 1}})
        self.assertEqual(h.client.pending_count(), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        logged = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        h.reply(id=1, data={"content": "late"})
        h.reply(id=77, data={"content": "stray"})
        warnings = [e for e in logged if "no request waits" in e.get("log_format", "")]
        self.assertEqual([e["id"] for e in warnings], [77])

    def test_cancel_is_not_sent_to_an_older_worker(self):
        h = Harness()
        d = h.client.call("a", {})
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(sent(h.transport)), 1)
        self.assertEqual(h.client.pending_count(), 0)


class WorkerInfoTests(SynchronousTestCase):
    def test_from_reply(self):
        info = WorkerInfo.from_reply(
            {"protocol": 2, "calls": ["tokenize", "embeddings", 3], "model": "m", "cancel": True, "features": ["chat_n", 1]}
        )
        self.assertEqual(info.features, frozenset({"chat_n"}))
        self.assertEqual(info.calls, frozenset({"tokenize", "embeddings"}))
        self.assertEqual((info.model, info.cancel, info.protocol), ("m", True, 2))
        self.assertTrue(info.serves("tokenize"))
        self.assertFalse(info.serves("chat_completions"))

    def test_lenient(self):
        for reply in (None, "x", {}, {"calls": "nope", "model": 5, "cancel": "yes"}):
            info = WorkerInfo.from_reply(reply)
            self.assertIsNone(info.calls)
            self.assertIsNone(info.model)
            self.assertFalse(info.cancel)
            self.assertTrue(info.serves("anything"))


class MoreTimeoutTests(SynchronousTestCase):
    def harness(self, **kwargs):
        h = Harness()
        h.client = WorkerClient(h.clock, **kwargs)
        h.protocol = WorkerProtocol(h.client)
        h.transport = StringTransport()
        h.protocol.makeConnection(h.transport)
        return h

    def test_first_reply_timeout(self):
        h = self.harness(reply_timeout=100, first_reply_timeout=5)
        d = h.client.request("chat_completions", {}, lambda c: False)
        h.clock.advance(5)
        error = self.failureResultOf(d, OpenAIError).value
        self.assertEqual(error.status, 504)
        self.assertIn("start replying within 5 seconds", error.message)

    def test_first_reply_timeout_does_not_apply_later(self):
        h = self.harness(reply_timeout=100, first_reply_timeout=5)
        d = h.client.request("chat_completions", {}, lambda c: False)
        h.clock.advance(4)
        h.reply(id=1, data={"content": "a"})
        h.clock.advance(50)
        self.assertNoResult(d)
        h.clock.advance(50)
        self.assertIn("reply within 100 seconds", self.failureResultOf(d, OpenAIError).value.message)

    def test_request_timeout_bounds_a_whole_stream(self):
        h = self.harness(reply_timeout=10, request_timeout=25)
        d = h.client.request("chat_completions", {}, lambda c: False)
        for _ in range(3):
            h.clock.advance(8)
            h.reply(id=1, data={"content": "a"})
        self.assertNoResult(d)
        h.clock.advance(1)
        error = self.failureResultOf(d, OpenAIError).value
        self.assertEqual(error.status, 504)
        self.assertIn("finish the request within 25 seconds", error.message)
        self.assertEqual(h.client.pending_count(), 0)
