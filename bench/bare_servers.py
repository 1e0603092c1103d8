#!/usr/bin/env python3
"""
The ceilings: the same HTTP answers as the gateway, byte for byte, from a
server that does nothing else.

    python bench/bare_servers.py --kind twisted|klein --port P --recordings FILE

The runner records the gateway's answer to every request a scenario sends
(bench/servers.py, ``record``) and hands the recordings to these servers, which
look each request up by path and body and replay the answer: a plain body,
a stream of server-sent events (the recorded first, token, finish and
[DONE] events, one write each, paced on the null worker's shared clock), or an
images response whose ``url`` points back here (GET serves the PNG).

``twisted`` is a bare twisted.web Resource (isLeaf, render_POST), ``klein``
a bare Klein app with one route per endpoint, both on the default reactor
and with Twisted's default Site, except that neither writes an access log
(the gateway does: see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import math
import secrets
import sys
from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes import make_png  # noqa: E402


class QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


class Table:
    """
    The recorded answers, by (path, body), and the images served by URL.
    """

    def __init__(self, path: str) -> None:
        with open(path) as f:
            recordings = json.load(f)
        self.routes: dict[tuple[bytes, bytes], dict] = {}
        for entry in recordings["routes"]:
            rec = {
                "kind": entry["kind"],
                "headers": [(k.encode(), v.encode()) for k, v in entry["headers"].items()],
                "tokens": entry.get("tokens", 0),
                "interval": entry.get("interval", 0.0),
            }
            for key in ("response", "first", "token", "finish", "done", "prefix", "suffix"):
                if key in entry:
                    rec[key] = base64.b64decode(entry[key])
            if rec["kind"] == "image_url":
                rec["png"] = make_png(entry["png_size"])
            self.routes[(entry["path"].encode(), entry["body"].encode("latin-1"))] = rec
        self.images: OrderedDict[str, bytes] = OrderedDict()

    def find(self, request: Any) -> Optional[dict]:
        body = request.content.read() if request.content is not None else b""
        return self.routes.get((request.path, body))

    def image_body(self, request: Any, rec: dict) -> bytes:
        image_id = "img-" + secrets.token_urlsafe(24)
        self.images[image_id] = rec["png"]
        while len(self.images) > 256:
            self.images.popitem(last=False)
        host = request.getHeader(b"host") or b"localhost"
        return rec["prefix"] + b"http://" + host + b"/v1/images/" + image_id.encode() + rec["suffix"]

    def image(self, request: Any, image_id: str) -> Optional[bytes]:
        png = self.images.get(image_id)
        if png is None:
            return None
        request.setHeader(b"content-type", b"image/png")
        request.setHeader(b"cache-control", b"private, max-age=3600")
        return png


def set_headers(request: Any, rec: dict) -> None:
    for name, value in rec["headers"]:
        request.setHeader(name, value)


def not_found(request: Any) -> bytes:
    request.setResponseCode(404)
    return b"not recorded"


# twisted.web


class Steps:
    """
    The null worker's clock (bench/null_worker.py, C{Steps}): every
    C{interval} seconds, each stream waiting for a step writes its next
    token; one timer for all the streams.
    """

    clocks: dict[float, "Steps"] = {}

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.epoch = 0.0
        self.waiting: list[Callable[[], None]] = []

    @classmethod
    def of(cls, interval: float) -> "Steps":
        steps = cls.clocks.get(interval)
        if steps is None:
            steps = cls.clocks[interval] = cls(interval)
        return steps

    def later(self, function: Callable[[], None]) -> None:
        if not self.waiting:
            now = reactor.seconds()
            if not self.epoch:
                self.epoch = now
            ticks = math.floor((now - self.epoch) / self.interval) + 1
            reactor.callLater(self.epoch + ticks * self.interval - now, self._step)
        self.waiting.append(function)

    def next(self) -> Deferred:
        d: Deferred = Deferred()
        self.later(lambda: None if d.called else d.callback(None))
        return d

    def _step(self) -> None:
        waiting, self.waiting = self.waiting, []
        for function in waiting:
            function()


class Pacer:
    """
    Writes a recorded stream one token per step of its clock.
    """

    def __init__(self, request: Any, rec: dict) -> None:
        self.request = request
        self.rec = rec
        self.steps = Steps.of(rec["interval"])
        self.sent = 1
        self.gone = False
        request.notifyFinish().addErrback(self._gone)
        self._next()

    def _gone(self, failure: Any) -> None:
        self.gone = True

    def _next(self) -> None:
        if self.sent >= self.rec["tokens"]:
            self.request.write(self.rec["finish"])
            self.request.write(self.rec["done"])
            self.request.finish()
        else:
            self.steps.later(self._tick)

    def _tick(self) -> None:
        if self.gone:
            return
        self.request.write(self.rec["token"])
        self.sent += 1
        self._next()


class BareResource(Resource):
    isLeaf = True

    def __init__(self, table: Table) -> None:
        super().__init__()
        self.table = table

    def render_GET(self, request: Any) -> Any:
        if request.path in (b"/", b"/health", b"/ready"):
            return b""
        if request.path.startswith(b"/v1/images/"):
            png = self.table.image(request, request.path[len(b"/v1/images/") :].decode())
            return png if png is not None else not_found(request)
        return not_found(request)

    def render_POST(self, request: Any) -> Any:
        rec = self.table.find(request)
        if rec is None:
            return not_found(request)
        set_headers(request, rec)
        kind = rec["kind"]
        if kind == "plain":
            return rec["response"]
        if kind == "image_url":
            return self.table.image_body(request, rec)
        request.write(rec["first"])
        if rec["interval"]:
            Pacer(request, rec)
            return NOT_DONE_YET
        token = rec["token"]
        for _ in range(rec["tokens"] - 1):
            request.write(token)
        request.write(rec["finish"])
        request.write(rec["done"])
        request.finish()
        return NOT_DONE_YET


# Klein


def klein_resource(table: Table) -> Any:
    from klein import Klein

    app = Klein()

    @app.route("/", methods=["GET"])
    def root(request: Any) -> bytes:
        return b""

    @app.route("/health", methods=["GET"])
    def health(request: Any) -> bytes:
        return b""

    @app.route("/ready", methods=["GET"])
    def ready(request: Any) -> bytes:
        return b""

    @app.route("/v1/images/<image_id>", methods=["GET"])
    def get_image(request: Any, image_id: str) -> bytes:
        png = table.image(request, image_id)
        return png if png is not None else not_found(request)

    async def answer(request: Any) -> Any:
        rec = table.find(request)
        if rec is None:
            return not_found(request)
        set_headers(request, rec)
        kind = rec["kind"]
        if kind == "plain":
            return rec["response"]
        if kind == "image_url":
            return table.image_body(request, rec)
        request.write(rec["first"])
        token = rec["token"]
        interval = rec["interval"]
        if interval:
            steps = Steps.of(interval)
            for _ in range(1, rec["tokens"]):
                await steps.next()
                request.write(token)
        else:
            for _ in range(rec["tokens"] - 1):
                request.write(token)
        request.write(rec["finish"])
        request.write(rec["done"])
        return None

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat(request: Any) -> Any:
        return await answer(request)

    @app.route("/v1/embeddings", methods=["POST"])
    async def embeddings(request: Any) -> Any:
        return await answer(request)

    @app.route("/v1/images/generations", methods=["POST"])
    async def images(request: Any) -> Any:
        return await answer(request)

    return app.resource()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("twisted", "klein"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--recordings", required=True)
    args = parser.parse_args()
    table = Table(args.recordings)
    resource = BareResource(table) if args.kind == "twisted" else klein_resource(table)
    reactor.listenTCP(args.port, QuietSite(resource), interface=args.host)
    print(f"bare {args.kind} server on http://{args.host}:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
