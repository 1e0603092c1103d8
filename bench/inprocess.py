#!/usr/bin/env python3
"""
The gateway's CPU time per small request, in one process, with no socket,
no scheduler and no other program in the measure: the whole gateway
(site, front resources, app, client, worker protocol, flusher) on a
memory reactor (L{hfendpoint.testing.MemoryGateway}) with its access log
on as the command has it, the HTTP requests written straight into its
channels, a worker in memory answering at once.

    python bench/inprocess.py [--chat] [--batches 150] [--runs 7]
    python bench/inprocess.py --against OTHER_TREE [--chat] [--rounds 6]

Over sockets (bench/history.py --pin) a change of a microsecond in a
request of eighty is lost in the machine's noise, from run to run; here
much less of it: with C{--against}, this tree's gateway and another's
(a checkout's top directory) are measured in turn, each round in a new
process with the same hash seed (dictionaries laid out alike), and each
gives the least of its rounds.

What it reports includes the in-memory worker's own time and moving bytes
in memory (the same for every build whose L{hfendpoint.testing} is the
same), so only differences mean anything; it needs builds that have
L{hfendpoint.testing.MemoryGateway}, and it does not measure the direct
send to sockets (the channels' transports are in memory).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from heapq import heapify, heappop, heappush  # noqa: E402

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.base import DelayedCall  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402

from hfendpoint.testing import MemoryGateway  # noqa: E402

import shapes  # noqa: E402

#: Connections served together, as the load client's 64.
CONNECTIONS = 64


class HeapClock(MemoryReactorClock):
    """
    A memory reactor whose timed calls are kept in a heap, as a real
    reactor's are: Twisted's C{Clock} sorts all of them on every
    C{callLater}, which with a timer per connection and per call would
    cost more than the rest of a request and make every timer look
    dear.
    """

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[DelayedCall] = []
        self._cancelled = 0

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> DelayedCall:
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self._forget, self._moved, seconds=self.seconds)
        heappush(self._heap, call)
        return call

    def _forget(self, call: DelayedCall) -> None:
        # Dropped when it comes up, or all at once when they are many,
        # as a real reactor does.
        self._cancelled += 1
        if self._cancelled > 50 and self._cancelled > len(self._heap) // 2:
            self._heap = [c for c in self._heap if c is not call and c.active()]
            heapify(self._heap)
            self._cancelled = 0

    def _moved(self, call: DelayedCall) -> None:
        # Brought forward: the old place in the heap is found stale when popped.
        heappush(self._heap, call)

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [call for call in self._heap if call.active()]

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        heap = self._heap
        while heap and heap[0].time <= self.rightNow:
            call = heappop(heap)
            if call.cancelled or call.called:
                continue
            if call.delayed_time:
                call.activate_delay()
                heappush(heap, call)
                continue
            if call.time > self.rightNow:
                heappush(heap, call)
                break
            call.called = 1
            call.func(*call.args, **call.kw)


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


class Discarded:
    """
    Where the access log's lines go: as the command writes them (to its
    standard error, by default), without a file in the measure.
    """

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def measure(chat: bool, batches: int) -> float:
    """
    Microseconds of CPU per request, over C{batches} rounds of one request
    on each connection.
    """
    gateway = MemoryGateway(
        {"embeddings": embeddings, "chat_completions": chat_completions},
        reactor=HeapClock(),
        worker={"model": shapes.MODEL},
        access_log=Discarded(),
    )
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


def against(other: str, chat: bool, rounds: int) -> None:
    """
    This tree and C{other} in turn, C{rounds} times, each in a process of
    its own on the same hash seed; the least of each.
    """
    trees = {"this tree": os.path.join(HERE, os.pardir, "src"), other: os.path.join(other, "src")}
    found: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, source in trees.items():
            env = dict(os.environ, PYTHONPATH=os.path.abspath(source), PYTHONHASHSEED="0")
            command = [sys.executable, os.path.abspath(__file__), "--runs", "3", "--quiet"] + (["--chat"] if chat else [])
            output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            found[name].append(float(output.split()[0]))
    base = min(found["this tree"])
    for name, values in found.items():
        print(f"{min(values):8.2f} us  {min(values) - base:+6.2f}  {name}  (rounds: {' '.join(f'{v:.1f}' for v in values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat", action="store_true", help="the small chat request rather than the embeddings one")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--against", metavar="TREE", help="measure this tree and TREE in turn")
    parser.add_argument("--rounds", type=int, default=6, help="with --against: rounds of each")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.against:
        against(args.against, args.chat, args.rounds)
        return 0
    try:
        from hfendpoint.service._tuning import YOUNG_THRESHOLD
    except ImportError:
        pass
    else:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    runs = [measure(args.chat, args.batches) for _ in range(args.runs)]
    if args.quiet:
        print(f"{min(runs):.3f}")
        return 0
    kind = "chat" if args.chat else "embeddings"
    # The machine's other work only ever adds to a run: the least is the
    # build's own cost, the median says how steady the machine was.
    print(f"small {kind}: {min(runs):.2f} us a request (least of {args.runs} runs; median {statistics.median(runs):.2f})")
    print("  runs:", " ".join(f"{run:.2f}" for run in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
