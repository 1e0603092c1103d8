#!/usr/bin/env python3
"""
The machine instructions the real gateway process executes per small
request, counted by valgrind's callgrind: this tree's gateway and another
tree's, side by side, each over exactly the same requests.

    python bench/instructions.py --against OTHER_TREE [--chat] [--requests 2000]
    python bench/instructions.py --against . --arg=--no-metrics   (what an option costs)

On a shared machine a request's time moves by several percent from run to
run (bench/run.py, bench/history.py), more than the changes one is asked
about. The count of instructions does not move: two counts of one build
agree to a fraction of a percent. It is not the time (a cache miss, a
system call and the kernel's work on the sockets are not in it, the
instructions are not all equally dear), so it answers "does this build do
more work per request than that one", not "how much faster is it"; the
throughput figures stay bench/run.py's.

Each gateway runs under callgrind (the only process that does: its worker
and the client run at full speed), with its access log off and this
tree's bench/null_worker.py as its worker. After a warm-up, the counters
are zeroed, the requests are sent (16 connections, each a request at a
time), and the counters are read: only the requests' work is counted, not
the start-up.

Needs valgrind (Debian's package), which also provides callgrind_control.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import shapes  # noqa: E402
from loadclient import http_request  # noqa: E402
from servers import HOST, REPO, Server, free_port, gateway_module, wait_ready  # noqa: E402

#: Connections the requests are sent on, each one request at a time.
CONNECTIONS = 16
WARM_UP = 200


def request_bytes(chat: bool, port: int) -> tuple[str, bytes]:
    if chat:
        path, data = "/v1/chat/completions", shapes.chat_data(8)
    else:
        path, data = "/v1/embeddings", shapes.embeddings_data(1, 8, 64)
    return path, http_request("POST", HOST, port, path, shapes.body(data))


async def _one_connection(port: int, request: bytes, left: list[int], answered: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200 "):
                answered[0] += 1
    finally:
        writer.close()


def send(port: int, request: bytes, count: int) -> int:
    """
    Send C{request} C{count} times; the number answered with a 200.
    """
    left, answered = [count], [0]

    async def run() -> None:
        await asyncio.gather(*(_one_connection(port, request, left, answered) for _ in range(CONNECTIONS)))

    asyncio.run(run())
    return answered[0]


def count(tree: str, chat: bool, requests: int, options: list[str], workdir: str) -> float:
    """
    Instructions per request of the gateway of C{tree} (its top directory).
    """
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(tree, "src"), env.get("PYTHONPATH")) if p)
    out = os.path.join(workdir, "callgrind.%p")
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", gateway_module(tree), "--host", HOST, "--port", str(port),
        "--no-access-log", *options, "bench/null_worker.py",
    ]
    server = Server("gateway", argv, port, os.path.join(workdir, "gateway.log"), env)
    try:
        wait_ready(server, "/ready", timeout=300)
        _, request = request_bytes(chat, port)
        if send(port, request, WARM_UP) != WARM_UP:
            raise RuntimeError(f"the gateway of {tree} did not answer its warm-up; see {server.log.name}")
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True, capture_output=True)
        answered = send(port, request, requests)
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True, capture_output=True)
        if answered != requests:
            raise RuntimeError(f"the gateway of {tree} answered {answered} of {requests}; see {server.log.name}")
    finally:
        server.stop()
    dumps = glob.glob(os.path.join(workdir, f"callgrind.{server.pid}.*"))
    if len(dumps) != 1:
        raise RuntimeError(f"expected one dump of the requests, found {dumps}")
    return _summary(dumps[0]) / requests


def _summary(path: str) -> int:
    with open(path) as dump:
        for line in dump:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no summary in {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="TREE", required=True, help="the other tree (a checkout's top directory)")
    parser.add_argument("--chat", action="store_true", help="the small chat request rather than the embeddings one")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--arg", metavar="OPTION", action="append", default=[],
                        help="an option for the other tree's gateway (repeatable)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (Debian: apt-get install valgrind)")
    found: dict[str, float] = {}
    trees: list[tuple[str, str, list[str]]] = [
        ("this tree", REPO, []),
        (args.against + (" " + " ".join(args.arg) if args.arg else ""), os.path.abspath(args.against), args.arg),
    ]
    for name, tree, options in trees:
        with tempfile.TemporaryDirectory(prefix="hfendpoint-instructions-") as workdir:
            found[name] = count(tree, args.chat, args.requests, options, workdir)
    base = found["this tree"]
    kind = "chat" if args.chat else "embeddings"
    print(f"small {kind}, instructions of the gateway per request ({args.requests} requests)")
    for name, value in found.items():
        print(f"{value:12,.0f}  {value / base:5.3f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
