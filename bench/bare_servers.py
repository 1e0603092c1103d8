#!/usr/bin/env python3
"""
The ceilings: the same HTTP answers as the gateway, byte for byte, from a
server that does nothing else.

    python bench/bare_servers.py --kind twisted|klein --port P --recordings FILE

The runner records the gateway's answer to every request a scenario sends
(bench/run.py, ``record``) and hands the recordings to these servers, which
look each request up by path and body and replay the answer: a plain body,
a stream of server-sent events (the recorded first, token, finish and
[DONE] events, one write each, paced as the null worker paces), or an
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
import secrets
import sys
import time
from collections import OrderedDict
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.task import deferLater
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


class Pacer:
    """
    Writes a recorded stream with reactor.callLater on the null worker's
    schedule (token i at start + i * interval).
    """

    def __init__(self, request: Any, rec: dict) -> None:
        self.request = request
        self.rec = rec
        self.start = time.monotonic()
        self.sent = 1
        self.call: Any = None
        self.gone = False
        request.notifyFinish().addErrback(self._gone)
        self._schedule()

    def _gone(self, failure: Any) -> None:
        self.gone = True
        if self.call is not None and self.call.active():
            self.call.cancel()

    def _schedule(self) -> None:
        if self.sent >= self.rec["tokens"]:
            self._end()
            return
        delay = self.start + self.sent * self.rec["interval"] - time.monotonic()
        self.call = reactor.callLater(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        self.call = None
        if self.gone:
            return
        self.request.write(self.rec["token"])
        self.sent += 1
        self._schedule()

    def _end(self) -> None:
        self.request.write(self.rec["finish"])
        self.request.write(self.rec["done"])
        self.request.finish()


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
            start = time.monotonic()
            for i in range(1, rec["tokens"]):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await deferLater(reactor, delay, lambda: None)
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
