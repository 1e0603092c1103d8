#!/usr/bin/env python3
"""
The benchmark's own load client, run by bench/run.py in a process of its
own (never inside a server): ``python bench/loadclient.py SPEC.json``
prints one JSON object with what it measured, including its own CPU use so
that the runner can tell whether the client was the bottleneck.

Modes (``spec["mode"]``):

  - ``http_closed``: C keep-alive HTTP/1.1 connections, each sending the
    same request again as soon as the previous response is complete, for a
    fixed time; optionally fetches every ``url`` of an images response.
  - ``sse``: N streaming requests sent at once on N connections (opened
    beforehand); counts server-sent events and times their arrival.
  - ``msgpack_closed`` / ``msgpack_streams``: the same two shapes, but
    spoken in MessagePack straight to a null worker this client spawns on
    a socket pair (HFENDPOINT_FD): the floor, without any gateway.
  - ``latency``: concurrency 1 with blocking sockets, alternating request
    by request between the targets (msgpack floor and HTTP servers), so
    that a noisy machine disturbs every target alike.

Everything is bounded: each mode has a duration or a timeout, and the
worker this client spawns is killed when it ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from array import array
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "null_worker.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
perf = time.perf_counter


# Measuring


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """
    CPU seconds used so far by process C{pid} (user + system), or 0 if gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def percentiles(values: Any, points: tuple = (50, 90, 99, 99.9)) -> dict:
    if not len(values):
        return {}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p:g}": ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] for p in points}
    out["max"] = ordered[-1]
    out["min"] = ordered[0]
    out["mean"] = sum(ordered) / n
    out["n"] = n
    return out


# HTTP/1.1


