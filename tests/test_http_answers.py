"""
What the gateway answers to odd requests Klein or Twisted answered badly,
through the raw bytes of the whole gateway's site in memory: paths that
are not UTF-8, empty path segments, methods a path does not have, and
the status lines and headers of a few answers.
"""

from __future__ import annotations

import gc
from io import BytesIO

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from hfendpoint.web import GatewaySite
from hfendpoint.web._connection_state import ReadState
from hfendpoint.web._hardened import HardenedChannel
from hfendpoint.web._site import LimitedRequest
from tests.test_http_framing import CLIENT, SERVER, HTTPTestCase, parse_responses


class PathTests(HTTPTestCase):
    def get(self, path: bytes, method: bytes = b"GET", host: bytes = b"x", body: bytes = b""):
        client = self.client()
        client.send(b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (method, path, host, len(body), body))
        responses = client.responses()
        self.assertEqual(len(responses), 1)
        self.assertFalse(client.closed)
        return responses[0]

    def test_invalid_utf8_paths(self) -> None:
        """
        An OpenAI-shaped 400 naming what is wrong, and no traceback (Klein
        answered in plain text and logged one for each).
        """
        for path in (b"/v1/models/%ff", b"/v1/images/%ff", b"/%ff", b"/v1/%c3%28/models", b"/v1/images/%ed%a0%80"):
            for method in (b"GET", b"DELETE", b"POST"):
                error = self.assertOpenAIError(self.get(path, method), 400, "invalid_url")
                self.assertIn("UTF-8", error["message"])
        self.assertEqual(self.logged, [])

    def test_invalid_utf8_host(self) -> None:
        self.assertOpenAIError(self.get(b"/v1/models", host=b"\xff"), 400, "invalid_host")
        self.assertEqual(self.logged, [])

    def test_utf8_path_is_still_served(self) -> None:
        response = self.get("/v1/models/caf\u00e9".encode("utf-8").replace(b"\xc3\xa9", b"%C3%A9"))
        error = self.assertOpenAIError(response, 404, "model_not_found")
        self.assertIn("caf\u00e9", error["message"])

    def test_empty_segment_is_not_found(self) -> None:
        """
        C{/v1//models} was a 308 without a C{Location}; it is a 404 like
        any path the API does not have, for every method.
        """
        for path, method in (
            (b"/v1//models", b"GET"),
            (b"//v1/models", b"GET"),
            (b"/v1/models//", b"GET"),
            (b"/v1//embeddings", b"POST"),
            (b"/v1/images//abc", b"DELETE"),
        ):
            response = self.get(path, method, body=b"{}" if method == b"POST" else b"")
            error = self.assertOpenAIError(response, 404, "unknown_url")
            self.assertEqual(error["message"], f"Invalid URL ({method.decode()} {path.decode()})")
            self.assertNotIn(b"location", response[2])

    def test_options_on_the_image_routes(self) -> None:
        """
        The image POST routes say POST is their one method (Klein matched
        them against C{/v1/images/<image_id>} too, and listed GET and
        DELETE); a GET there is a 405, not a search for an image.
        """
        for path in (b"/v1/images/generations", b"/v1/images/edits"):
            for method in (b"OPTIONS", b"GET", b"DELETE"):
                response = self.get(path, method)
                self.assertOpenAIError(response, 405, "method_not_allowed")
                self.assertEqual(response[2][b"allow"], [b"POST"])

    def test_options_elsewhere_lists_the_paths_own_methods(self) -> None:
        for path, allowed in (
            (b"/v1/chat/completions", {b"POST"}),
            (b"/v1/embeddings", {b"POST"}),
            (b"/v1/models", {b"GET", b"HEAD"}),
            (b"/v1/images/abc", {b"GET", b"HEAD", b"DELETE"}),
        ):
            response = self.get(path, b"OPTIONS")
            self.assertOpenAIError(response, 405, "method_not_allowed")
            self.assertEqual(set(response[2][b"allow"][0].split(b", ")), allowed)


