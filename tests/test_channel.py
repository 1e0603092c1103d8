"""
The site's channel: responses sent straight to the socket once per turn,
whole and in order, and through the transport whenever it holds bytes.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hfendpoint import _twisted_private
from hfendpoint.web import _channel as channel
from hfendpoint.web import _site
from hfendpoint.web._coalescing import AFTER_SLICE, AFTER_UNIT, TurnFlusher
from hfendpoint.web._hardened import HardenedChannel
from hfendpoint.web import EventStream, GatewaySite

#: Why the tests of the direct send to the socket do not run, if they do not.
NOT_DIRECT = (
    None
    if _twisted_private.DIRECT
    else f"writes take Twisted's public path: {_twisted_private.PUBLIC_ONLY_REASON}"
)


class Item:
    def __init__(self, log, name, then=None):
        self.log = log
        self.name = name
        self.then = then

    def flush_now(self):
        self.log.append(self.name)
        if self.then is not None:
            self.then()


class TurnFlusherTests(SynchronousTestCase):
    def test_once_at_the_end_of_the_turn(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []
        flusher.add(Item(log, "a"))
        flusher.add(Item(log, "b"))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(log, [])
        clock.advance(0)
        self.assertEqual(log, ["a", "b"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_added_while_flushing_is_flushed_after_in_the_same_call(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []
        flusher.add(Item(log, "stream", then=lambda: flusher.add(Item(log, "channel"))))
        clock.advance(0)
        self.assertEqual(log, ["stream", "channel"])
        self.assertEqual(clock.getDelayedCalls(), [])


class TurnFlusherAloneTests(SynchronousTestCase):
    def test_alone_only_in_the_last_work_and_with_nothing_else(self):
        flusher = TurnFlusher(Clock())
        log = []
        seen = []
        first, second = Item(log, "a"), Item(log, "b")
        flusher.add(first)
        self.assertFalse(flusher.alone(first))
        flusher.run_last(lambda: seen.append((flusher.alone(first), flusher.alone(second))))
        self.assertEqual(seen, [(True, False)])
        self.assertFalse(flusher.alone(first))
        flusher.add(second)
        flusher.run_last(lambda: seen.append(flusher.alone(first)))
        self.assertEqual(seen[1:], [False])

    def test_run_last_passes_arguments_and_errors(self):
        flusher = TurnFlusher(Clock())
        got = []
        flusher.run_last(lambda *args: got.append(args), 1, 2)
        self.assertEqual(got, [(1, 2)])
        item = Item([], "a")
        flusher.add(item)

        def fail():
            raise ValueError("boom")

        self.assertRaises(ValueError, flusher.run_last, fail)
        self.assertFalse(flusher.alone(item))

    def test_nested_run_last_keeps_the_outer(self):
        flusher = TurnFlusher(Clock())
        item = Item([], "a")
        flusher.add(item)
        seen = []

        def outer():
            flusher.run_last(lambda: None)
            seen.append(flusher.alone(item))

        flusher.run_last(outer)
        self.assertEqual(seen, [True])


class TurnFlusherAfterTests(SynchronousTestCase):
    def test_at_the_end_of_the_turn_before_its_flush(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []

        def later():
            log.append("after")
            flusher.add(Item(log, "written by it"))

        flusher.add(Item(log, "a"))
        flusher.after(later)
        self.assertEqual(log, [])
        clock.advance(0)
        self.assertEqual(log, ["after", "a", "written by it"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_long_list_is_run_over_several_turns(self):
        """
        After-work runs for at most AFTER_SLICE seconds in one turn, checked
        every AFTER_UNIT calls; what is held is flushed then, and the rest
        runs in the next turns.
        """
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []

        def slow(name):
            def run():
                log.append(name)
                clock.rightNow += AFTER_SLICE / (AFTER_UNIT + 1)

            return run

        ends = [f"end {i}" for i in range(3 * AFTER_UNIT)]
        flusher.add(Item(log, "token"))
        for name in ends:
            flusher.after(slow(name))
        clock.advance(0)
        # The first unit ends within the slice, the second past it.
        self.assertEqual(log, ends[: 2 * AFTER_UNIT] + ["token"] + ends[2 * AFTER_UNIT :])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_added_by_after_work_keeps_its_place(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []

        def first():
            log.append("first")
            flusher.after(lambda: log.append("added by first"))
            clock.rightNow += AFTER_SLICE

        flusher.after(first)
        flusher.after(lambda: log.append("second"))
        clock.advance(0)
        self.assertEqual(log, ["first", "second", "added by first"])

    def test_a_failure_is_logged_and_the_rest_runs(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []

        def fail():
            raise ValueError("boom")

        flusher.after(fail)
        flusher.after(lambda: log.append("second"))
        clock.advance(0)
        self.assertEqual(log, ["second"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_after_work_added_later_runs_too(self):
        """
        Once the work left is done, work added in a later turn runs at the
        end of that turn.
        """
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []
        flusher.after(lambda: log.append("first"))
        clock.advance(0)
        flusher.after(lambda: log.append("later"))
        clock.advance(0)
        self.assertEqual(log, ["first", "later"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_early_flush_leaves_it_for_the_end_of_the_turn(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []
        flusher.add(Item(log, "a"))
        flusher.after(lambda: log.append("after"))
        flusher.flush()
        self.assertEqual(log, ["a"])
        clock.advance(0)
        self.assertEqual(log, ["a", "after"])
        self.assertEqual(clock.getDelayedCalls(), [])


class TurnFlusherFlushTests(SynchronousTestCase):
    def test_flush_runs_what_was_added_and_the_turn_has_nothing_left(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []
        flusher.add(Item(log, "a"))
        flusher.flush()
        self.assertEqual(log, ["a"])
        self.assertEqual(clock.getDelayedCalls(), [])
        flusher.add(Item(log, "b"))
        clock.advance(0)
        self.assertEqual(log, ["a", "b"])

    def test_flush_with_nothing_added(self):
        clock = Clock()
        TurnFlusher(clock).flush()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flush_while_flushing_waits(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        log = []

        def again():
            flusher.add(Item(log, "later"))
            flusher.flush()
            log.append("flush returned")

        flusher.add(Item(log, "first", then=again))
        clock.advance(0)
        self.assertEqual(log, ["first", "flush returned", "later"])


class Collect(Protocol):
    def __init__(self, request, done):
        self.request = request
        self.done = done
        self.data = []

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.data))


def exchange(reactor, port, raw):
    """
    Send raw bytes on a new connection; fire with everything received
    until the server closes it.
    """
    done = Deferred()
    factory = ClientFactory.forProtocol(lambda: Collect(raw, done))
    reactor.connectTCP("127.0.0.1", port, factory)
    return done


class Echo(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"path " + request.path

    def render_POST(self, request):
        return b"posted " + request.content.read()


class Serving(TestCase):
    """
    A real site on loopback; no tests of its own.
    """

    def listen(self, resource, **kwargs):
        from twisted.internet import reactor

        self.reactor = reactor
        self.flusher = TurnFlusher(reactor)
        site = GatewaySite(resource, flusher=self.flusher, **kwargs)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def record_sends(self):
        """
        For each send, whether it found the transport empty (and so went
        straight to the socket), and whether the transport held bytes after.
        """
        direct = []
        left = []

        held = _twisted_private.transport_holds

        def recording(real):
            def send(transport, data):
                direct.append(not held(transport))
                real(transport, data)
                left.append(held(transport))

            return send

        self.patch(channel, "send", recording(channel.send))
        self.patch(channel, "send_parts", recording(channel.send_parts))
        return direct, left


class ChannelTests(Serving):
    async def test_pipelined_responses_in_order_then_closed(self):
        port = self.listen(Echo(), access_log=False)
        direct, _ = self.record_sends()
        raw = (
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        received = await exchange(self.reactor, port, raw)
        responses = received.split(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(responses[0], b"")
        self.assertEqual(len(responses), 4)
        for response, path in zip(responses[1:], (b"/one", b"/two", b"/three")):
            self.assertTrue(response.endswith(b"\r\n\r\npath " + path), response)
        if not NOT_DIRECT:
            self.assertIn(True, direct)

    async def test_http10_response_whole_before_close(self):
        port = self.listen(Echo(), access_log=False)
        received = await exchange(self.reactor, port, b"GET /old HTTP/1.0\r\n\r\n")
        self.assertTrue(received.startswith(b"HTTP/1.0 200 OK\r\n"))
        self.assertTrue(received.endswith(b"\r\n\r\npath /old"))

    async def test_too_large_body_refused_with_413_then_closed(self):
        port = self.listen(Echo(), access_log=False, max_body_size=10)
        received = await exchange(
            self.reactor,
            port,
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 413 Payload Too Large\r\n"))
        self.assertIn(b'"code":"request_too_large"', received)

    async def test_bad_request_answered_after_earlier_response(self):
        port = self.listen(Echo(), access_log=False)
        received = await exchange(
            self.reactor, port, b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\nNONSENSE\r\n\r\n"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
        self.assertIn(b"path /fine", received)
        # An OpenAI error, where Twisted's hook for it may be used; its bare
        # 400 otherwise.
        bad = b"HTTP/1.1 400 Bad Request\r\n"
        self.assertIn(bad, received)
        answer = received[received.index(bad) :]
        if _twisted_private.DIRECT:
            self.assertTrue(answer.endswith(b'"code":"invalid_request"}}'), received)
        else:
            self.assertEqual(answer, bad + b"\r\n")

    async def test_events_arrive_whole_and_in_order(self):
        """
        Including one too big for the socket to take at once, after which
        the transport holds the rest and the stream waits for it to drain.
        """
        reactor = self.reactor = __import__("twisted.internet.reactor", fromlist=["reactor"])
        direct, left = self.record_sends()
        events = (
            [b"data: %d\n\n" % i for i in range(100)]
            + [b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n"]
            + [b"data: after %d\n\n" % i for i in range(100)]
        )

        class Streaming(Resource):
            isLeaf = True

            def render_GET(self, request):
                stream = EventStream(request)
                pending = list(events)

                def next_turn():
                    if pending:
                        stream.write_raw(pending.pop(0))
                        reactor.callLater(0, next_turn)
                    else:
                        stream.close()
                        request.finish()

                next_turn()
                return NOT_DONE_YET

        port = self.listen(Streaming(), access_log=False)
        received = await exchange(
            reactor, port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"text/event-stream", head)
        self.assertEqual(dechunk(body), b"".join(events))
        if not NOT_DIRECT:
            self.assertIn(True, direct)
            self.assertIn(True, left)


class SendTimingTests(Serving):
    """
    When the channel sends what it holds: straight to the socket, so only
    where the private names allow it.
    """

    skip = NOT_DIRECT

    async def finish_and_count_sends(self, body, last_reply=False, other=None):
        """
        Answer C{body} in a later turn; return the number of sends made
        before and right after the request finished, and what arrived.

        @param last_reply: finish as the last work of the turn
            (L{TurnFlusher.run_last}), as the reply being handled is the
            last one read.
        @param other: something else to flush at the end of the turn.
        """
        direct, _ = self.record_sends()
        reactor = self.reactor = __import__("twisted.internet.reactor", fromlist=["reactor"])
        sends = []

        class Later(Resource):
            isLeaf = True

            def render_GET(self, request):
                def answer():
                    request.setHeader(b"content-length", b"%d" % len(body))
                    request.write(body[:10])
                    request.write(body[10:])
                    sends.append(len(direct))
                    channel = request.channel
                    if other is not None:
                        flusher.add(other)
                    if last_reply:
                        flusher.run_last(request.finish)
                    else:
                        request.finish()
                    sends.append(len(direct))
                    # The connection stays open: close it on the next turn.
                    reactor.callLater(0, channel.loseConnection)

                reactor.callLater(0, answer)
                return NOT_DONE_YET

        port = self.listen(Later(), access_log=False)
        flusher = self.flusher
        received = await exchange(reactor, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return sends, received

    async def test_big_response_sent_when_finished(self):
        """
        A big response leaves when its request finishes, not at the end of
        the turn.
        """
        body = b"x" * channel.SEND_AT_ONCE
        sends, received = await self.finish_and_count_sends(body)
        self.assertEqual(sends, [0, 1])
        self.assertTrue(received.endswith(b"\r\n\r\n" + body))

    async def test_small_response_sent_at_the_end_of_the_turn(self):
        sends, received = await self.finish_and_count_sends(b"a small answer")
        self.assertEqual(sends, [0, 0])
        self.assertTrue(received.endswith(b"\r\n\r\na small answer"), received)

    async def test_last_reply_response_sent_when_finished(self):
        """
        A response finished by the last reply read from the worker leaves
        at once: nothing else in the turn would join it.
        """
        sends, received = await self.finish_and_count_sends(b"a small answer", last_reply=True)
        self.assertEqual(sends, [0, 1])
        self.assertTrue(received.endswith(b"\r\n\r\na small answer"), received)

    async def test_last_reply_response_waits_for_others_of_the_turn(self):
        log = []
        sends, received = await self.finish_and_count_sends(
            b"a small answer", last_reply=True, other=Item(log, "other")
        )
        self.assertEqual(sends, [0, 0])
        self.assertEqual(log, ["other"])
        self.assertTrue(received.endswith(b"\r\n\r\na small answer"), received)


def dechunk(body):
    out = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        size = int(size, 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


class PartsTests(Serving):
    async def test_big_parts_arrive_whole(self):
        """
        A body written in a few big parts goes out gathered by the kernel;
        what the socket does not take is sent after, in order.
        """
        from hfendpoint.web import write_parts

        parts = [b'{"b64_json":"', bytes(range(65, 91)) * (160 * 1024), b'"}', b"x" * (300 * 1024)]

        class Big(Resource):
            isLeaf = True

            def render_GET(self, request):
                write_parts(request, parts)
                request.finish()
                return NOT_DONE_YET

        port = self.listen(Big(), access_log=False)
        direct, left = self.record_sends()
        received = await exchange(
            self.reactor, port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, _, body = received.partition(b"\r\n\r\n")
        whole = b"".join(parts)
        self.assertIn(b"Content-Length: %d\r\n" % len(whole), head + b"\r\n")
        self.assertNotIn(b"chunked", head.lower())
        self.assertEqual(body, whole)
        if not NOT_DIRECT:
            self.assertEqual(direct[0], True)
            self.assertEqual(left[0], True)


class SiteChannelTests(SynchronousTestCase):
    """
    Which channel the site gives a connection.
    """

    def channel_of(self, site):
        from twisted.internet.address import IPv4Address

        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        return protocol._channel if hasattr(protocol, "_channel") else protocol

    def test_ours_with_a_flusher(self):
        site = GatewaySite(Resource(), flusher=TurnFlusher(Clock()), reactor=Clock())
        ours = self.channel_of(site)
        self.assertIsInstance(ours, channel.GatewayChannel)
        self.assertIs(ours.site, site)

    test_ours_with_a_flusher.skip = NOT_DIRECT



    def test_hardened_without_a_flusher(self):
        site = GatewaySite(Resource(), reactor=Clock())
        self.assertIs(type(self.channel_of(site)), HardenedChannel)

    def test_hardened_on_the_public_path(self):
        """
        Without Twisted's private wrapper: the channel itself.
        """
        self.patch(_site, "DIRECT", False)
        site = GatewaySite(Resource(), flusher=TurnFlusher(Clock()), reactor=Clock())
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.assertIs(type(protocol), HardenedChannel)
        self.assertIsInstance(protocol, HTTPChannel)
