"""
The gateway's HTTP/1.1 channel against hostile clients, through the raw
bytes of the whole gateway's site in memory: request smuggling through
ambiguous body framing, over-long request lines and heads, and clients
that drip a request head or body to hold a connection.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint import _twisted_private
from tests.gateway import start_memory_gateway

CLIENT = IPv4Address("TCP", "127.0.0.1", 40404)
SERVER = IPv4Address("TCP", "127.0.0.1", 80)


def parse_responses(data: bytes) -> list[tuple[int, bytes, dict[bytes, list[bytes]], bytes]]:
    """
    The responses in C{data}, each C{(status, reason, headers, body)},
    headers by lower-case name; bodies by C{Content-Length} only (the
    answers tested here all have one).
    """
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        _, status, reason = lines[0].split(b" ", 2)
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get(b"content-length", [b"0"])[0])
        body, data = data[:length], data[length:]
        responses.append((int(status), reason, headers, body))
    return responses


class RawClient:
    """
    One client connection to the site of a gateway in memory, written to
    and read as bytes.
    """

    transport_class = StringTransport

    def __init__(self, testCase: Any, memory: Any) -> None:
        self.memory = memory
        self.transport = self.transport_class(peerAddress=CLIENT, hostAddress=SERVER)
        self.protocol = memory.service.site.buildProtocol(CLIENT)
        self.protocol.makeConnection(self.transport)
        testCase.addCleanup(self.close)

    def send(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        if one_byte_at_a_time:
            for i in range(len(data)):
                if self.transport.disconnecting:
                    break
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)
        self.memory.flush()

    def responses(self) -> list[tuple[int, bytes, dict[bytes, list[bytes]], bytes]]:
        return parse_responses(self.transport.value())

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def close(self) -> None:
        if not self.transport.disconnected:
            self.transport.disconnected = True
            self.protocol.connectionLost(None)


class HTTPTestCase(SynchronousTestCase):
    """
    A gateway in memory, and what it logs at warning level or above.
    """

    options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.memory = start_memory_gateway(self, **self.options)
        self.logged: list[dict] = []

        def observe(event: dict) -> None:
            if event.get("log_failure") is not None or event.get("isError") or (
                event.get("log_level") is not None and event["log_level"].name in ("warn", "error", "critical")
            ):
                self.logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def client(self) -> RawClient:
        return RawClient(self, self.memory)

    def assertOpenAIError(self, response: Any, status: int, code: str) -> dict:
        got_status, _, headers, body = response
        self.assertEqual(got_status, status)
        self.assertEqual(headers[b"content-type"], [b"application/json"])
        error = json.loads(body)["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertEqual(error["code"], code)
        self.assertEqual(error["type"], "invalid_request_error")
        return error

    def assertRefusedAndClosed(self, client: RawClient, status: int, reason: bytes, code: str) -> None:
        """
        One answer, C{status} with its reason phrase and an OpenAI error,
        the connection closed after it, nothing logged.
        """
        responses = client.responses()
        self.assertEqual(len(responses), 1, responses)
        self.assertEqual(responses[0][1], reason)
        self.assertOpenAIError(responses[0], status, code)
        self.assertEqual(responses[0][2][b"connection"], [b"close"])
        self.assertTrue(client.closed)
        self.assertEqual(self.logged, [])


PIPELINED = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"


class SmugglingTests(HTTPTestCase):
    """
    Body framing a proxy in front could read another way is refused with
    a 400 and the connection closed, before the request after it is read
    (RFC 9112 section 6).
    """

    def refused(self, headers: bytes, body: bytes = b"0\r\n\r\n", **kwargs: Any) -> None:
        client = self.client()
        request = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body + PIPELINED
        client.send(request, **kwargs)
        self.assertRefusedAndClosed(client, 400, b"Bad Request", "invalid_transfer_encoding")

    def test_chunked_then_identity(self) -> None:
        self.refused(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n")

    def test_identity_then_chunked(self) -> None:
        self.refused(b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n")

    def test_chunked_twice(self) -> None:
        self.refused(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")

    def test_identity_with_content_length(self) -> None:
        self.refused(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"0\r\n\r\n")

    def test_content_length_then_chunked(self) -> None:
        self.refused(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")

    def test_chunked_then_content_length(self) -> None:
        self.refused(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")

    def test_one_byte_at_a_time(self) -> None:
        self.refused(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", one_byte_at_a_time=True)

    def test_one_chunked_body_is_served_and_the_next_request_too(self) -> None:
        """
        The control: one C{Transfer-Encoding: chunked} is served, and so is
        the request pipelined after it.
        """
        client = self.client()
        body = b'{"input": "hello", "model": "m"}'
        client.send(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + PIPELINED
        )
        statuses = [response[0] for response in client.responses()]
        self.assertEqual(statuses, [200, 200])
        self.assertFalse(client.closed)


    def test_plain_request_then_an_ambiguous_one_in_the_same_read(self) -> None:
        """
        A head passed whole at the start of a read lets only itself through
        unchecked: the one pipelined after it in the same read is checked.
        """
        client = self.client()
        ambiguous = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        )
        client.send(PIPELINED + ambiguous + PIPELINED)
        responses = client.responses()
        self.assertEqual([response[0] for response in responses], [200, 400])
        self.assertOpenAIError(responses[1], 400, "invalid_transfer_encoding")
        self.assertTrue(client.closed)

    def test_head_begun_in_the_read_before_is_checked(self) -> None:
        """
        A head whose first lines came in the read before, after a request
        answered within that read, is checked line by line when the read
        that ends it looks plain by itself.
        """
        client = self.client()
        client.send(
            PIPELINED + b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConte"
        )
        client.send(b"nt-Length: 5\r\n\r\n0\r\n\r\n" + PIPELINED)
        responses = client.responses()
        self.assertEqual([response[0] for response in responses], [200, 400])
        self.assertOpenAIError(responses[1], 400, "invalid_transfer_encoding")
        self.assertTrue(client.closed)

    def test_framing_words_in_other_headers_are_served(self) -> None:
        """
        A head that spells a framing header's name elsewhere is checked
        line by line, and served.
        """
        client = self.client()
        body = b'{"input": "hello", "model": "m"}'
        client.send(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Note: transfer-encoding, content-length\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body) + PIPELINED
        )
        self.assertEqual([response[0] for response in client.responses()], [200, 200])
        self.assertFalse(client.closed)


class LimitTests(HTTPTestCase):
    """
    A request line or head over Twisted's limits gets a 414 or a 431
    rather than a silent close.
    """

    def test_long_request_line(self) -> None:
        client = self.client()
        client.send(b"GET /" + b"a" * 16384 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRefusedAndClosed(client, 414, b"URI Too Long", "request_line_too_long")

    def test_long_request_line_without_its_end(self) -> None:
        client = self.client()
        client.send(b"GET /" + b"a" * 17000)
        self.assertRefusedAndClosed(client, 414, b"URI Too Long", "request_line_too_long")

    def test_long_header(self) -> None:
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 16384 + b"\r\n\r\n")
        self.assertRefusedAndClosed(client, 431, b"Request Header Fields Too Large", "request_headers_too_large")

    def test_long_head_of_short_headers(self) -> None:
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Header: %s\r\n" % (b"a" * 100,) * 200 + b"\r\n")
        self.assertRefusedAndClosed(client, 431, b"Request Header Fields Too Large", "request_headers_too_large")

    def test_too_many_headers(self) -> None:
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: a\r\n" * 501 + b"\r\n")
        self.assertRefusedAndClosed(client, 431, b"Request Header Fields Too Large", "request_headers_too_large")

    def test_long_line_one_byte_at_a_time(self) -> None:
        client = self.client()
        client.send(b"GET /" + b"a" * 16390, one_byte_at_a_time=True)
        self.assertRefusedAndClosed(client, 414, b"URI Too Long", "request_line_too_long")

    def test_under_the_limits_is_served(self) -> None:
        client = self.client()
        client.send(b"GET /v1/models?" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 8000 + b"\r\n\r\n")
        self.assertEqual([response[0] for response in client.responses()], [200])
        self.assertFalse(client.closed)

    def test_malformed_header(self) -> None:
        """
        A header Twisted's parser refuses gets an OpenAI-shaped 400 (its
        bare one on Twisted's public path).
        """
        if not _twisted_private.DIRECT:
            raise self.skipTest("Twisted answers its own bare 400 on the public path")
        client = self.client()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
        self.assertRefusedAndClosed(client, 400, b"Bad Request", "invalid_request")

    def test_refusing_a_head_request_sends_no_body(self) -> None:
        """
        A C{HEAD} request refused before any resource saw it gets the
        status and headers only: a body would be read as the next response.
        """
        if not _twisted_private.DIRECT:
            raise self.skipTest("Twisted answers its own bare 400 on the public path")
        client = self.client()
        client.send(b"HEAD /\x1f HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.closed)
        head, _, rest = client.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 Bad Request"), head)
        self.assertEqual(rest, b"")
