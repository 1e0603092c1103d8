"""
Structured logs: the JSON observer, and the access log's JSON lines from a
real gateway.
"""

from __future__ import annotations

import io
import json

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.service._logging import JSONLinesObserver, json_log_observer

from .gateway import http_client, start_gateway


class ObserverTests(SynchronousTestCase):
    def setUp(self):
        self.stream = io.StringIO()
        publisher = LogPublisher(JSONLinesObserver(self.stream))
        self.log = Logger(namespace="hfendpoint.test", observer=publisher)

    def lines(self):
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def test_one_object_per_line(self):
        self.log.info("Served {path}", path="/v1/models", request_id="r-1", status=200)
        self.log.warn("two\nlines")
        first, second = self.lines()
        self.assertEqual(first["event"], "Served /v1/models")
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["namespace"], "hfendpoint.test")
        self.assertEqual((first["request_id"], first["status"], first["path"]), ("r-1", 200, "/v1/models"))
        self.assertRegex(first["time"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
        self.assertEqual(second["event"], "two\nlines")
        self.assertEqual(second["level"], "warn")

    def test_failure_has_its_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("It broke")
        [line] = self.lines()
        self.assertEqual(line["level"], "critical")
        self.assertIn("ZeroDivisionError", line["traceback"])

    def test_values_that_are_not_json(self):
        self.log.info("{thing}", thing=object(), worker=b"bytes")
        [line] = self.lines()
        self.assertIsInstance(line["worker"], str)

    def test_for_twistd(self):
        self.assertIsInstance(json_log_observer(io.StringIO()), JSONLinesObserver)


class AccessLogTests(TestCase):
    async def test_json_access_lines(self):
        stream = io.StringIO()
        url, _ = await start_gateway(self, log_format="json", access_log=stream)
        http = http_client(self)
        response = await http.get(url + "/v1/models", headers={"X-Request-Id": ["req-42"]})
        await response.content()
        for _ in range(100):
            if stream.getvalue():
                break
            await deferLater(reactor, 0, lambda: None)
        [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
        self.assertEqual(line["request_id"], "req-42")
        self.assertEqual((line["method"], line["path"], line["status"]), ("GET", "/v1/models", 200))
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertGreaterEqual(line["duration"], 0)
        self.assertGreater(line["bytes"], 0)
