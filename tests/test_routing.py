"""
Tests for L{hfendpoint.routing}: the exact routes in front of Klein.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.internet.error import ConnectionDone
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from hfendpoint.web._routing import ExactRoutes
from hfendpoint.web._site import LimitedRequest


class Fallback:
    def __init__(self):
        self.rendered = []

    def render(self, request):
        self.rendered.append(request)
        return b"fallback"


def post(path):
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = b"POST"
    return request


class ExactRoutesTests(SynchronousTestCase):
    def setUp(self):
        self.fallback = Fallback()
        self.failures = []
        self.cancelled = []
        self.waiting = Deferred(lambda d: self.cancelled.append(True))
        self.calls = []

        async def waits(request):
            self.calls.append(request)
            return await self.waiting

        async def refuses(request):
            raise ValueError("bad")

        async def fails_when_cancelled(request):
            try:
                await self.waiting
            except CancelledError:
                raise ValueError("late")

        def on_failure(request, failure):
            self.failures.append(failure)
            return None if failure.check(CancelledError) else b"error:" + str(failure.value).encode()

        routes = {
            b"/v1/waits": waits,
            b"/v1/refuses": refuses,
            b"/v1/fails": fails_when_cancelled,
        }
        self.routes = ExactRoutes(self.fallback, routes, on_failure)

    def test_route_answers_with_its_body(self):
        request = post(b"/v1/waits")
        self.assertIs(self.routes.render(request), NOT_DONE_YET)
        self.assertEqual(request.written, [])
        self.waiting.callback(b"body")
        self.assertEqual((request.written, request.finished), ([b"body"], 1))
        self.assertEqual(self.fallback.rendered, [])

    def test_handler_that_wrote_itself(self):
        request = post(b"/v1/waits")
        self.routes.render(request)
        self.waiting.callback(None)
        self.assertEqual((request.written, request.finished), ([], 1))

    def test_other_methods_and_paths_go_to_klein(self):
        get = DummyRequest([b"v1", b"other"])
        unknown = post(b"/v1/other")
        slash = post(b"/v1/waits/")
        for request in (get, unknown, slash):
            self.assertEqual(self.routes.render(request), b"fallback")
        self.assertEqual(self.fallback.rendered, [get, unknown, slash])
        self.assertEqual(self.calls, [])

    def test_other_methods_on_a_route_are_not_allowed(self):
        """
        A route's path has POST only, whatever Klein's patterns would
        match it with (test_http_answers.py tests it through the gateway).
        """
        get = DummyRequest([b"v1", b"waits"])
        self.assertIn(b'"code":"method_not_allowed"', self.routes.render(get))
        self.assertEqual(get.responseCode, 405)
        self.assertEqual(get.responseHeaders.getRawHeaders(b"allow"), [b"POST"])
        self.assertEqual(self.fallback.rendered, [])

    def test_failure_is_rendered(self):
        request = post(b"/v1/refuses")
        self.routes.render(request)
        self.assertEqual((request.written, request.finished), ([b"error:bad"], 1))
        self.failures[0].trap(ValueError)

    def test_client_leaving_cancels_the_handler(self):
        request = post(b"/v1/waits")
        self.routes.render(request)
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertEqual(self.cancelled, [True])
        self.assertEqual((request.written, request.finished), ([], 0))
        # The failure handler is not asked to answer a client that left.
        self.assertEqual(self.failures, [])

    def gateway_request(self, path):
        request = LimitedRequest(DummyChannel(), False)
        request.method = b"POST"
        request.postpath = path.lstrip(b"/").split(b"/")
        return request

    def test_gateway_request_leaving_cancels_the_handler(self):
        """
        The gateway's own requests tell the route of a lost connection
        themselves, without a C{notifyFinish} Deferred.
        """
        request = self.gateway_request(b"/v1/waits")
        self.routes.render(request)
        self.assertEqual(request.notifications, [])
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.cancelled, [True])
        self.assertEqual(self.failures, [])
        self.assertFalse(request.finished)

    def test_gateway_request_failing_after_it_left_is_logged(self):
        request = self.gateway_request(b"/v1/fails")
        self.routes.render(request)
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.failures, [])

    def test_failure_after_the_client_left_is_logged(self):
        request = post(b"/v1/fails")
        self.routes.render(request)
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(request.written, [])
