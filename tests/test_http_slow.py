"""
Clients that drip a request to hold a connection: the whole head must
arrive within C{request_head_timeout} seconds of its first byte, and the
body at C{min_body_rate} bytes a second once C{body_rate_grace} seconds
have passed; past either, a 408 and the connection closed. Time is the
gateway's clock in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from hfendpoint.service._cli import build_parser, listen_descriptions
from hfendpoint.service._options import build_config
from hfendpoint.service._tap import Options
from hfendpoint.testing import demo_handlers
from hfendpoint.web import GatewaySite
from tests.test_http_framing import PIPELINED, HTTPTestCase, RawClient

HEAD = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"


def record_timers(testCase: Any) -> list:
    """
    The names of the functions the gateway's clock is asked to call
    later, from now on in C{testCase}.
    """
    made: list = []
    call_later = testCase.memory.reactor.callLater

    def recording(delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(getattr(func, "__name__", None))
        return call_later(delay, func, *args, **kwargs)

    testCase.patch(testCase.memory.reactor, "callLater", recording)
    return made


class SlowHeadTests(HTTPTestCase):
    """
    The default: 60 s for a head, whatever the client sends meanwhile;
    the idle timeout (75 s) starts again on every byte and alone never
    closed a client sending one byte every 4 s.
    """

    def drip(self, client, data: bytes, every: float) -> None:
        for i in range(len(data)):
            if client.closed:
                return
            client.send(data[i : i + 1])
            self.memory.advance(every)

    def test_head_dripped_is_cut_off_after_60_seconds(self) -> None:
        client = self.client()
        client.send(HEAD[:1])
        self.memory.advance(59)
        self.assertEqual(client.responses(), [])
        self.assertFalse(client.closed)
        client.send(HEAD[1:2])
        self.memory.advance(1)
        self.assertRefusedAndClosed(client, 408, b"Request Timeout", "request_timeout")

    def test_one_byte_every_4_seconds(self) -> None:
        client = self.client()
        self.drip(client, HEAD, every=4.0)
        self.assertRefusedAndClosed(client, 408, b"Request Timeout", "request_timeout")
        self.assertLessEqual(self.memory.reactor.seconds(), 64.0)

    def test_a_head_in_time_is_served_and_the_deadline_ends(self) -> None:
        """
        A head that arrives in time is served; the connection then waits
        for the next request under the idle timeout only, and the next
        head has its own 60 s.
        """
        client = self.client()
        self.drip(client, HEAD, every=0.5)
        self.assertEqual([response[0] for response in client.responses()], [200])
        self.memory.advance(70)
        self.assertFalse(client.closed)
        client.send(b"\r\n")
        self.memory.advance(4)
        client.send(HEAD)
        self.assertEqual([response[0] for response in client.responses()], [200, 200])
        client.send(HEAD[:10])
        self.memory.advance(60)
        self.assertEqual(client.responses()[-1][0], 408)
        self.assertTrue(client.closed)


class HeadThenSlowTests(HTTPTestCase):
    def test_refusal_after_a_head_request_has_its_body(self) -> None:
        """
        The 408 of a request whose line has not come yet has a body, even
        when the request before it on the connection was a C{HEAD}.
        """
        client = self.client()
        client.send(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200 OK", client.transport.value())
        client.send(b"G")
        self.memory.advance(60)
        self.assertTrue(client.closed)
        _, _, refusal = client.transport.value().partition(b"HTTP/1.1 408 Request Timeout")
        _, _, body = refusal.partition(b"\r\n\r\n")
        self.assertIn(b"request_timeout", body)


class DeadlineTimerTests(HTTPTestCase):
    """
    A deadline costs a timer only when its head or body spans reads.
    """

    def deadlines(self) -> list:
        names = {"_head_too_slow", "_check_body_rate"}
        return [call for call in self.memory.reactor.getDelayedCalls() if call.func.__name__ in names]

    def test_whole_request_in_one_read(self) -> None:
        client = self.client()
        made = record_timers(self)
        body = padded_body(200)
        client.send(post_head(len(body)) + body)
        self.assertNotIn("_head_too_slow", made)
        self.assertNotIn("_check_body_rate", made)
        self.assertEqual(self.deadlines(), [])
        self.assertEqual([response[0] for response in client.responses()], [200])

    def test_split_head_then_split_body(self) -> None:
        client = self.client()
        body = padded_body(200)
        head = post_head(len(body))
        client.send(head[:5])
        self.assertEqual([call.func.__name__ for call in self.deadlines()], ["_head_too_slow"])
        self.memory.advance(30)
        client.send(head[5:] + body[:10])
        self.assertEqual([call.func.__name__ for call in self.deadlines()], ["_check_body_rate"])
        self.assertEqual(self.deadlines()[0].getTime(), self.memory.reactor.seconds() + 20)
        client.send(body[10:])
        self.assertEqual(self.deadlines(), [])
        self.assertEqual([response[0] for response in client.responses()], [200])


class IdleTests(HTTPTestCase):
    """
    A connection that sends nothing for C{idle_timeout} seconds while no
    request of its is being served is closed, as by Twisted's own channel;
    with one timer per connection, not one per request.
    """

    options = {"idle_timeout": 10.0, "handlers": {"chat_completions": lambda data: None}}

    def test_silent_client_is_closed(self) -> None:
        client = self.client()
        self.memory.advance(9.9)
        self.assertFalse(client.closed)
        self.memory.advance(0.1)
        self.assertTrue(client.closed)
        self.assertEqual(client.responses(), [])

    def test_each_request_starts_it_again(self) -> None:
        client = self.client()
        for _ in range(3):
            client.send(HEAD)
            self.memory.advance(6)
        self.assertFalse(client.closed)
        self.assertEqual([response[0] for response in client.responses()], [200, 200, 200])
        self.memory.advance(3.9)
        self.assertFalse(client.closed)
        self.memory.advance(0.1)
        self.assertTrue(client.closed)

    def test_a_byte_starts_it_again(self) -> None:
        client = self.client()
        self.memory.advance(8)
        client.send(b"\r\n")
        self.memory.advance(8)
        self.assertFalse(client.closed)
        self.memory.advance(2)
        self.assertTrue(client.closed)

    def test_one_timer_for_many_requests(self) -> None:
        made = record_timers(self)
        client = self.client()
        client.send(HEAD * 50)
        self.assertEqual(len(client.responses()), 50)
        self.assertEqual(made.count("_check_idle"), 1)
        self.memory.advance(10)
        self.assertTrue(client.closed)

    def test_a_long_request_is_not_cut(self) -> None:
        client = self.client()
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.memory.advance(35)
        self.assertFalse(client.closed)
        [call] = self.memory.worker.pending.values()
        call.reply({"content": "late", "finish_reason": "stop"})
        self.memory.flush()
        self.assertEqual([response[0] for response in client.responses()], [200])
        self.memory.advance(9.9)
        self.assertFalse(client.closed)
        self.memory.advance(0.1)
        self.assertTrue(client.closed)


class _LingeringTransport(StringTransport):
    """
    A TCP transport as a client that reads nothing leaves it: closing it
    waits for bytes that never leave, until it is aborted.
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class NonReadingClient(RawClient):
    transport_class = _LingeringTransport

    def close(self) -> None:
        if not self.transport.disconnected:
            self.transport.disconnected = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