def http_request(method: str, host: str, port: int, path: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if body or method == "POST":
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class ResponseParser:
    """
    Incremental HTTP/1.1 response parser for keep-alive connections:
    Content-Length or chunked bodies, kept or only counted.
    """

    HEAD, BODY, CHUNK_SIZE, CHUNK_END, TRAILER = range(5)

    def __init__(self, keep_body: bool = False) -> None:
        self.keep = keep_body
        self.pending = bytearray()
        self._reset()

    def _reset(self) -> None:
        self.state = self.HEAD
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.chunked = False
        self.remaining = 0
        self.body: Optional[bytearray] = bytearray() if self.keep else None
        self.nbytes = 0

    def _done(self, out: list) -> None:
        out.append((self.status, self.headers, bytes(self.body) if self.body is not None else None, self.nbytes))
        self._reset()

    def feed(self, data: bytes) -> list:
        out: list = []
        pos = 0
        n = len(data)
        while pos < n:
            if self.state == self.BODY:
                take = min(self.remaining, n - pos)
                if self.body is not None:
                    self.body += data[pos : pos + take]
                self.nbytes += take
                self.remaining -= take
                pos += take
                if self.remaining == 0:
                    if self.chunked:
                        self.state = self.CHUNK_END
                    else:
                        self._done(out)
                continue
            terminator = b"\r\n\r\n" if self.state == self.HEAD else b"\r\n"
            start = max(0, len(self.pending) - len(terminator) + 1)
            self.pending += data[pos:] if pos else data
            i = self.pending.find(terminator, start)
            if i < 0:
                return out
            line = bytes(self.pending[:i])
            data = bytes(self.pending[i + len(terminator) :])
            self.pending = bytearray()
            pos = 0
            n = len(data)
            self._line(line, out)
        return out

    def _line(self, line: bytes, out: list) -> None:
        state = self.state
        if state == self.HEAD:
            lines = line.split(b"\r\n")
            self.status = int(lines[0].split(b" ", 2)[1])
            for header in lines[1:]:
                name, _, value = header.partition(b":")
                self.headers[name.strip().lower()] = value.strip()
            if b"chunked" in self.headers.get(b"transfer-encoding", b"").lower():
                self.chunked = True
                self.state = self.CHUNK_SIZE
            else:
                self.remaining = int(self.headers.get(b"content-length", b"0"))
                self.state = self.BODY
                if self.remaining == 0:
                    self._done(out)
        elif state == self.CHUNK_SIZE:
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self.state = self.TRAILER
            else:
                self.remaining = size
                self.state = self.BODY
        elif state == self.CHUNK_END:
            self.state = self.CHUNK_SIZE
        elif state == self.TRAILER:
            if not line:
                self._done(out)


class HTTPConnection(asyncio.Protocol):
    def __init__(self, keep_body: bool) -> None:
        self.parser = ResponseParser(keep_body)
        self.waiter: Optional[asyncio.Future] = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        for response in self.parser.feed(data):
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(response)

    def connection_lost(self, exc: Any) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def request(self, raw: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter


async def open_many(factory: Callable[[], asyncio.Protocol], host: str, port: int, count: int, parallel: int = 32) -> list:
    """
    Open C{count} connections, a few at a time: the servers listen with
    Twisted's default backlog of 50, and a full accept queue drops SYNs
    (a client then waits a whole second for its retry).
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)

    async def one() -> Any:
        async with gate:
            _, protocol = await asyncio.wait_for(loop.create_connection(factory, host, port), 15)
            return protocol

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def http_closed(spec: dict) -> dict:
    host, port = spec["host"], spec["port"]
    raw = http_request(spec.get("method", "POST"), host, port, spec["path"], spec["body"].encode("latin-1"))
    fetch = spec.get("fetch_urls", False)
    timeout = spec.get("timeout", 30)
    conns = await open_many(lambda: HTTPConnection(keep_body=fetch), host, port, spec["concurrency"])
    latencies = array("d")
    stats = {"requests": 0, "bytes": 0, "errors": 0, "fetched": 0, "fetched_bytes": 0, "sizes": set(), "statuses": {}}
    measuring = False

    async def one(conn: HTTPConnection) -> None:
        started = perf()
        status, headers, body, nbytes = await asyncio.wait_for(conn.request(raw), timeout)
        total = nbytes
        ok = status == 200
        if fetch and ok:
            for item in json.loads(body)["data"]:
                url = urlsplit(item["url"])
                get = http_request("GET", host, port, url.path)
                s2, h2, b2, n2 = await asyncio.wait_for(conn.request(get), timeout)
                ok = ok and s2 == 200 and h2.get(b"content-type") == b"image/png"
                total += n2
                if measuring:
                    stats["fetched"] += 1
                    stats["fetched_bytes"] += n2
        if measuring:
            latencies.append(perf() - started)
            stats["requests"] += 1
            stats["bytes"] += total
            stats["sizes"].add(nbytes)
            stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
            if not ok:
                stats["errors"] += 1

    async def loop_until(conn: HTTPConnection, deadline: float) -> None:
        while perf() < deadline:
            await one(conn)

    warmup = spec.get("warmup", 0.5)
    if warmup:
        end = perf() + warmup
        await asyncio.gather(*(loop_until(c, end) for c in conns))
    measuring = True
    cpu0, t0 = cpu_self(), perf()
    await asyncio.gather(*(loop_until(c, t0 + spec["duration"]) for c in conns))
    wall = perf() - t0
    cpu = cpu_self() - cpu0
    for c in conns:
        c.transport.close()
    sizes = sorted(stats.pop("sizes"))
    return {
        **stats,
        "statuses": {str(k): v for k, v in stats["statuses"].items()},
        "size_min": sizes[0] if sizes else 0,
        "size_max": sizes[-1] if sizes else 0,
        "wall": wall,
        "rps": stats["requests"] / wall,
        "mbps": stats["bytes"] / wall / 1e6,
        "latency": percentiles(latencies),
        "client_cpu": cpu,
        "client_cpu_pct": 100 * cpu / wall,
    }


# Server-sent events


class Stream:
    """
    Bookkeeping of one stream of C{tokens} token events followed by the
    finish event and C{[DONE]}; records inter-token gaps into C{gaps}.
    """

    __slots__ = ("tokens", "gaps", "events", "first", "last", "done", "end", "ok", "sent", "on_done")

    def __init__(self, tokens: int, gaps: Optional[array], on_done: Callable[[], None]) -> None:
        self.tokens = tokens
        self.gaps = gaps
        self.events = 0
        self.first = 0.0
        self.last = 0.0
        self.done = False
        self.end = 0.0
        self.ok: Optional[bool] = None
        self.sent = 0.0
        self.on_done = on_done

    def arrived(self, count: int, now: float) -> None:
        seen = self.events
        self.events = seen + count
        tokens = self.tokens
        if seen == 0:
            self.first = now
        low = seen if seen > 0 else 1
        high = min(seen + count, tokens)
        if low < high and self.gaps is not None:
            self.gaps.append(now - self.last if low == seen else 0.0)
            if high - low > 1:
                self.gaps.extend(array("d", bytes(8 * (high - low - 1))))
        if seen < tokens:
            self.last = now

    def finished(self, now: float) -> None:
        if not self.done:
            self.done = True
            self.end = now
            self.on_done()


class SSEConnection(asyncio.Protocol):
    __slots__ = ("stream", "tail", "transport")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.tail = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = perf()
        stream = self.stream
        if stream.ok is None:
            stream.ok = data.startswith(b"HTTP/1.1 200")
        buf = self.tail + data
        count = buf.count(b"data: ")
        self.tail = buf[-5:]
        if count:
            stream.arrived(count, now)
        if b"[DONE]" in buf or (not stream.ok):
            stream.finished(now)

    def connection_lost(self, exc: Any) -> None:
        self.stream.finished(perf())


def stream_report(streams: list, gaps: Optional[array], t0: float, deadline_hit: bool, cpu: float, wall: float) -> dict:
    tokens = sum(min(s.events, s.tokens) for s in streams)
    complete = sum(1 for s in streams if s.ok and s.done and s.events == s.tokens + 2)
    ends = [s.end for s in streams if s.done]
    span = (max(ends) - t0) if ends else wall
    expected = sum(s.tokens for s in streams)
    report = {
        "streams": len(streams),
        "complete_streams": complete,
        "tokens": tokens,
        "tokens_expected": expected,
        "all_tokens_arrived": tokens == expected and complete == len(streams),
        "timed_out": deadline_hit,
        "span": span,
        "tokens_per_s": tokens / span if span > 0 else 0.0,
        "ttft": percentiles([s.first - s.sent for s in streams if s.first]),
        "client_cpu": cpu,
        "client_cpu_pct": 100 * cpu / wall if wall else 0.0,
        "wall": wall,
    }
    if gaps is not None:
        report["gaps"] = percentiles(gaps)
    return report


async def wait_all(streams: list, all_done: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(all_done.wait(), timeout)
        return False
    except asyncio.TimeoutError:
        return True


async def sse(spec: dict) -> dict:
    host, port = spec["host"], spec["port"]
    raw = http_request("POST", host, port, spec["path"], spec["body"].encode("latin-1"))
    count, tokens = spec["streams"], spec["tokens"]
    gaps = array("d") if spec.get("gaps") else None
    all_done = asyncio.Event()
    remaining = [count]

    def one_done() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            all_done.set()

    streams = [Stream(tokens, gaps, one_done) for _ in range(count)]
    it = iter(streams)
    conns = await open_many(lambda: SSEConnection(next(it)), host, port, count)
    await asyncio.sleep(0.2)
    cpu0, t0 = cpu_self(), perf()
    for conn in conns:
        conn.stream.sent = perf()
        conn.transport.write(raw)
    timed_out = await wait_all(streams, all_done, spec.get("timeout", 60))
    wall = perf() - t0
    cpu = cpu_self() - cpu0
    for conn in conns:
        conn.transport.close()
    return stream_report(streams, gaps, t0, timed_out, cpu, wall)


# The floor: MessagePack straight to a worker


def spawn_worker() -> tuple[subprocess.Popen, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    env = dict(os.environ, HFENDPOINT_FD=str(theirs.fileno()))
    proc = subprocess.Popen(
        [sys.executable, WORKER], env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL
    )
    theirs.close()
    return proc, ours


def stop_worker(proc: subprocess.Popen, sock: socket.socket) -> None:
    sock.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def is_last(name: str, reply: dict) -> bool:
    if "error" in reply:
        return True
    if name == "chat_completions":
        data = reply.get("data")
        return isinstance(data, dict) and data.get("finish_reason") is not None
    return True


class MsgpackClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.handlers: dict[int, Callable[[dict], None]] = {}
        self.next_id = 1
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        handlers = self.handlers
        for message in self.unpacker:
            handler = handlers.get(message["id"])
            if handler is not None:
                handler(message)

    def send(self, name: str, data: Any, handler: Callable[[dict], None]) -> int:
        ident = self.next_id
        self.next_id += 1
        self.handlers[ident] = handler
        self.transport.write(msgpack.packb({"id": ident, "name": name, "data": data}, use_bin_type=True))
        return ident

    def call(self, name: str, data: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        replies = []

        def on_reply(message: dict) -> None:
            replies.append(message)
            if is_last(name, message):
                del self.handlers[message["id"]]
                if not future.done():
                    future.set_result(replies)

        self.send(name, data, on_reply)
        return future


async def with_worker(run: Callable[[MsgpackClient, int], Any]) -> dict:
    proc, sock = spawn_worker()
    try:
        sock.setblocking(False)
        _, client = await asyncio.get_running_loop().create_unix_connection(MsgpackClient, sock=sock)
        await asyncio.wait_for(client.call("hfendpoint.describe", {}), 15)
        result = await run(client, proc.pid)
        client.transport.close()
        return result
    finally:
        stop_worker(proc, sock)


async def msgpack_closed(spec: dict) -> dict:
    name, data = spec["name"], spec["data"]

    async def run(client: MsgpackClient, pid: int) -> dict:
        latencies = array("d")
        count = [0]
        measuring = [False]

        async def loop_until(deadline: float) -> None:
            while perf() < deadline:
                started = perf()
                replies = await asyncio.wait_for(client.call(name, data), 30)
                if "error" in replies[-1]:
                    raise RuntimeError(replies[-1]["error"])
                if measuring[0]:
                    latencies.append(perf() - started)
                    count[0] += 1

        end = perf() + spec.get("warmup", 0.5)
        await asyncio.gather(*(loop_until(end) for _ in range(spec["concurrency"])))
        measuring[0] = True
        cpu0, wcpu0, t0 = cpu_self(), proc_cpu(pid), perf()
        await asyncio.gather(*(loop_until(t0 + spec["duration"]) for _ in range(spec["concurrency"])))
        wall = perf() - t0
        return {
            "requests": count[0],
            "errors": 0,
            "wall": wall,
            "rps": count[0] / wall,
            "latency": percentiles(latencies),
            "client_cpu_pct": 100 * (cpu_self() - cpu0) / wall,
            "worker_cpu_pct": 100 * (proc_cpu(pid) - wcpu0) / wall,
        }

    return await with_worker(run)


async def msgpack_streams(spec: dict) -> dict:
    count, tokens = spec["streams"], spec["tokens"]
    data = spec["data"]

    async def run(client: MsgpackClient, pid: int) -> dict:
        gaps = array("d") if spec.get("gaps") else None
        all_done = asyncio.Event()
        remaining = [count]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

        streams = [Stream(tokens, gaps, one_done) for _ in range(count)]

        def handler(stream: Stream) -> Callable[[dict], None]:
            # Count as the HTTP client does: the final reply stands for the
            # finish event and [DONE].
            def on_reply(message: dict) -> None:
                now = perf()
                reply = message.get("data")
                if "error" in message:
                    stream.ok = False
                    stream.finished(now)
                elif reply.get("finish_reason") is not None:
                    stream.ok = True
                    stream.arrived(2, now)
                    stream.finished(now)
                else:
                    stream.arrived(1, now)

            return on_reply

        cpu0, wcpu0, t0 = cpu_self(), proc_cpu(pid), perf()
        for stream in streams:
            stream.sent = perf()
            client.send("chat_completions", data, handler(stream))
        timed_out = await wait_all(streams, all_done, spec.get("timeout", 60))
        wall = perf() - t0
        report = stream_report(streams, gaps, t0, timed_out, cpu_self() - cpu0, wall)
        report["worker_cpu_pct"] = 100 * (proc_cpu(pid) - wcpu0) / wall
        return report

    return await with_worker(run)


# Latency at concurrency 1


class BlockingHTTP:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = ResponseParser(False)

    def call(self, raw: bytes) -> int:
        self.sock.sendall(raw)
        while True:
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError("server closed the connection")
            out = self.parser.feed(data)
            if out:
                return out[0][0]

    def close(self) -> None:
        self.sock.close()


class BlockingMsgpack:
    def __init__(self) -> None:
        self.proc, self.sock = spawn_worker()
        self.sock.settimeout(30)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.next_id = 1
        self.call("hfendpoint.describe", {})

    def call(self, name: str, data: Any) -> int:
        ident = self.next_id
        self.next_id += 1
        self.sock.sendall(msgpack.packb({"id": ident, "name": name, "data": data}, use_bin_type=True))
        while True:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("worker closed the socket")
            self.unpacker.feed(chunk)
            for message in self.unpacker:
                if message.get("id") == ident and is_last(name, message):
                    return 500 if "error" in message else 200

    def close(self) -> None:
        stop_worker(self.proc, self.sock)


def latency(spec: dict) -> dict:
    """
    For each request kind, alternate request by request between the
    targets; C{spec["targets"]} lists C{{"name", "kind": "msgpack"|"http",
    "port"}} and C{spec["requests"]} C{{"name", "path", "body", "call",
    "data"}}.
    """
    clients: dict[str, Any] = {}
    results: dict = {}
    try:
        for target in spec["targets"]:
            if target["kind"] == "msgpack":
                clients[target["name"]] = BlockingMsgpack()
            else:
                clients[target["name"]] = BlockingHTTP(spec["host"], target["port"])
        for request in spec["requests"]:
            calls = []
            for target in spec["targets"]:
                client = clients[target["name"]]
                if target["kind"] == "msgpack":
                    calls.append((target["name"], client.call, (request["call"], request["data"])))
                else:
                    raw = http_request("POST", spec["host"], target["port"], request["path"], request["body"].encode("latin-1"))
                    calls.append((target["name"], client.call, (raw,)))
            for _ in range(spec.get("warmup", 200)):
                for _, function, args in calls:
                    function(*args)
            samples = {name: array("d") for name, _, _ in calls}
            errors = {name: 0 for name, _, _ in calls}
            cpu0, t0 = cpu_self(), perf()
            deadline = t0 + spec["duration"]
            rounds = 0
            while rounds < spec["count"] and perf() < deadline:
                for name, function, args in calls:
                    started = perf()
                    status = function(*args)
                    samples[name].append(perf() - started)
                    if status != 200:
                        errors[name] += 1
                rounds += 1
            wall = perf() - t0
            results[request["name"]] = {
                "rounds": rounds,
                "targets": {name: {**percentiles(s), "errors": errors[name]} for name, s in samples.items()},
                "client_cpu_pct": 100 * (cpu_self() - cpu0) / wall,
            }
    finally:
        for client in clients.values():
            client.close()
    return results


MODES = {
    "http_closed": http_closed,
    "sse": sse,
    "msgpack_closed": msgpack_closed,
    "msgpack_streams": msgpack_streams,
}


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    mode = spec["mode"]
    if mode == "latency":
        result = latency(spec)
    else:
        result = asyncio.run(MODES[mode](spec))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
