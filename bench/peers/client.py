#!/usr/bin/env python3
"""
The race's load client, in a process of its own:
``python bench/peers/client.py SPEC.json`` prints one JSON object.

It opens C{concurrency} keep-alive connections to an OpenAI-compatible
``/embeddings`` route and sends a fixed list of requests through them,
each connection taking the next request as soon as its previous answer is
complete (a closed loop), until all are answered. It measures the time
from the first request sent to the last answer, each request's latency,
and its own CPU. Every answer must be a 200 with one embedding per input.

Spec: C{host}, C{port}, C{path}, C{model}, C{concurrency}, C{inputs} (a
list of requests, each a list of sentences), C{warmup} (a list of
requests sent the same way first, not measured), C{timeout} (seconds for
one request).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadclient import HTTPConnection, cpu_self, http_request, open_many, percentiles  # noqa: E402

perf = time.perf_counter


def bodies(spec: dict, inputs: list[list[str]]) -> list[tuple[bytes, int]]:
    host, port, path = spec["host"], spec["port"], spec["path"]
    out = []
    for texts in inputs:
        body = json.dumps({"model": spec["model"], "input": texts, "encoding_format": spec.get("encoding", "float")})
        out.append((http_request("POST", host, port, path, body.encode()), len(texts)))
    return out


async def closed_loop(conns: list, requests: list[tuple[bytes, int]], timeout: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    position = 0

    async def drive(conn: HTTPConnection) -> None:
        nonlocal position
        while position < len(requests):
            raw, count = requests[position]
            position += 1
            started = perf()
            status, _headers, body, _n = await asyncio.wait_for(conn.request(raw), timeout)
            latencies.append(perf() - started)
            if status != 200:
                errors.append(f"status {status}: {body[:200]!r}")
            else:
                got = body.count(b'"embedding":')
                if got != count:
                    errors.append(f"{got} embeddings for {count} inputs")

    t0 = perf()
    await asyncio.gather(*(drive(conn) for conn in conns))
    return {"wall": perf() - t0, "latencies": latencies, "errors": errors}


async def main(spec: dict) -> dict:
    conns = await open_many(lambda: HTTPConnection(keep_body=True), spec["host"], spec["port"], spec["concurrency"])
    timeout = spec.get("timeout", 120)
    warm = bodies(spec, spec.get("warmup", []))
    if warm:
        await closed_loop(conns, warm, timeout)
    requests = bodies(spec, spec["inputs"])
    cpu0 = cpu_self()
    result = await closed_loop(conns, requests, timeout)
    cpu = cpu_self() - cpu0
    for conn in conns:
        conn.transport.close()
    wall = result["wall"]
    count = len(requests)
    sentences = sum(n for _, n in requests)
    return {
        "requests": count,
        "sentences": sentences,
        "wall": wall,
        "rps": count / wall,
        "sps": sentences / wall,
        "latency": percentiles(result["latencies"]),
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:3],
        "client_cpu": cpu / wall,
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    print(json.dumps(asyncio.run(main(spec))))