class HeaderTests(HTTPTestCase):
    def test_server_says_hfendpoint_without_a_version(self) -> None:
        client = self.client()
        client.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        client.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        responses = client.responses()
        self.assertEqual([response[0] for response in responses], [200, 404])
        for response in responses:
            self.assertEqual(response[2][b"server"], [b"hfendpoint"])

    def test_worker_unavailable_says_when_to_retry(self) -> None:
        """
        A POST while the worker is down (it restarts after half a second)
        is a 503 C{worker_unavailable} with C{Retry-After}.
        """
        self.memory.spawner.processes[-1].exit()
        self.memory.flush()
        del self.logged[:]  # the worker's exit
        client = self.client()
        body = b'{"input": "hello", "model": "m"}'
        client.send(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        [response] = client.responses()
        self.assertEqual(response[0], 503)
        self.assertEqual(response[1], b"Service Unavailable")
        self.assertEqual(response[2][b"retry-after"], [b"1"])
        self.assertEqual(self.logged, [])


class StarTests(HTTPTestCase):
    def test_options_star(self) -> None:
        client = self.client()
        client.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\nGET * HTTP/1.1\r\nHost: x\r\n\r\n")
        [options, get] = client.responses()
        self.assertEqual((options[0], options[3]), (200, b""))
        self.assertEqual((get[0], get[2][b"allow"]), (405, [b"OPTIONS"]))
        for response in (options, get):
            self.assertEqual(response[2][b"server"], [b"hfendpoint"])
            self.assertEqual(response[2][b"content-length"], [b"0"])


class DateTests(HTTPTestCase):
    def test_date_is_the_sites_clock(self) -> None:
        """
        C{Date} says the time of the site's clock, formatted once a second.
        """
        self.memory.advance(1_000_000_000 - self.memory.reactor.seconds())
        client = self.client()
        client.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        self.memory.advance(0.5)
        client.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        self.memory.advance(0.5)
        client.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        dates = [response[2][b"date"] for response in client.responses()]
        self.assertEqual(
            dates,
            [[b"Sun, 09 Sep 2001 01:46:40 GMT"], [b"Sun, 09 Sep 2001 01:46:40 GMT"], [b"Sun, 09 Sep 2001 01:46:41 GMT"]],
        )


class ContentFileTests(TestCase):
    """
    Where a body is kept while it arrives: in memory when it is known to
    be small, in a temporary file otherwise, as Twisted's own request
    chooses.
    """

    def test_small_in_memory(self) -> None:
        content = GatewaySite(Resource()).getContentFile(99_999)
        self.assertIsInstance(content, BytesIO)

    def test_big_or_unknown_in_a_file(self) -> None:
        site = GatewaySite(Resource())
        for length in (100_000, None):
            content = site.getContentFile(length)
            self.addCleanup(content.close)
            self.assertNotIsInstance(content, BytesIO)
            self.assertIsInstance(content.fileno(), int)


class RequestSlotsTests(TestCase):
    """
    What the gateway adds to a request stays out of the instance's
    dictionary (see L{LimitedRequest}), and reads as unset until set.
    """

    def test_not_in_the_dictionary(self) -> None:
        channel = DummyChannel()
        channel.site = GatewaySite(Resource())
        request = LimitedRequest(channel)
        request.gotLength(1)
        self.assertEqual((request.request_id, request.started), (None, None))
        request.request_id = "abc"
        request.started = 1.0
        request.handleContentChunk(b"x")
        self.assertEqual((request.request_id, request.started, request._received), ("abc", 1.0, 1))
        self.assertFalse({"request_id", "started", "_received", "_rejected"} & set(vars(request)))


class WhenDoneTests(TestCase):
    """
    L{LimitedRequest.when_done}: what C{notifyFinish} tells, without a
    Deferred.
    """

    def request(self) -> LimitedRequest:
        request = LimitedRequest(DummyChannel(), False)
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        return request

    def test_finished(self) -> None:
        request = self.request()
        told: list = []
        request.when_done(told.append)
        request.when_done(lambda reason: told.append(("second", reason)))
        request.finish()
        self.assertEqual(told, [None, ("second", None)])
        self.assertEqual(request.notifications, [])

    def test_lost(self) -> None:
        request = self.request()
        told: list = []
        request.when_done(told.append)
        reason = Failure(ConnectionDone())
        request.connectionLost(reason)
        self.assertEqual(told, [reason])

    def test_told_once(self) -> None:
        request = self.request()
        told: list = []
        request.when_done(told.append)
        request.finish()
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(told, [None])

    def test_a_failing_call_is_logged(self) -> None:
        """
        A call that raises is logged, the next ones are still told, and
        the failure does not reach the request's finish.
        """
        request = self.request()
        told: list = []
        request.when_done(lambda reason: 1 / 0)
        request.when_done(told.append)
        request.finish()
        self.assertEqual(told, [None])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_asked_once_finished(self) -> None:
        request = self.request()
        request.finish()
        told: list = []
        request.when_done(told.append)
        self.assertEqual(told, [None])


class _Hello(Resource):
    isLeaf = True

    def render(self, request) -> bytes:
        request.setHeader(b"content-length", b"2")
        return b"hi"


class ChannelDictionaryTests(TestCase):
    """
    The hardened channel leaves its instance dictionary to Twisted's own
    attributes (see L{hfendpoint.web._hardened.HardenedChannel}): few
    enough for CPython's compact form, and no state of its own there.
    """

    def test_twisted_attributes_alone(self) -> None:
        site = GatewaySite(_Hello(), access_log=False)
        site.reactor = Clock()
        channel = HardenedChannel()
        channel.site = channel.factory = site
        channel.requestFactory = LimitedRequest
        channel.callLater = site.reactor.callLater
        transport = StringTransport()
        channel.makeConnection(transport)
        for _ in range(2):
            channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        names = set(vars(channel))
        self.assertLessEqual(len(names), 30, sorted(names))
        self.assertFalse(names & (set(ReadState.__slots__) | {"_" + name for name in ReadState.__slots__}))
        self.assertNotIn("lineReceived", names)


class _Status(Resource):
    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def render_GET(self, request) -> bytes:
        request.setResponseCode(self.code)
        return b""


class ReasonPhraseTests(HTTPTestCase):
    def answer(self, code: int) -> bytes:
        site = GatewaySite(_Status(code), access_log=False)
        protocol = site.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT, hostAddress=SERVER)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.connectionLost(None)
        [response] = parse_responses(transport.value())
        return response[1]

    def test_429(self) -> None:
        """
        Twisted's table has no 429 and said C{Unknown Status}.
        """
        self.assertEqual(self.answer(429), b"Too Many Requests")

    def test_others_as_twisted_has_them(self) -> None:
        self.assertEqual(self.answer(404), b"Not Found")
        self.assertEqual(self.answer(431), b"Request Header Fields Too Large")
        self.assertEqual(self.answer(599), b"Unknown Status")

    def test_429_from_admission(self) -> None:
        """
        The gateway's own 429 (the queue is full) through its site.
        """
        self.memory.service.admission.max_in_flight = 0
        self.memory.service.admission.max_waiting = 0
        client = self.client()
        client.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        [response] = client.responses()
        self.assertEqual(response[:2], (429, b"Too Many Requests"))


