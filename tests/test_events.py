"""
Server-sent events with flow control: held while the client is slow,
written together when it catches up, and a client too far behind dropped.
"""

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IPushProducer

from hfendpoint.web import EventStream


class FakeTransport:
    aborted = False

    def abortConnection(self):
        self.aborted = True


class FakeChannel:
    def __init__(self):
        self.transport = FakeTransport()


class FakeRequest:
    def __init__(self):
        self.writes = []
        self.code = None
        self.headers = {}
        self.producer = None
        self.channel = FakeChannel()
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
    def test_is_a_streaming_producer(self):
        request = FakeRequest()
        events = EventStream(request)
        verifyObject(IPushProducer, events)
        self.assertEqual(request.producer, (events, True))
        events.close()
        self.assertIsNone(request.producer)

    def test_headers_with_the_first_event(self):
        request = FakeRequest()
        events = EventStream(request)
        self.assertIsNone(request.code)
        events.send({"a": 1}, event="thing")
        self.assertEqual(request.code, 200)
        self.assertEqual(request.headers[b"content-type"], b"text/event-stream; charset=utf-8")
        self.assertEqual(request.writes, [b'event: thing\ndata: {"a":1}\n\n'])

    def test_slow_client_gets_held_events_in_one_write_in_order(self):
        request = FakeRequest()
        events = EventStream(request)
        events.send({"n": 0})
        events.pauseProducing()
        for n in range(1, 50):
            events.send({"n": n})
        self.assertEqual(len(request.writes), 1)
        events.resumeProducing()
        self.assertEqual(len(request.writes), 2)
        events.send({"n": 50})
        events.done()
        joined = b"".join(request.writes)
        expected = b"".join(b'data: {"n":%d}\n\n' % n for n in range(51)) + b"data: [DONE]\n\n"
        self.assertEqual(joined, expected)

    def test_close_flushes_what_is_held(self):
        request = FakeRequest()
        events = EventStream(request)
        events.pauseProducing()
        events.send({"n": 1})
        events.done()
        self.assertEqual(request.writes, [])
        events.close()
        self.assertEqual(request.writes, [b'data: {"n":1}\n\ndata: [DONE]\n\n'])

    def test_client_too_far_behind_is_dropped(self):
        request = FakeRequest()
        events = EventStream(request, max_buffer=1000)
        events.pauseProducing()
        for n in range(100):
            events.send({"n": n})
        self.assertTrue(request.channel.transport.aborted)
        self.assertTrue(events.closed)
        events.resumeProducing()
        self.assertEqual(request.writes, [])

    def test_nothing_written_after_the_client_left(self):
        request = FakeRequest()
        events = EventStream(request)
        request._finished.errback(Failure(Exception("gone")))
        events.send({"n": 1})
        self.assertEqual(request.writes, [])
