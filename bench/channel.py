#!/usr/bin/env python3
"""
What the gateway's hardened HTTP channel costs over Twisted's own, per
request, in-process: a whole small embeddings request fed to each channel
over a StringTransport, the site's resource answering after the read (as
the gateway answers once the worker has), time on the Clock of the site
(so that Twisted's idle timer is made and cancelled as on a real
reactor).

    python bench/channel.py [--requests 20000] [--rounds 3]

Both channels take the gateway's own request class
(L{hfendpoint.web._site.LimitedRequest}); only the channel differs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hfendpoint.web._hardened import HardenedChannel
from hfendpoint.web._site import GatewaySite, LimitedRequest

BODY = b'{"input": [[101, 2023, 2003, 1037, 6251, 102]], "model": "m"}'
REQUEST = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\n\r\n%s" % (len(BODY), BODY)
)
IDLE_TIMEOUT = 75


class Answer(Resource):
    """
    Answers each request once L{answer} is called, after the read.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list = []

    def render(self, request: Any) -> object:
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        waiting, self.waiting = self.waiting, []
        for request in waiting:
            request.write(b"{}")
            request.finish()


class TwistedChannel(http.HTTPChannel):
    """
    Twisted's channel as it is.
    """


def per_request(channel_class: type, requests: int) -> float:
    """
    Microseconds a request takes on a new channel of C{channel_class}.
    """
    answer = Answer()
    site = GatewaySite(answer, access_log=False)
    site.reactor = clock = Clock()
    channel = channel_class()
    channel.site = channel.factory = site
    channel.requestFactory = LimitedRequest
    channel.callLater = clock.callLater
    channel.timeOut = IDLE_TIMEOUT
    transport = StringTransport()
    channel.makeConnection(transport)
    for _ in range(200):
        channel.dataReceived(REQUEST)
        answer.answer()
    transport.clear()
    started = time.perf_counter()
    for _ in range(requests):
        channel.dataReceived(REQUEST)
        answer.answer()
        transport.clear()
    elapsed = time.perf_counter() - started
    assert channel.transport.connected and not channel.transport.disconnecting
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best = {"twisted": float("inf"), "hardened": float("inf")}
    for _ in range(args.rounds):
        best["twisted"] = min(best["twisted"], per_request(TwistedChannel, args.requests))
        best["hardened"] = min(best["hardened"], per_request(HardenedChannel, args.requests))
    print(f"Twisted's channel   {best['twisted']:6.2f} µs a request")
    print(f"hardened channel    {best['hardened']:6.2f} µs a request (+{best['hardened'] - best['twisted']:.2f})")


if __name__ == "__main__":
    main()