def _embed(data):
    return {"embeddings": [[0.5, 0.25] for _ in data["input"]]}


def _chat(data):
    yield {"content": "Hi", "finish_reason": None}
    yield {"content": "", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class NoGarbageTests(TestCase):
    """
    A request served leaves nothing for the garbage collector: every
    object it made goes when the last reference to it does. A request
    whose objects held each other (a cycle) would live on until a
    collection, and cost far more than its own work.
    """

    def serve(self, gateway, channels, body_path, body) -> None:
        request = b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            body_path,
            len(body),
            body,
        )
        for channel, _ in channels:
            channel.dataReceived(request)
        gateway.flush()
        for _, transport in channels:
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:400])
            transport.clear()

    def test_no_cycle_per_request(self) -> None:
        from hfendpoint.testing import MemoryGateway

        gateway = MemoryGateway({"embeddings": _embed, "chat_completions": _chat}, access_log=BytesIO())
        gateway.start()
        self.addCleanup(gateway.stop)
        channels = []
        for port in range(4):
            peer = CLIENT.__class__("TCP", "127.0.0.1", 40000 + port)
            channel = gateway.service.site.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer, hostAddress=SERVER)
            channel.makeConnection(transport)
            channels.append((channel, transport))
        kinds = [
            (b"/v1/embeddings", b'{"model":"m","input":[1,2,3]}'),
            (b"/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"Hi"}]}'),
            (b"/v1/chat/completions", b'{"model":"m","stream":true,"messages":[{"role":"user","content":"Hi"}]}'),
        ]
        for path, body in kinds:
            self.serve(gateway, channels, path, body)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for _ in range(3):
            for path, body in kinds:
                self.serve(gateway, channels, path, body)
        self.assertEqual(gc.collect(), 0)


class ResourceTreeTests(TestCase):
    """
    The site finds a request's resource as Twisted's does: a leaf root
    takes every path, any other root is walked.
    """

    def answer(self, root, path: bytes) -> bytes:
        site = GatewaySite(root, access_log=False)
        site.reactor = Clock()
        protocol = site.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT, hostAddress=SERVER)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
        return transport.value()

    def test_a_leaf_root_takes_every_path(self) -> None:
        self.assertIn(b"hello", self.answer(_Paths(), b"/a/b"))
        self.assertIn(b"[] [b'a', b'b']", self.answer(_Paths(), b"/a/b"))

    def test_a_tree_is_walked(self) -> None:
        root = Resource()
        root.putChild(b"a", _Paths())
        self.assertIn(b"[b'a'] [b'b']", self.answer(root, b"/a/b"))
        self.assertIn(b"404", self.answer(root, b"/c")[:20])


class _Paths(Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        assert request.sitepath == [] and request.sitepath is not request.prepath
        return b"hello %r %r" % (request.prepath, request.postpath)
