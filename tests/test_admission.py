"""
Admission control and draining, with in-memory requests and a fake clock.
"""

import json

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.web._admission import AdmissionResource

from .openapi import validate


class HoldingResource(Resource):
    """
    Serves nothing until a test finishes the request.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.serving = []

    def render(self, request):
        self.serving.append(request)
        return NOT_DONE_YET


def post():
    request = DummyRequest([b"v1", b"chat", b"completions"])
    request.method = b"POST"
    return request


def finish(request):
    request.finish()


def error_of(request):
    body = json.loads(b"".join(request.written))
    validate("ErrorResponse", body)
    return body["error"]


class AdmissionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.inner = HoldingResource()
        self.admission = AdmissionResource(self.clock, self.inner, max_in_flight=2, max_waiting=2, queue_timeout=30)

    def render(self, request):
        result = self.admission.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def test_within_bounds_served_at_once(self):
        a, b = self.render(post()), self.render(post())
        self.assertEqual(self.inner.serving, [a, b])
        self.assertEqual(self.admission.in_flight, 2)

    def test_queue_then_serve_in_order(self):
        a, b, c, d = [self.render(post()) for _ in range(4)]
        self.assertEqual(self.inner.serving, [a, b])
        self.assertEqual(self.admission.waiting, 2)
        finish(a)
        self.assertEqual(self.inner.serving, [a, b, c])
        finish(b)
        self.assertEqual(self.inner.serving, [a, b, c, d])
        self.assertEqual((self.admission.in_flight, self.admission.waiting), (2, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full_queue_is_429_with_retry_after(self):
        for _ in range(4):
            self.render(post())
        refused = self.render(post())
        self.assertEqual(refused.responseCode, 429)
        self.assertEqual(refused.responseHeaders.getRawHeaders(b"retry-after"), [b"1"])
        error = error_of(refused)
        self.assertEqual(error["type"], "rate_limit_error")
        self.assertEqual(len(self.inner.serving), 2)

    def test_cheap_requests_are_never_queued(self):
        for _ in range(4):
            self.render(post())
        health = DummyRequest([b"health"])
        self.admission.render(health)
        self.assertIs(self.inner.serving[-1], health)

    def test_client_leaving_the_queue_frees_its_place(self):
        a, b, c = [self.render(post()) for _ in range(3)]
        c.processingFailed(Failure(Exception("gone")))
        self.assertEqual(self.admission.waiting, 0)
        finish(a)
        self.assertEqual(self.inner.serving, [a, b])
        self.assertEqual(self.admission.in_flight, 1)

    def test_client_leaving_while_served_frees_its_slot(self):
        a, b, c = [self.render(post()) for _ in range(3)]
        a.processingFailed(Failure(Exception("gone")))
        self.assertEqual(self.inner.serving, [a, b, c])

    def test_queue_timeout(self):
        a, b, c = [self.render(post()) for _ in range(3)]
        self.clock.advance(30)
        self.assertEqual(c.responseCode, 503)
        self.assertEqual(c.finished, 1)
        self.assertEqual(error_of(c)["code"], "server_overloaded")
        self.assertEqual(self.admission.waiting, 0)

    def test_close_refuses_new_work_and_drains(self):
        a = self.render(post())
        idle = self.admission.when_idle()
        self.admission.close()
        refused = self.render(post())
        self.assertEqual(refused.responseCode, 503)
        self.assertEqual(error_of(refused)["code"], "shutting_down")
        self.assertNoResult(idle)
        finish(a)
        self.successResultOf(idle)
        self.successResultOf(self.admission.when_idle())
