#!/usr/bin/env python3
"""
The gateway's CPU time per small request, in one process, with no socket,
no scheduler and no other program in the measure: the whole gateway
(site, front resources, app, client, worker protocol, flusher) on a
memory reactor (L{hfendpoint.testing.MemoryGateway}), the HTTP requests
written straight into its channels, a worker in memory answering at once.

    python bench/inprocess.py [--chat] [--batches 300] [--runs 7]
    PYTHONPATH=OTHER_TREE/src python bench/inprocess.py   # another build

Over sockets (bench/history.py --pin) a change of a microsecond in a
request of eighty is lost in the machine's noise, from run to run; here
it is not, so two builds can be told apart: run each a few times, in
turn. What it reports includes the in-memory worker's own time and
moving bytes in memory (the same for every build whose
L{hfendpoint.testing} is the same), so only differences mean anything;
it needs a build that has L{hfendpoint.testing.MemoryGateway}, and it
does not measure the direct send to sockets (the channels' transports
are in memory).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from hfendpoint.testing import MemoryGateway  # noqa: E402

import shapes  # noqa: E402

#: Connections served together, as the load client's 64.
CONNECTIONS = 64


def embeddings(data: dict) -> Any:
    dims = data["input"][0][0] - shapes.DIM_BASE
    return {"embeddings": [shapes.fixed_vector(dims) for _ in data["input"]]}


def chat_completions(data: dict) -> Any:
    tokens = data.get("bench_tokens", shapes.DEFAULT_CHAT_TOKENS)
    for _ in range(tokens):
        yield {"content": shapes.TOKEN_TEXT, "finish_reason": None}
    yield {
        "content": "",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3},
    }


def request_bytes(chat: bool) -> bytes:
    if chat:
        path = b"/v1/chat/completions"
        body = shapes.body(
            {"model": shapes.MODEL, "messages": [{"role": "user", "content": "Say something."}], "bench_tokens": 8}
        )
    else:
        path = b"/v1/embeddings"
        body = shapes.body(shapes.embeddings_data(1, 8, 64))
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
    )


def connections(gateway: MemoryGateway) -> list[tuple[Any, StringTransport]]:
    opened = []
    for i in range(CONNECTIONS):
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + i)
        channel = gateway.service.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel.makeConnection(transport)
        opened.append((channel, transport))
    return opened


def serve(gateway: MemoryGateway, opened: list, request: bytes) -> None:
    """
    One request on every connection, served to the end.
    """
    for channel, _ in opened:
        channel.dataReceived(request)
    gateway.flush()
    # The worker in memory keeps every message it received, for tests.
    gateway.worker.received.clear()
    for _, transport in opened:
        if not transport.value().startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected answer: {transport.value()[:300]!r}")
        transport.clear()


def measure(chat: bool, batches: int) -> float:
    """
    Microseconds of CPU per request, over C{batches} rounds of one request
    on each connection.
    """
    gateway = MemoryGateway({"embeddings": embeddings, "chat_completions": chat_completions}, worker={"model": shapes.MODEL})
    gateway.start()
    opened = connections(gateway)
    request = request_bytes(chat)
    for _ in range(20):
        serve(gateway, opened, request)
    # As the command runs the gateway (hfendpoint.service._tuning): what
    # is there once it serves is never collected again.
    gc.collect()
    gc.freeze()
    started = time.process_time()
    for _ in range(batches):
        serve(gateway, opened, request)
    elapsed = time.process_time() - started
    gateway.stop()
    gc.unfreeze()
    return elapsed / (batches * CONNECTIONS) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat", action="store_true", help="the small chat request rather than the embeddings one")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    try:
        from hfendpoint.service._tuning import YOUNG_THRESHOLD
    except ImportError:
        pass
    else:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    runs = [measure(args.chat, args.batches) for _ in range(args.runs)]
    kind = "chat" if args.chat else "embeddings"
    print(f"small {kind}: {statistics.median(runs):.2f} us a request (median of {args.runs}; "
          f"{min(runs):.2f}-{max(runs):.2f})")
    print("  runs:", " ".join(f"{run:.2f}" for run in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