class RefusedNeverReadTests(HTTPTestCase):
    """
    A refused client that never reads its refusal is aborted as Twisted
    aborts any connection that will not close: its idle timeout (75 s
    after its last byte), then C{abortTimeout} (15 s).
    """

    def test_after_a_408(self) -> None:
        client = NonReadingClient(self, self.memory)
        client.send(b"GET /v1/models HTTP/1.1\r\nHo")
        self.memory.advance(60)
        self.assertEqual(client.responses()[0][0], 408)
        self.assertFalse(client.transport.disconnected)
        for _ in range(40):
            self.memory.advance(1)
        self.assertTrue(client.transport.disconnected)

    def test_after_a_400(self) -> None:
        client = NonReadingClient(self, self.memory)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n")
        self.assertEqual(client.responses()[0][0], 400)
        for _ in range(100):
            self.memory.advance(1)
        self.assertTrue(client.transport.disconnected)


BODY = b'{"input": "hello", "model": "m"}'
POST_HEAD = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
)


class PipelinedHeadDeadlineTests(HTTPTestCase):
    """
    A head read from bytes Twisted held, after a request answered within
    the read that brought it, has its deadline cancelled once it is whole
    like any other: its body's read is not a new head.
    """

    def test_no_408_on_an_idle_connection(self) -> None:
        client = self.client()
        client.send(PIPELINED + POST_HEAD)
        client.send(BODY)
        self.assertEqual([response[0] for response in client.responses()], [200, 200])
        self.memory.advance(61)
        self.assertEqual([response[0] for response in client.responses()], [200, 200])
        self.assertFalse(client.closed)


class PipelinedLongRequestTests(HTTPTestCase):
    options = {"handlers": dict(demo_handlers(), embeddings=lambda data: None)}

    def answer(self) -> None:
        for call in list(self.memory.worker.pending.values()):
            call.error("done")
        self.memory.flush()

    def test_long_request_is_not_cut(self) -> None:
        client = self.client()
        client.send(PIPELINED + POST_HEAD)
        client.send(BODY)
        self.memory.advance(61)
        self.assertEqual([response[0] for response in client.responses()], [200])
        self.assertFalse(client.closed)
        self.answer()
        self.assertEqual(len(client.responses()), 2)

    def test_control_not_pipelined(self) -> None:
        client = self.client()
        client.send(POST_HEAD)
        client.send(BODY)
        self.memory.advance(61)
        self.assertEqual(client.responses(), [])
        self.assertFalse(client.closed)
        self.answer()
        self.assertEqual(len(client.responses()), 1)


