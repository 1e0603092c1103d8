#!/usr/bin/env python3
"""
The benchmark's own load client, run by bench/run.py in a process of its
own (never inside a server): ``python bench/loadclient.py SPEC.json``
prints one JSON object with what it measured, including its own CPU use so
that the runner can tell whether the client was the bottleneck.

Modes (``spec["mode"]``):

  - ``http_closed`` (asyncio): C keep-alive HTTP/1.1 connections, each
    sending the same request again as soon as the previous response is
    complete, for a fixed time; optionally fetches every ``url`` of an
    images response.
  - ``sse`` (bare epoll loop): N streaming requests sent at once on N
    connections opened and warmed beforehand; counts server-sent events and
    times their arrival.
  - ``msgpack_closed`` / ``msgpack_streams``: the same two shapes, spoken in
    MessagePack straight to a null worker this client spawns on a socket
    pair (HFENDPOINT_FD): the floor, without any gateway.
  - ``latency``: concurrency 1 with blocking sockets, alternating between
    the targets (msgpack floor and HTTP servers) so that a noisy machine
    disturbs every target alike: in blocks of ``block`` requests (each
    target measured in its steady state, as one client sees it), or
    request by request (``block`` 1: each target's caches cold, emptied by
    the other targets in between).

Everything is bounded: each mode has a duration or a timeout, and the
worker this client spawns is killed when it ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import select
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


_RECV_BUFFER = bytearray(1 << 20)
_RECV_VIEW = memoryview(_RECV_BUFFER)


def recv(sock: socket.socket) -> bytes:
    """
    One read of up to 1 MiB, into a buffer kept for every read: sock.recv(n)
    allocates n bytes each time, and at tens of thousands of reads a second
    that allocation (mapped fresh from the kernel above 128 KiB) was most of
    the client's CPU. Raises as recv does; b"" at the end.
    """
    n = sock.recv_into(_RECV_BUFFER)
    return bytes(_RECV_VIEW[:n])


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
            if not self.pending:
                # The usual case: the line is whole in this read; find it
                # in place rather than copy the read (a big body) twice.
                i = data.find(terminator, pos)
                if i >= 0:
                    line = data[pos:i]
                    pos = i + len(terminator)
                    self._line(line, out)
                    continue
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
            conn.parser.keep, conn.parser.body = False, None
            for item in json.loads(body)["data"]:
                url = urlsplit(item["url"])
                get = http_request("GET", host, port, url.path)
                s2, h2, b2, n2 = await asyncio.wait_for(conn.request(get), timeout)
                ok = ok and s2 == 200 and h2.get(b"content-type") == b"image/png"
                total += n2
                if measuring:
                    stats["fetched"] += 1
                    stats["fetched_bytes"] += n2
            conn.parser.keep, conn.parser.body = True, bytearray()
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


def connect_warm(host: str, port: int, count: int, timeout: float) -> list[socket.socket]:
    """
    Open C{count} keep-alive connections and send one C{GET /health} on
    each, so that every one is accepted and served before the measurement
    starts (the servers listen with Twisted's default backlog of 50).
    """
    socks = []
    health = http_request("GET", host, port, "/health")
    pending: dict[int, tuple[socket.socket, ResponseParser]] = {}
    poller = select.epoll()
    deadline = perf() + timeout
    try:
        for i in range(count):
            sock = socket.create_connection((host, port), timeout=15)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.send(health)
            socks.append(sock)
            pending[sock.fileno()] = (sock, ResponseParser(False))
            poller.register(sock.fileno(), select.EPOLLIN)
            if len(pending) >= 32 or i == count - 1:
                while pending and (len(pending) >= 16 or i == count - 1):
                    if perf() > deadline:
                        raise TimeoutError("the server did not answer the warm-up requests in time")
                    for fd, _ in poller.poll(0.5):
                        sock, parser = pending[fd]
                        data = recv(sock)
                        if not data:
                            raise ConnectionError("the server closed a connection during warm-up")
                        for status, *_ in parser.feed(data):
                            if status != 200:
                                raise ConnectionError(f"warm-up request answered {status}")
                            poller.unregister(fd)
                            del pending[fd]
    finally:
        poller.close()
    return socks


def sse(spec: dict) -> dict:
    """
    N streams on N connections, read with a bare epoll loop: at thousands
    of small events per second, asyncio's per-read overhead would make the
    client the bottleneck on a small machine.
    """
    host, port = spec["host"], spec["port"]
    raw = http_request("POST", host, port, spec["path"], spec["body"].encode("latin-1"))
    count, tokens = spec["streams"], spec["tokens"]
    timeout = spec.get("timeout", 60)
    gaps = array("d") if spec.get("gaps") else None
    remaining = [count]

    def one_done() -> None:
        remaining[0] -= 1

    socks = connect_warm(host, port, count, timeout)
    streams = {sock.fileno(): Stream(tokens, gaps, one_done) for sock in socks}
    by_fd = {sock.fileno(): sock for sock in socks}
    tails = {fd: b"" for fd in by_fd}
    poller = select.epoll(len(socks) + 1)
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    time.sleep(0.2)
    cpu0, t0 = cpu_self(), perf()
    for fd, sock in by_fd.items():
        streams[fd].sent = perf()
        sock.send(raw)
    deadline = t0 + timeout
    timed_out = False
    try:
        while remaining[0] > 0:
            if perf() > deadline:
                timed_out = True
                break
            for fd, _ in poller.poll(0.5):
                try:
                    data = recv(by_fd[fd])
                except BlockingIOError:
                    continue
                now = perf()
                stream = streams[fd]
                if not data:
                    poller.unregister(fd)
                    stream.finished(now)
                    continue
                if stream.ok is None:
                    stream.ok = data.startswith(b"HTTP/1.1 200")
                buf = tails[fd] + data
                events = buf.count(b"data: ")
                tails[fd] = buf[-5:]
                if events:
                    stream.arrived(events, now)
                if b"[DONE]" in buf or not stream.ok:
                    if not stream.done:
                        poller.unregister(fd)
                    stream.finished(now)
        wall = perf() - t0
        cpu = cpu_self() - cpu0
    finally:
        poller.close()
        for sock in socks:
            sock.close()
    return stream_report(list(streams.values()), gaps, t0, timed_out, cpu, wall)


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


class Floor:
    """
    A null worker of our own on a socket pair, spoken to in MessagePack
    with blocking reads: one socket needs no event loop.
    """

    def __init__(self) -> None:
        self.proc, self.sock = spawn_worker()
        self.sock.settimeout(30)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.next_id = 1
        self.call("hfendpoint.describe", {})

    def pack(self, name: str, data: Any) -> tuple[int, bytes]:
        ident = self.next_id
        self.next_id += 1
        return ident, msgpack.packb({"id": ident, "name": name, "data": data}, use_bin_type=True)

    def messages(self, timeout: float) -> Any:
        """
        The replies of the next read.
        """
        self.sock.settimeout(max(0.01, timeout))
        chunk = recv(self.sock)
        if not chunk:
            raise ConnectionError("the worker closed the socket")
        self.unpacker.feed(chunk)
        return self.unpacker

    def call(self, name: str, data: Any) -> int:
        ident, payload = self.pack(name, data)
        self.sock.sendall(payload)
        while True:
            for message in self.messages(30):
                if message.get("id") == ident and is_last(name, message):
                    return 500 if "error" in message else 200

    def close(self) -> None:
        stop_worker(self.proc, self.sock)


def msgpack_closed(spec: dict) -> dict:
    """
    C{concurrency} requests in flight at all times, each replaced by a new
    one as soon as its last reply arrives.
    """
    name, data, concurrency = spec["name"], spec["data"], spec["concurrency"]
    floor = Floor()
    try:
        started: dict[int, float] = {}

        def send() -> None:
            ident, payload = floor.pack(name, data)
            started[ident] = perf()
            floor.sock.sendall(payload)

        def run(seconds: float, latencies: Optional[array]) -> int:
            done = 0
            for _ in range(concurrency - len(started)):
                send()
            end = perf() + seconds
            while perf() < end:
                for message in floor.messages(end - perf() + 30):
                    if not is_last(name, message):
                        continue
                    if "error" in message:
                        raise RuntimeError(message["error"])
                    begun = started.pop(message["id"])
                    if latencies is not None:
                        latencies.append(perf() - begun)
                    done += 1
                    send()
            return done

        run(spec.get("warmup", 0.5), None)
        latencies = array("d")
        cpu0, wcpu0, t0 = cpu_self(), proc_cpu(floor.proc.pid), perf()
        count = run(spec["duration"], latencies)
        wall = perf() - t0
        return {
            "requests": count,
            "errors": 0,
            "wall": wall,
            "rps": count / wall,
            "latency": percentiles(latencies),
            "client_cpu_pct": 100 * (cpu_self() - cpu0) / wall,
            "worker_cpu_pct": 100 * (proc_cpu(floor.proc.pid) - wcpu0) / wall,
        }
    finally:
        floor.close()


def msgpack_streams(spec: dict) -> dict:
    count, tokens, data = spec["streams"], spec["tokens"], spec["data"]
    timeout = spec.get("timeout", 60)
    floor = Floor()
    try:
        gaps = array("d") if spec.get("gaps") else None
        remaining = [count]

        def one_done() -> None:
            remaining[0] -= 1

        streams: dict[int, Stream] = {}
        payloads = []
        for _ in range(count):
            ident, payload = floor.pack("chat_completions", data)
            streams[ident] = Stream(tokens, gaps, one_done)
            payloads.append(payload)
        cpu0, wcpu0, t0 = cpu_self(), proc_cpu(floor.proc.pid), perf()
        for stream in streams.values():
            stream.sent = t0
        floor.sock.sendall(b"".join(payloads))
        deadline = t0 + timeout
        timed_out = False
        while remaining[0] > 0:
            if perf() > deadline:
                timed_out = True
                break
            try:
                batch = floor.messages(deadline - perf())
            except socket.timeout:
                continue
            now = perf()
            # Counted as the HTTP client counts: the final reply stands for
            # the finish event and [DONE].
            for message in batch:
                stream = streams[message["id"]]
                reply = message.get("data")
                if reply is None:
                    stream.ok = False
                    stream.finished(now)
                elif reply["finish_reason"] is not None:
                    stream.ok = True
                    stream.arrived(2, now)
                    stream.finished(now)
                else:
                    stream.arrived(1, now)
        wall = perf() - t0
        report = stream_report(list(streams.values()), gaps, t0, timed_out, cpu_self() - cpu0, wall)
        report["worker_cpu_pct"] = 100 * (proc_cpu(floor.proc.pid) - wcpu0) / wall
        return report
    finally:
        floor.close()


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
            data = recv(self.sock)
            if not data:
                raise ConnectionError("server closed the connection")
            out = self.parser.feed(data)
            if out:
                return out[0][0]

    def close(self) -> None:
        self.sock.close()


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
                clients[target["name"]] = Floor()
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
            floors = [c.proc.pid for c in clients.values() if isinstance(c, Floor)]
            wcpu0 = sum(proc_cpu(pid) for pid in floors)
            cpu0, t0 = cpu_self(), perf()
            deadline = t0 + spec["duration"]
            rounds = 0
            block = spec.get("block", 1)
            while rounds < spec["count"] and perf() < deadline:
                for name, function, args in calls:
                    for _ in range(block):
                        started = perf()
                        status = function(*args)
                        samples[name].append(perf() - started)
                        if status != 200:
                            errors[name] += 1
                rounds += block
            wall = perf() - t0
            results[request["name"]] = {
                "rounds": rounds,
                "targets": {name: {**percentiles(s), "errors": errors[name]} for name, s in samples.items()},
                "client_cpu_pct": 100 * (cpu_self() - cpu0) / wall,
                "worker_cpu_pct": 100 * (sum(proc_cpu(pid) for pid in floors) - wcpu0) / wall,
            }
    finally:
        for client in clients.values():
            client.close()
    return results


ASYNC_MODES = {"http_closed": http_closed}
MODES = {"sse": sse, "msgpack_closed": msgpack_closed, "msgpack_streams": msgpack_streams, "latency": latency}


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    mode = spec["mode"]
    if mode in ASYNC_MODES:
        result = asyncio.run(ASYNC_MODES[mode](spec))
    else:
        result = MODES[mode](spec)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
