"""
The access log written to a stream once per reactor turn.
"""

import io

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import _XForwardedForAddress, combinedLogFormatter, datetimeToLogString
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from hfendpoint.web._accesslog import AccessLog, combined_line
from hfendpoint.web import GatewaySite


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


class BrokenStream:
    def write(self, text):
        raise OSError("closed terminal")

    def flush(self):
        pass


class AccessLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.stream = CountingStream()
        self.log = AccessLog(self.stream, self.clock)

    def test_lines_of_a_turn_in_one_write(self):
        self.log.write("one\n")
        self.log.write("two\n")
        self.assertEqual(self.stream.getvalue(), "")
        self.clock.advance(0)
        self.assertEqual(self.stream.getvalue(), "one\ntwo\n")
        self.assertEqual(self.stream.writes, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_next_turn_writes_again(self):
        self.log.write("one\n")
        self.clock.advance(0)
        self.log.write("two\n")
        self.clock.advance(0)
        self.assertEqual(self.stream.getvalue(), "one\ntwo\n")
        self.assertEqual(self.stream.writes, 2)

    def test_close_writes_what_is_held(self):
        self.log.write("one\n")
        self.log.close()
        self.assertEqual(self.stream.getvalue(), "one\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.stream.closed)

    def test_broken_stream_costs_only_lines(self):
        log = AccessLog(BrokenStream(), self.clock)
        log.write("one\n")
        self.clock.advance(0)
        log.write("two\n")
        log.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SiteTests(SynchronousTestCase):
    def request(self):
        request = DummyRequest([b""])
        request.method = b"POST"
        request.uri = b"/v1/embeddings"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 12
        return request

    def test_switch(self):
        """
        C{access_log=False} logs nothing; C{True} is Twisted's own log file.
        """
        logged = {}
        for enabled in (True, False):
            path = self.mktemp()
            site = GatewaySite(
                Resource(),
                access_log=enabled,
                logPath=path,
                logFormatter=lambda timestamp, request: "line",
                reactor=Clock(),
            )
            site.startFactory()
            site.log(self.request())
            site.stopFactory()
            with open(path) as f:
                logged[enabled] = f.read()
        self.assertEqual(logged, {True: "line\n", False: ""})

    def test_site_writes_combined_log_lines_to_a_stream(self):
        clock = Clock()
        stream = io.StringIO()
        site = GatewaySite(Resource(), access_log=stream, reactor=clock)
        site.startFactory()
        site.log(self.request())
        site.log(self.request())
        self.assertEqual(stream.getvalue(), "")
        clock.advance(0)
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn('"POST /v1/embeddings HTTP/1.1" 200 12', lines[0])
        site.log(self.request())
        site.stopFactory()
        self.assertEqual(len(stream.getvalue().splitlines()), 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lines_formatted_at_the_end_of_the_turn(self):
        """
        A request's line is formatted when the turn's lines are written,
        after its response has left, with the time it finished.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        stream = io.StringIO()
        formatted = []

        def formatter(timestamp, request):
            formatted.append(timestamp)
            return f"{request.code} at {timestamp}"

        site = GatewaySite(Resource(), access_log=stream, reactor=clock, logFormatter=formatter)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        site.log(self.request())
        self.assertEqual(formatted, [])
        clock.advance(5)
        then = datetimeToLogString(1_800_000_000)
        self.assertNotEqual(then, datetimeToLogString(1_800_000_005))
        self.assertEqual(stream.getvalue(), f"200 at {then}\n")


class CombinedLineTests(SynchronousTestCase):
    """
    L{combined_line} writes what Twisted's C{combinedLogFormatter} writes,
    faster when nothing needs escaping.
    """

    def request(self, address, method=b"POST", uri=b"/v1/embeddings", referer=None, agent=None, length=12):
        request = DummyRequest([b""])
        request.client = address
        request.method = method
        request.uri = uri
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = length
        if referer is not None:
            request.requestHeaders.setRawHeaders(b"referer", [referer])
        if agent is not None:
            request.requestHeaders.setRawHeaders(b"user-agent", [agent])
        return request

    def test_same_line_as_twisted(self):
        addresses = [
            IPv4Address("TCP", "127.0.0.1", 5000),
            IPv6Address("TCP", "::1", 5000),
            UNIXAddress(b"/run/hfendpoint.sock"),
            _XForwardedForAddress("10.0.0.7"),
            None,
        ]
        values = [
            None,
            b"OpenAI/Python 1.54.0",
            b'say "hi"',
            b"it's",
            b"both ' and \"",
            b"back\\slash",
            b"\x00\x7f\xff\xe9t\xc3\xa9",
            b"tab\there",
            b"",
        ]
        requests = []
        for address in addresses:
            for value in values:
                requests.append(self.request(address, referer=value, agent=value))
                requests.append(self.request(address, uri=b"/v1/x?q=" + (value or b""), method=value or b"GET", length=0))
        for request in requests:
            self.assertEqual(
                combined_line("[01/Dec/2026:17:00:00 +0000]", request),
                combinedLogFormatter("[01/Dec/2026:17:00:00 +0000]", request),
            )

    def test_plain_lines_are_written_without_twisted(self):
        """
        A request from an IP address with nothing to escape, nearly every
        one, does not cost a call of Twisted's formatter.
        """
        from hfendpoint.web import _accesslog

        plain = self.request(IPv4Address("TCP", "127.0.0.1", 5000), agent=b"curl/8.0")
        expected = combinedLogFormatter("[01/Dec/2026:17:00:00 +0000]", plain)
        self.patch(_accesslog, "combinedLogFormatter", None)
        self.assertEqual(combined_line("[01/Dec/2026:17:00:00 +0000]", plain), expected)

    def test_site_uses_it_unless_given_another(self):
        stream = io.StringIO()
        clock = Clock()
        site = GatewaySite(
            Resource(), access_log=stream, reactor=clock, logFormatter=lambda timestamp, request: "custom"
        )
        site.startFactory()
        self.addCleanup(site.stopFactory)
        site.log(self.request(IPv4Address("TCP", "127.0.0.1", 5000)))
        clock.advance(0)
        self.assertEqual(stream.getvalue(), "custom\n")
