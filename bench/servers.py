"""
The benchmark's servers: starting and stopping them (the gateway, a
gateway from another source tree, the bare servers), asking them
questions, and recording the gateway's answers for the bare servers to
replay.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import shapes
from loadclient import ResponseParser, http_request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOST = "127.0.0.1"


# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


class Server:
    """
    One server process we started (in a session of its own), and the pids
    to watch: the gateway's worker is watched with it.
    """

    def __init__(self, name: str, argv: list[str], port: int, log_path: str, env: Optional[dict] = None) -> None:
        self.name = name
        self.port = port
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.worker_pid: Optional[int] = None

    def stop(self) -> None:
        """
        TERM, then KILL after 10 s; the gateway stops its worker itself,
        which is killed by its pid if it outlives the gateway.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.worker_pid is not None and alive(self.worker_pid):
            try:
                os.kill(self.worker_pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()


def fetch(port: int, method: str, path: str, body: bytes = b"", timeout: float = 30) -> tuple[int, dict, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(http_request(method, HOST, port, path, body))
        parser = ResponseParser(keep_body=True)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{method} {path}: connection closed")
            out = parser.feed(data)
            if out:
                status, headers, payload, _ = out[0]
                return status, headers, payload


def wait_ready(server: Server, path: str, timeout: float = 30) -> None:
    """
    Wait until C{server} answers 200 on C{path}; if it does not, stop it
    and raise.
    """
    try:
        _wait_ready(server, path, timeout)
    except BaseException:
        server.stop()
        raise


def _wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; see {server.log.name}")
        try:
            if fetch(server.port, "GET", path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout} s; see {server.log.name}")


def gateway_module(src_dir: str) -> str:
    """
    The module that starts the gateway of the source tree C{src_dir}:
    C{hfendpoint.cli} before the package was laid out in subpackages,
    C{hfendpoint} since.
    """
    return "hfendpoint.cli" if os.path.exists(os.path.join(src_dir, "src", "hfendpoint", "cli.py")) else "hfendpoint"


def start_gateway(
    logdir: str, name: str = "gateway", src_dir: Optional[str] = None, options: Sequence[str] = ()
) -> Server:
    """
    The gateway of this tree, as the interpreter finds it, or (C{src_dir})
    the one of another source tree, with C{SRC_DIR/src} first on its
    C{PYTHONPATH}: its worker, started by it, imports that tree's worker
    library too. Both run this tree's bench/null_worker.py. C{options} go
    to its command line (C{--no-metrics}, to measure what metrics cost).
    """
    port = free_port()
    env = dict(os.environ)
    # The worker's "#!/usr/bin/env python3" must find this interpreter.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    module = "hfendpoint"
    if src_dir is not None:
        module = gateway_module(src_dir)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(src_dir, "src"), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", module, "--host", HOST, "--port", str(port), *options, "bench/null_worker.py"]
    server = Server(name, argv, port, os.path.join(logdir, f"{name}.log"), env)
    wait_ready(server, "/ready")
    workers = children_of(server.pid)
    server.worker_pid = workers[0] if workers else None
    return server


def start_bare(kind: str, recordings: str, logdir: str, name: Optional[str] = None) -> Server:
    port = free_port()
    name = name or f"bare_{kind}"
    argv = [sys.executable, os.path.join(HERE, "bare_servers.py"), "--kind", kind, "--port", str(port), "--recordings", recordings]
    server = Server(name, argv, port, os.path.join(logdir, f"{name}.log"))
    wait_ready(server, "/health")
    return server



# Recording the gateway's answers for the bare servers


def split_events(body: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in body.split(b"\n\n") if event]


def record(gateway: Server, requests: list[dict], path: str) -> dict:
    """
    Ask the gateway each request once and keep its answer: what the bare
    servers replay. Streams are recorded with 3 tokens and no pacing (their
    events do not depend on either).
    """
    routes = []
    checks = {}
    keep = ("content-type", "cache-control", "x-accel-buffering")
    for req in requests:
        data = dict(req["data"])
        kind = req["kind"]
        if kind == "stream":
            data["bench_tokens"] = 3
            data.pop("bench_interval", None)
        status, headers, payload = fetch(gateway.port, "POST", req["path"], shapes.body(data), timeout=120)
        if status != 200:
            raise RuntimeError(f"gateway answered {status} to {req['name']}: {payload[:300]!r}")
        entry: dict[str, Any] = {
            "name": req["name"],
            "path": req["path"],
            "body": shapes.body(req["data"]).decode("latin-1"),
            "kind": kind,
            "headers": {k: headers[k.encode()].decode() for k in keep if k.encode() in headers},
        }
        if kind == "stream":
            events = split_events(payload)
            if len(events) != 5 or events[1] != events[2] or events[-1] != b"data: [DONE]\n\n":
                raise RuntimeError(f"unexpected stream from the gateway: {events!r}")
            for key, event in zip(("first", "token", "finish", "done"), (events[0], events[1], events[3], events[4])):
                entry[key] = base64.b64encode(event).decode()
            entry["tokens"] = req["data"]["bench_tokens"]
            entry["interval"] = req["data"].get("bench_interval", 0.0)
            checks[req["name"]] = {"event_bytes": [len(e) for e in events]}
        elif kind == "image_url":
            url = json.loads(payload)["data"][0]["url"].encode()
            i = payload.index(url)
            entry["prefix"] = base64.b64encode(payload[:i]).decode()
            entry["suffix"] = base64.b64encode(payload[i + len(url):]).decode()
            entry["png_size"] = req["png_size"]
            status, _, png = fetch(gateway.port, "GET", url.decode().split(str(gateway.port), 1)[1])
            if status != 200 or png != shapes.make_png(req["png_size"]):
                raise RuntimeError("the gateway did not serve the PNG the worker made")
            checks[req["name"]] = {"body_bytes": len(payload), "png_bytes": len(png)}
        else:
            entry["response"] = base64.b64encode(payload).decode()
            checks[req["name"]] = {"body_bytes": len(payload)}
        routes.append(entry)
    with open(path, "w") as f:
        json.dump({"routes": routes}, f)
    return checks


def verify_bare(server: Server, requests: list[dict], checks: dict) -> None:
    """
    The bare servers answer every plain request with the gateway's bytes.
    """
    for req in requests:
        if req["kind"] != "plain":
            continue
        status, _, payload = fetch(server.port, "POST", req["path"], shapes.body(req["data"]), timeout=60)
        if status != 200 or len(payload) != checks[req["name"]]["body_bytes"]:
            raise RuntimeError(f"{server.name} does not replay {req['name']} ({status}, {len(payload)} bytes)")