class IdleTimerGoneTests(SynchronousTestCase):
    def test_timeout_turned_off_leaves_no_timer(self) -> None:
        """
        What Twisted does to the HTTP/1.1 channel it drops when a TLS
        connection negotiates HTTP/2: C{setTimeout(None)}, and never
        C{connectionLost}. Its timer must not stay behind.
        """
        reactor = MemoryReactorClock()
        site = GatewaySite(Resource(), reactor=reactor, access_log=False, timeout=75)
        protocol = site.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        channel = getattr(protocol, "_channel", protocol)
        channel.setTimeout(None)
        self.assertEqual(reactor.getDelayedCalls(), [])


class NoHeadTimeoutTests(HTTPTestCase):
    options = {"request_head_timeout": 0, "idle_timeout": 1000.0}

    def test_zero_turns_it_off(self) -> None:
        client = self.client()
        for i in range(30):
            client.send(HEAD[i : i + 1])
            self.memory.advance(4)
        self.assertEqual(client.responses(), [])
        self.assertFalse(client.closed)


class ShortHeadTimeoutTests(HTTPTestCase):
    options = {"request_head_timeout": 5.0}

    def test_the_option_reaches_the_channel(self) -> None:
        client = self.client()
        client.send(HEAD[:5])
        self.memory.advance(4.5)
        self.assertFalse(client.closed)
        self.memory.advance(0.5)
        self.assertRefusedAndClosed(client, 408, b"Request Timeout", "request_timeout")


def post_head(length: int) -> bytes:
    return (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (length,)
    )


def padded_body(length: int) -> bytes:
    """
    A valid embeddings request of C{length} bytes.
    """
    body = b'{"input": "hello", "model": "m"'
    return body + b" " * (length - len(body) - 1) + b"}"


class SlowBodyTests(HTTPTestCase):
    """
    The default: 500 bytes a second after 20 s, as Apache's
    mod_reqtimeout.
    """

    def test_slow_body_is_cut_off(self) -> None:
        client = self.client()
        body = padded_body(100_000)
        client.send(post_head(len(body)))
        sent = 0
        while not client.closed and sent < len(body):
            client.send(body[sent : sent + 1000])
            sent += 1000
            self.memory.advance(10)
        self.assertRefusedAndClosed(client, 408, b"Request Timeout", "request_timeout")
        # 20 s of grace, then 2 s for each 1,000 bytes: the third batch of
        # 1,000 bytes was due before 26 s.
        self.assertEqual(sent, 3000)

    def test_body_at_the_rate_is_served(self) -> None:
        client = self.client()
        body = padded_body(30_000)
        client.send(post_head(len(body)))
        for start in range(0, len(body), 600):
            client.send(body[start : start + 600])
            self.memory.advance(1)
        self.assertEqual([response[0] for response in client.responses()], [200])
        self.assertFalse(client.closed)

    def test_silent_body_is_cut_off_after_the_grace(self) -> None:
        client = self.client()
        client.send(post_head(100) + b"{")
        self.memory.advance(19)
        self.assertFalse(client.closed)
        self.memory.advance(1)
        self.assertRefusedAndClosed(client, 408, b"Request Timeout", "request_timeout")


class NoBodyRateTests(HTTPTestCase):
    options = {"min_body_rate": 0}

    def test_zero_turns_it_off(self) -> None:
        client = self.client()
        client.send(post_head(100) + b"{")
        self.memory.advance(60)
        self.assertFalse(client.closed)


class OptionTests(HTTPTestCase):
    def test_both_parsers(self) -> None:
        argv = ["--request-head-timeout", "5", "--min-body-rate", "0", "--body-rate-grace", "3", "--listen", "tcp:1"]
        args = build_parser().parse_args(argv)
        from_cli = build_config(vars(args), None, listen_descriptions(args), True)
        options = Options()
        options.parseOptions(argv)
        self.assertEqual(from_cli, options["config"])
        self.assertEqual((from_cli.request_head_timeout, from_cli.min_body_rate, from_cli.body_rate_grace), (5.0, 0, 3.0))

    def test_defaults(self) -> None:
        args = build_parser().parse_args([])
        config = build_config(vars(args), None, listen_descriptions(args), True)
        self.assertEqual((config.request_head_timeout, config.min_body_rate, config.body_rate_grace), (60.0, 500, 20.0))
        site = self.memory.service.site
        self.assertEqual((site.request_head_timeout, site.min_body_rate, site.body_rate_grace), (60.0, 500, 20.0))
