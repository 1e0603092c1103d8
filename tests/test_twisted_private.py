"""
The one module that uses names Twisted keeps private: it checks them when
it is imported, and the gateway takes Twisted's public path when one is
missing or when it is told to.
"""

import os
import subprocess
import sys

from twisted.internet import abstract
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.http_headers import Headers

from hfendpoint import _twisted_private

#: Imports the module in a fresh interpreter, after the lines given, and
#: prints whether it takes the direct path, and which channel the
#: gateway's site then gives a connection.
PROBE = """
{before}
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from hfendpoint import _twisted_private
from hfendpoint.web import GatewaySite, TurnFlusher

site = GatewaySite(Resource(), flusher=TurnFlusher(Clock()), reactor=Clock())
protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
channel = getattr(protocol, "_channel", protocol)
print(_twisted_private.DIRECT, type(channel).__name__)
print(_twisted_private.PUBLIC_ONLY_REASON)
"""


def probe(before="", **environment):
    env = {k: v for k, v in os.environ.items() if k != _twisted_private.PUBLIC_ONLY_VARIABLE}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    first, reason = out.splitlines()
    return first, reason


class CheckTests(SynchronousTestCase):
    def test_this_twisted_has_every_name(self):
        """
        If this fails, a Twisted upgrade took away or reshaped a name the
        fast paths use: the gateway still works, on the public path, but
        slower; see the module's docstring.
        """
        self.assertEqual(_twisted_private.missing_names(), [])

    def test_a_missing_channel_name_is_found(self):
        self.patch(http, "_GenericHTTPChannelProtocol", None)
        self.assertEqual(_twisted_private.missing_names(), ["_GenericHTTPChannelProtocol"])

    def test_a_reshaped_transport_name_is_found(self):
        self.patch(abstract.FileDescriptor, "dataBuffer", [])
        self.assertEqual(_twisted_private.missing_names(), ["dataBuffer"])

    def test_a_transport_name_set_elsewhere_is_found(self):
        real = abstract.FileDescriptor.__init__

        def init(self, reactor=None):
            real(self, reactor)
            del self._tempDataLen

        self.patch(abstract.FileDescriptor, "__init__", init)
        self.assertEqual(_twisted_private.missing_names(), ["_tempDataLen"])

    def test_a_reshaped_header_table_is_found(self):
        def lowered(self, name, values):
            self._rawHeaders[name.lower()] = list(values)

        self.patch(Headers, "setRawHeaders", lowered)
        self.assertEqual(_twisted_private.missing_names(), ["Headers._rawHeaders"])

    def test_send_to_another_transport_writes_to_it(self):
        transport = StringTransport()
        _twisted_private.send(transport, b"one")
        _twisted_private.send_parts(transport, [b"two", b"three"])
        self.assertEqual(transport.value(), b"onetwothree")


class HeaderTests(SynchronousTestCase):
    """
    The header table and the setter read and write what Twisted's public
    methods do, on the path this process takes and on the other.
    """

    def each_path(self):
        yield _twisted_private.header_table, _twisted_private.set_header
        yield _twisted_private._table, _twisted_private._set_in_table
        yield _twisted_private._table_copy, _twisted_private._set_through_twisted

    def test_a_header_set_is_read_by_twisted(self):
        for _, set_header in self.each_path():
            headers = Headers({b"x-request-id": [b"old"]})
            set_header(headers, b"X-Request-Id", b"new")
            set_header(headers, b"Content-Length", b"12")
            self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"new"])
            self.assertEqual(
                dict(headers.getAllRawHeaders()), {b"X-Request-Id": [b"new"], b"Content-Length": [b"12"]}
            )

    def test_the_table_has_what_twisted_set(self):
        for header_table, _ in self.each_path():
            headers = Headers()
            headers.addRawHeader(b"content-type", b"text/plain")
            headers.addRawHeader(b"CONTENT-TYPE", b"application/json")
            table = header_table(headers)
            self.assertEqual(table.get(b"Content-Type"), [b"text/plain", b"application/json"])
            self.assertNotIn(b"X-Forwarded-For", table)


class ImportTests(SynchronousTestCase):
    """
    What the module decides when it is imported, in a fresh interpreter.
    """

    def test_direct_with_every_name(self):
        self.assertEqual(probe(), ("True GatewayChannel", "None"))

    def test_public_when_forced(self):
        for value in ("1", "yes"):
            first, reason = probe(**{_twisted_private.PUBLIC_ONLY_VARIABLE: value})
            self.assertEqual(first, "False HardenedChannel")
            self.assertIn(_twisted_private.PUBLIC_ONLY_VARIABLE, reason)

    def test_not_forced_by_zero_or_empty(self):
        for value in ("0", ""):
            self.assertEqual(
                probe(**{_twisted_private.PUBLIC_ONLY_VARIABLE: value}), ("True GatewayChannel", "None")
            )

    def test_public_when_a_name_is_missing(self):
        first, reason = probe(
            "import twisted.internet.abstract as a; del a.FileDescriptor._maybePauseProducer"
        )
        self.assertEqual(first, "False HardenedChannel")
        self.assertEqual(reason, "this Twisted has no _maybePauseProducer")
