"""
Server-sent events with flow control: held while the client is slow,
written together when it catches up, and a client too far behind dropped.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IPushProducer

from hfendpoint.web import EventStream, TurnFlusher


class FakeTransport:
    aborted = False

    def abortConnection(self):
        self.aborted = True


class FakeSite:
    def __init__(self, flusher):
        self.flusher = flusher


class FakeChannel:
    def __init__(self, site):
        self.transport = FakeTransport()
        self.site = site


class FakeRequest:
    def __init__(self, site=None):
        self.writes = []
        self.code = None
        self.headers = {}
        self.producer = None
        self.channel = FakeChannel(site)
        self._finished = Deferred()

    def notifyFinish(self):
        d = Deferred()
        self._finished.addBoth(lambda r: d.callback(None) if not isinstance(r, Failure) else d.errback(r))
        return d

    def registerProducer(self, producer, streaming):
        self.producer = (producer, streaming)

    def unregisterProducer(self):
        self.producer = None

    def setResponseCode(self, code):
        self.code = code

    def setHeader(self, name, value):
        self.headers[name] = value

    def write(self, data):
        self.writes.append(data)


class EventStreamTests(SynchronousTestCase):
    """
    On the flusher of the request's site, as the gateway's site has one.
    """

    def setUp(self):
        self.clock = Clock()
        self.site = FakeSite(TurnFlusher(self.clock))

    def stream(self, request, **kwargs):
        request.channel.site = self.site
        return EventStream(request, **kwargs)

    def test_is_a_streaming_producer(self):
        request = FakeRequest()
        events = self.stream(request)
        verifyObject(IPushProducer, events)
        self.assertEqual(request.producer, (events, True))
        events.close()
        self.assertIsNone(request.producer)

    def test_headers_with_the_first_event(self):
        request = FakeRequest()
        events = self.stream(request)
        self.assertIsNone(request.code)
        events.send({"a": 1}, event="thing")
        self.clock.advance(0)
        self.assertEqual(request.code, 200)
        self.assertEqual(request.headers[b"content-type"], b"text/event-stream; charset=utf-8")
        self.assertEqual(request.writes, [b'event: thing\ndata: {"a":1}\n\n'])

    def test_slow_client_gets_held_events_in_one_write_in_order(self):
        request = FakeRequest()
        events = self.stream(request)
        events.send({"n": 0})
        self.clock.advance(0)
        events.pauseProducing()
        for n in range(1, 50):
            events.send({"n": n})
        self.clock.advance(0)
        self.assertEqual(len(request.writes), 1)
        events.resumeProducing()
        self.assertEqual(len(request.writes), 2)
        events.send({"n": 50})
        events.done()
        self.clock.advance(0)
        self.assertEqual(len(request.writes), 3)
        joined = b"".join(request.writes)
        expected = b"".join(b'data: {"n":%d}\n\n' % n for n in range(51)) + b"data: [DONE]\n\n"
        self.assertEqual(joined, expected)

    def test_events_of_one_turn_go_in_one_write(self):
        request = FakeRequest()
        events = self.stream(request)
        for n in range(3):
            events.send({"n": n})
        self.assertEqual(request.writes, [])
        self.clock.advance(0)
        self.assertEqual(request.writes, [b'data: {"n":0}\n\ndata: {"n":1}\n\ndata: {"n":2}\n\n'])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_streams_share_one_timed_call_per_turn(self):
        requests = [FakeRequest() for _ in range(20)]
        streams = [self.stream(r) for r in requests]
        for n, events in enumerate(streams):
            events.send({"n": n})
            events.send({"n": n})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual([r.writes for r in requests], [[b'data: {"n":%d}\n\n' % n * 2] for n in range(20)])

    def test_close_flushes_what_is_held(self):
        request = FakeRequest()
        events = self.stream(request)
        events.pauseProducing()
        events.send({"n": 1})
        events.done()
        self.assertEqual(request.writes, [])
        events.close()
        self.assertEqual(request.writes, [b'data: {"n":1}\n\ndata: [DONE]\n\n'])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_too_far_behind_is_dropped(self):
        request = FakeRequest()
        events = self.stream(request, max_buffer=1000)
        events.pauseProducing()
        for n in range(100):
            events.send({"n": n})
        self.assertTrue(request.channel.transport.aborted)
        self.assertTrue(events.closed)
        events.resumeProducing()
        self.assertEqual(request.writes, [])

    def test_nothing_written_after_the_client_left(self):
        request = FakeRequest()
        events = self.stream(request)
        request._finished.errback(Failure(Exception("gone")))
        events.send({"n": 1})
        self.assertEqual(request.writes, [])


class FlusherChoiceTests(SynchronousTestCase):
    def test_a_flusher_given_is_used(self):
        clock, theirs = Clock(), Clock()
        request = FakeRequest(FakeSite(TurnFlusher(theirs)))
        events = EventStream(request, flusher=TurnFlusher(clock))
        events.send({"n": 1})
        theirs.advance(0)
        self.assertEqual(request.writes, [])
        clock.advance(0)
        self.assertEqual(request.writes, [b'data: {"n":1}\n\n'])

    def test_without_a_flusher_each_event_is_written_at_once(self):
        """
        On a site with no flusher (Twisted's own, as treq's testing tools
        build), events are not held for a turn that nothing ends.
        """
        for site in (None, object()):
            request = FakeRequest(site)
            events = EventStream(request)
            events.send({"n": 1})
            events.send({"n": 2})
            self.assertEqual(request.writes, [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n'])
            events.pauseProducing()
            events.send({"n": 3})
            self.assertEqual(len(request.writes), 2)
            events.resumeProducing()
            self.assertEqual(request.writes[2:], [b'data: {"n":3}\n\n'])
