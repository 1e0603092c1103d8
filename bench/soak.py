#!/usr/bin/env python3
"""
A bounded load and soak run: many thousand requests at high concurrency
against a real gateway and the null worker, a mix of plain and streamed
chat, embeddings, and clients that hang up mid-stream. It passes when no
request failed and the gateway's memory did not grow from the second
round to the last (the first warms up).

    python bench/soak.py [--requests 20000] [--concurrency 128] [--rounds 4]

Loopback only; every request and the whole run have timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "bench_tokens": 20}
MIX = [
    ("/v1/chat/completions", CHAT, "plain"),
    ("/v1/chat/completions", dict(CHAT, stream=True), "stream"),
    ("/v1/chat/completions", dict(CHAT, stream=True, bench_tokens=2000, bench_interval=0.001), "hang-up"),
    ("/v1/embeddings", {"model": "m", "input": [[1, 2, 3, 4, 5, 6, 7, 8]]}, "plain"),
    ("/v1/embeddings", {"model": "m", "input": "some text to embed", "encoding_format": "base64"}, "plain"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def request(port: int, path: str, body: dict, kind: str) -> str:
    """
    One request on its own connection; returns "ok" or what went wrong.
    """
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )
        status = await reader.readline()
        if b" 200 " not in status:
            return status.decode(errors="replace").strip() + " " + (await reader.read(300)).decode(errors="replace")
        if kind == "hang-up":
            while b"data: " not in await reader.readline():
                pass
            return "ok"
        data = await reader.read()
        if kind == "stream" and b"data: [DONE]" not in data:
            return "stream ended without [DONE]"
        if b'"error"' in data:
            return "error in body: " + data[-300:].decode(errors="replace")
        return "ok"
    finally:
        writer.close()


async def round_of(port: int, count: int, concurrency: int) -> dict:
    results: dict[str, int] = {}
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            path, body, kind = MIX[next_index % len(MIX)]
            next_index += 1
            try:
                outcome = await asyncio.wait_for(request(port, path, body, kind), 60)
            except Exception as e:  # a failure of the run, counted, never fatal
                outcome = f"{type(e).__name__}: {e}"
            results[outcome] = results.get(outcome, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests in all (default 20000)")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "hfendpoint", "--host", HOST, "--port", str(port), "--no-access-log",
         sys.executable, os.path.join(HERE, "null_worker.py")],
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(ready(port, time.monotonic() + 30))
        per_round = args.requests // args.rounds
        report = {"requests": per_round * args.rounds, "concurrency": args.concurrency, "rounds": []}
        started = time.monotonic()
        for number in range(args.rounds):
            t0 = time.monotonic()
            results = asyncio.run(round_of(port, per_round, args.concurrency))
            elapsed = time.monotonic() - t0
            # Let the worker see the last cancels before measuring.
            asyncio.run(ready(port, time.monotonic() + 10))
            entry = {"round": number + 1, "results": results, "seconds": round(elapsed, 2),
                     "requests_per_s": round(per_round / elapsed), "gateway_rss_kb": rss_kb(gateway.pid)}
            report["rounds"].append(entry)
            print(json.dumps(entry), flush=True)
        report["seconds"] = round(time.monotonic() - started, 1)
        errors = sum(n for r in report["rounds"] for k, n in r["results"].items() if k != "ok")
        first, last = report["rounds"][min(1, args.rounds - 1)]["gateway_rss_kb"], report["rounds"][-1]["gateway_rss_kb"]
        report["errors"] = errors
        report["rss_growth_after_warmup_pct"] = round(100.0 * (last - first) / first, 1)
        report["passed"] = errors == 0 and last <= first * 1.10
        print(json.dumps(report, indent=1))
        return 0 if report["passed"] else 1
    finally:
        gateway.terminate()
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()


if __name__ == "__main__":
    sys.exit(main())
