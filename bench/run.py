#!/usr/bin/env python3
"""
hfendpoint's benchmark: the gateway against its floor and its ceilings,
side by side in one run.

    python bench/run.py [--quick] [--scenario NAME ...] [--profile]

It starts, each in a process of its own:

  - the gateway, ``python -m hfendpoint --host 127.0.0.1 --port P
    bench/null_worker.py`` (which starts the null worker);
  - the ceilings, a bare twisted.web Resource and a bare Klein app
    (bench/bare_servers.py) replaying the gateway's own answers;
  - the floor, spawned by the load client itself for each floor
    measurement: a null worker spoken to in MessagePack over a socket pair;

then drives every scenario with wrk (small requests) or bench/loadclient.py
(everything else), prints a table and writes bench/results/<timestamp>.json.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

import shapes  # noqa: E402
from loadclient import ResponseParser, http_request, proc_cpu  # noqa: E402

HOST = "127.0.0.1"
TARGETS = ("floor", "bare_twisted", "bare_klein", "gateway")
#: Requests to one target before the latency scenario moves to the next.
LATENCY_BLOCK = 100

SCENARIOS = ("small", "latency", "burst", "paced", "memory", "payloads")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_RATE = 250


class Settings:
    """
    Counts and durations: the full run, or --quick (under a minute).
    """

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.rounds = 1 if quick else 2
        self.duration = 1.0 if quick else 4.0
        self.warmup = 0.2 if quick else 1.0
        self.concurrency = 64
        self.small_dims = 64
        self.small_tokens = 8
        self.latency_count = 300 if quick else 3000
        self.latency_duration = 1.0 if quick else 8.0
        self.burst_streams = 100 if quick else 1000
        self.burst_tokens = 50 if quick else 200
        self.paced_streams = (100, 200) if quick else (1000, 2000)
        self.paced_tokens = 12 if quick else 60
        self.interval = 0.05
        self.memory_streams = 100 if quick else 1000
        self.payload_concurrency = 4 if quick else 8
        self.payload_duration = 0.6 if quick else 4.0
        self.payload_inputs = 64
        self.payload_dims = 1024
        self.image_bytes = (1 if quick else 4) * 1024 * 1024
        self.stream_timeout = 60.0 if quick else 180.0
        # Before each measurement, wait up to this long for other programs
        # to leave the CPUs (the machine is shared).
        self.max_quiet_wait = 0.0 if quick else 60.0


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


def start_gateway(logdir: str, name: str = "gateway") -> Server:
    port = free_port()
    env = dict(os.environ)
    # The worker's "#!/usr/bin/env python3" must find this interpreter.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    argv = [sys.executable, "-m", "hfendpoint", "--host", HOST, "--port", str(port), "bench/null_worker.py"]
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


# Measuring while a client runs


class Watch:
    """
    CPU% of the watched processes over a measurement, and their peak RSS
    (sampled every 50 ms).
    """

    def __init__(self, pids: dict[str, Optional[int]]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.peak = {k: 0 for k in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "Watch":
        self.cpu0 = {k: proc_cpu(p) for k, p in self.pids.items()}
        self.machine0 = machine_ticks()
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            for k, p in self.pids.items():
                self.peak[k] = max(self.peak[k], rss_kb(p))
            self._stop.wait(0.05)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self.t0
        self.cpu_pct = {k: round(100 * (proc_cpu(p) - self.cpu0[k]) / wall, 1) for k, p in self.pids.items()}
        self.rss_peak_kb = dict(self.peak)
        self.machine_busy_pct = busy_pct(self.machine0, machine_ticks())

    def foreign(self, ours_pct: float) -> float:
        """
        CPU% (of one core) that other programs took meanwhile: the machine
        is shared, and this says how much the figures may suffer from it.
        """
        return round(max(0.0, self.machine_busy_pct - sum(self.cpu_pct.values()) - ours_pct), 1)


def machine_ticks() -> tuple[int, int]:
    """
    (busy, total) clock ticks of all CPUs, from /proc/stat.
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """
    Busy CPU between two readings, in % of one core (2 busy cores: 200).
    """
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return 100.0 * (os.cpu_count() or 1) * (after[0] - before[0]) / total


def wait_quiet(max_wait: float, limit: float = 30.0) -> dict:
    """
    Wait (up to C{max_wait} seconds) until other programs leave the CPUs
    alone: our servers are idle between measurements, so what is busy then
    is someone else.
    """
    if max_wait <= 0:
        return {}
    started = time.monotonic()
    while True:
        before = machine_ticks()
        time.sleep(0.5)
        busy = busy_pct(before, machine_ticks())
        waited = time.monotonic() - started
        if busy <= limit or waited >= max_wait:
            return {"background_cpu_pct": round(busy, 1), "waited_s": round(waited, 1)}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runner:
    def __init__(self, settings: Settings, tmp: str, profile_dir: Optional[str]) -> None:
        self.s = settings
        self.tmp = tmp
        self.profile_dir = profile_dir
        self.servers: dict[str, Server] = {}
        self.logdir = tmp
        self.recordings = os.path.join(tmp, "recordings.json")
        self.profiles: dict[str, Any] = {}
        self.wrk = shutil.which("wrk")
        self.pyspy = shutil.which("py-spy") or (
            os.path.join(os.path.dirname(sys.executable), "py-spy")
            if os.path.exists(os.path.join(os.path.dirname(sys.executable), "py-spy"))
            else None
        )

    def watch_pids(self, target: str) -> dict[str, Optional[int]]:
        """
        The processes to watch for C{target} ("all": every server).
        """
        names = list(self.servers) if target == "all" else [target]
        pids: dict[str, Optional[int]] = {}
        for name in names:
            server = self.servers.get(name)
            if server is None:
                continue
            pids[name] = server.pid
            if server.worker_pid:
                pids["worker" if target != "all" else f"{name}_worker"] = server.worker_pid
        return pids

    def client(self, spec: dict, target: str, timeout: float, profile: Optional[str] = None) -> dict:
        """
        Run bench/loadclient.py with C{spec}, watching C{target}.
        """
        path = os.path.join(self.tmp, "spec.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        quiet = wait_quiet(self.s.max_quiet_wait)
        spy = self._profile_start(profile, target, timeout)
        with Watch(self.watch_pids(target)) as watch:
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "loadclient.py"), path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise RuntimeError(f"load client timed out after {timeout} s")
        self._profile_stop(spy, profile)
        if proc.returncode != 0:
            raise RuntimeError(f"load client failed: {err.decode(errors='replace')[-2000:]}")
        result = json.loads(out)
        if spec["mode"] == "latency":
            ours = max(r["client_cpu_pct"] + r.get("worker_cpu_pct", 0.0) for r in result.values())
        else:
            ours = result.get("client_cpu_pct", 0.0) + result.get("worker_cpu_pct", 0.0)
        result["server_cpu_pct"] = watch.cpu_pct
        result["server_rss_peak_kb"] = watch.rss_peak_kb
        result["foreign_cpu_pct"] = watch.foreign(ours)
        result["quiet"] = quiet
        return result

    def run_wrk(self, target: str, path: str, body: bytes, duration: float, record: bool = True, profile: Optional[str] = None) -> dict:
        """
        wrk, one thread, C{concurrency} keep-alive connections.
        """
        if not self.wrk:
            spec = {"mode": "http_closed", "host": HOST, "port": self.servers[target].port, "path": path,
                    "body": body.decode("latin-1"), "concurrency": self.s.concurrency, "duration": duration,
                    "warmup": 0 if not record else 0.2}
            result = self.client(spec, target, duration + 60, profile)
            result["tool"] = "loadclient (wrk not installed)"
            return result
        script = os.path.join(self.tmp, "wrk.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT.replace("BODY", body.decode("latin-1")).replace("PATH", path))
        port = self.servers[target].port
        argv = [self.wrk, "-t1", f"-c{self.s.concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                "-s", script, f"http://{HOST}:{port}{path}"]
        quiet = wait_quiet(self.s.max_quiet_wait) if record else None
        spy = self._profile_start(profile, target, duration + 5)
        cpu0 = children_cpu()
        with Watch(self.watch_pids(target)) as watch:
            proc = subprocess.run(argv, capture_output=True, timeout=duration + 60)
        wrk_cpu = children_cpu() - cpu0
        self._profile_stop(spy, profile)
        text = proc.stdout.decode(errors="replace")
        line = next((l for l in text.splitlines() if l.startswith("WRKJSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed: {text[-2000:]} {proc.stderr.decode(errors='replace')[-2000:]}")
        raw = json.loads(line[len("WRKJSON "):])
        wall = raw["duration_us"] / 1e6
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
        return {
            "tool": "wrk -t1",
            "requests": raw["requests"],
            "errors": errors,
            "wall": wall,
            "rps": raw["requests"] / wall,
            "mbps": raw["bytes"] / wall / 1e6,
            "latency": {"p50": raw["p50_us"] / 1e6, "p99": raw["p99_us"] / 1e6, "max": raw["max_us"] / 1e6},
            "client_cpu_pct": round(100 * wrk_cpu / wall, 1),
            "server_cpu_pct": watch.cpu_pct,
            "server_rss_peak_kb": watch.rss_peak_kb,
            "foreign_cpu_pct": watch.foreign(100 * wrk_cpu / wall),
            "quiet": quiet,
        }

    # Profiling the gateway with py-spy

    def _profile_start(self, name: Optional[str], target: str, duration: float) -> Any:
        if not (name and self.profile_dir and self.pyspy and target in ("gateway", "all")):
            return None
        out = os.path.join(self.profile_dir, f"{name}.txt")
        argv = [self.pyspy, "record", "--pid", str(self.servers["gateway"].pid), "--rate", str(PROFILE_RATE),
                "--format", "raw", "--function", "--output", out, "--duration", str(int(duration) + 1), "--nonblocking"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        return proc, out, time.monotonic()

    def _profile_stop(self, spy: Any, name: Optional[str]) -> None:
        if spy is None:
            return
        proc, out, started = spy
        wall = time.monotonic() - started
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            err = b""
        if os.path.exists(out):
            self.profiles[name] = summarize_profile(out, PROFILE_RATE * wall)
        else:
            self.profiles[name] = {"error": err.decode(errors="replace")[-500:]}


WRK_SCRIPT = """
wrk.method = "POST"
wrk.path = "PATH"
wrk.body = [==[BODY]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def frame_name(frame: str) -> str:
    """
    C{function (path/to/pkg/file.py:line)} as C{function (pkg/file.py)}.
    """
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{function} ({'/'.join(path.split('/')[-2:])})" if where else function


def summarize_profile(path: str, expected: float, top: int = 25) -> dict:
    """
    From py-spy's collapsed stacks: the functions where the gateway spent
    its (non-idle) samples, by self time and by inclusive time, in % of
    the busy samples; C{busy_pct} is how often the gateway was busy at all.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [frame_name(frame) for frame in stack.split(";")]
            total += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
    busy = max(1, total)

    def ranked(table: dict, skip: tuple = ()) -> list:
        items = [kv for kv in table.items() if kv[0].split(" (")[0] not in skip]
        return [[name, round(100 * n / busy, 1)] for name, n in sorted(items, key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "busy_pct": round(100 * total / max(1.0, expected), 1), "self": ranked(own),
            "inclusive": ranked(inclusive, PLUMBING), "file": path}


# Frames every sample of the gateway passes through: left out of the
# inclusive ranking, which would otherwise start with them.
PLUMBING = (
    "_run_module_as_main", "_run_code", "<module>", "console_script", "main", "run", "ReactorBase.run",
    "ReactorBase.mainLoop", "EPollReactor.doPoll", "callWithLogger", "callWithContext",
    "ThreadedContextTracker.callWithContext", "ContextTracker.callWithContext", "_PollLikeMixin._doReadOrWrite",
    "ReactorBase.runUntilCurrent",
)


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


# The scenarios


def worker_call(path: str, data: dict) -> tuple[str, dict]:
    """
    The worker call the gateway makes for an HTTP request: what the floor
    sends.
    """
    if path == "/v1/embeddings":
        return "embeddings", {"input": data["input"]}
    if path == "/v1/images/generations":
        width, height = (int(v) for v in data["size"].split("x"))
        return "images_generations", {"prompt": data["prompt"], "n": data.get("n", 1), "width": width, "height": height}
    return "chat_completions", data


class Bench:
    def __init__(self, runner: Runner, settings: Settings) -> None:
        self.r = runner
        self.s = settings
        s = settings
        self.small = {
            "embeddings": {"path": "/v1/embeddings", "data": shapes.embeddings_data(1, s.small_tokens, s.small_dims),
                           "worker": ("embeddings", {"input": shapes.embeddings_tokens(1, s.small_tokens, s.small_dims)})},
            "chat": {"path": "/v1/chat/completions", "data": shapes.chat_data(s.small_tokens),
                     "worker": ("chat_completions", shapes.chat_data(s.small_tokens))},
        }
        self.burst = shapes.chat_data(s.burst_tokens, stream=True)
        self.paced = shapes.chat_data(s.paced_tokens, s.interval, stream=True)
        self.payloads = {
            "embeddings_float": {"path": "/v1/embeddings", "data": shapes.embeddings_data(s.payload_inputs, 8, s.payload_dims, "float"), "goal": None},
            # The worker sends float32 bytes, as one on numpy or torch does
            # (tensor.numpy().tobytes()): the fast path the goal is about.
            "embeddings_base64": {"path": "/v1/embeddings", "data": shapes.embeddings_data(s.payload_inputs, 8, s.payload_dims, "base64", binary=True), "goal": 0.7},
            # The worker sends lists of Python floats, which our worker
            # library turns into float32 bytes: bound by the worker.
            "embeddings_base64_lists": {"path": "/v1/embeddings", "data": shapes.embeddings_data(s.payload_inputs, 8, s.payload_dims, "base64"), "goal": None},
            "image_b64_json": {"path": "/v1/images/generations", "data": shapes.image_data(s.image_bytes, "b64_json"), "goal": 0.7},
            "image_url": {"path": "/v1/images/generations", "data": shapes.image_data(s.image_bytes, "url"), "goal": 0.7, "fetch": True},
        }

    def recorded_requests(self) -> list[dict]:
        out = [{"name": f"small_{k}", "path": v["path"], "data": v["data"], "kind": "plain"} for k, v in self.small.items()]
        out.append({"name": "burst", "path": "/v1/chat/completions", "data": self.burst, "kind": "stream"})
        out.append({"name": "paced", "path": "/v1/chat/completions", "data": self.paced, "kind": "stream"})
        for name, p in self.payloads.items():
            kind = "image_url" if p.get("fetch") else "plain"
            out.append({"name": name, "path": p["path"], "data": p["data"], "kind": kind, "png_size": self.s.image_bytes})
        return out

    # 1

    def scenario_small(self) -> dict:
        out = {}
        for kind, req in self.small.items():
            body = shapes.body(req["data"])
            if not self.s.quick:
                for target in ("bare_twisted", "bare_klein", "gateway"):
                    self.r.run_wrk(target, req["path"], body, self.s.warmup, record=False)
            rounds: dict[str, list] = {"bare_twisted": [], "bare_klein": [], "gateway": []}
            for i in range(self.s.rounds):
                for target in rounds:
                    profile = f"small_{kind}" if target == "gateway" and i == 0 else None
                    rounds[target].append(self.r.run_wrk(target, req["path"], body, self.s.duration, profile=profile))
            name, data = req["worker"]
            floor = self.r.client({"mode": "msgpack_closed", "name": name, "data": data, "concurrency": self.s.concurrency,
                                   "duration": self.s.duration, "warmup": self.s.warmup}, "floor", self.s.duration + 60)
            best = {t: max(rs, key=lambda r: r["rps"]) for t, rs in rounds.items()}
            out[kind] = {
                "rounds": rounds,
                "best": best,
                "floor": floor,
                "ratio_vs_klein": best["gateway"]["rps"] / best["bare_klein"]["rps"],
                "ratio_vs_twisted": best["gateway"]["rps"] / best["bare_twisted"]["rps"],
            }
        return out

    # 2

    def scenario_latency(self) -> dict:
        """
        Twice: in blocks of 100 requests per target (steady state, the goal)
        and request by request (caches cold, for information).
        """
        steady = self.latency_run(LATENCY_BLOCK)
        interleaved = self.latency_run(1)
        for kind, res in steady.items():
            res["interleaved"] = interleaved[kind]
        return steady

    def latency_run(self, block: int) -> dict:
        targets = [{"name": "floor", "kind": "msgpack"}] + [
            {"name": t, "kind": "http", "port": self.r.servers[t].port} for t in ("gateway", "bare_klein", "bare_twisted")
        ]
        requests = [
            {"name": kind, "path": req["path"], "body": shapes.body(req["data"]).decode("latin-1"),
             "call": req["worker"][0], "data": req["worker"][1]}
            for kind, req in self.small.items()
        ]
        spec = {"mode": "latency", "host": HOST, "targets": targets, "requests": requests, "block": block,
                "count": self.s.latency_count, "duration": self.s.latency_duration, "warmup": 50 if self.s.quick else 300}
        profile = "latency" if block > 1 else "latency_interleaved"
        result = self.r.client(spec, "all", 4 * self.s.latency_duration + 120, profile=profile)
        watched = {key: result.pop(key) for key in ("server_cpu_pct", "server_rss_peak_kb", "foreign_cpu_pct", "quiet")}
        for kind, res in result.items():
            res.update(watched)
            res["block"] = block
            t = res["targets"]
            res["added_p50_ms"] = 1000 * (t["gateway"]["p50"] - t["floor"]["p50"])
            res["added_p99_ms"] = 1000 * (t["gateway"]["p99"] - t["floor"]["p99"])
            res["klein_added_p50_ms"] = 1000 * (t["bare_klein"]["p50"] - t["floor"]["p50"])
        return result

    # 3a

    def stream_targets(self, data: dict, streams: int, tokens: int, gaps: bool, profile: Optional[str]) -> dict:
        out = {}
        timeout = self.s.stream_timeout
        out["floor"] = self.r.client({"mode": "msgpack_streams", "streams": streams, "tokens": tokens, "data": data,
                                      "gaps": gaps, "timeout": timeout}, "floor", timeout + 60)
        body = shapes.body(data).decode("latin-1")
        for target in ("bare_twisted", "bare_klein", "gateway"):
            spec = {"mode": "sse", "host": HOST, "port": self.r.servers[target].port, "path": "/v1/chat/completions",
                    "body": body, "streams": streams, "tokens": tokens, "gaps": gaps, "timeout": timeout}
            out[target] = self.r.client(spec, target, timeout + 90, profile if target == "gateway" else None)
        return out

    def scenario_burst(self) -> dict:
        out = self.stream_targets(self.burst, self.s.burst_streams, self.s.burst_tokens, False, "burst")
        gw = out["gateway"]["tokens_per_s"]
        out["ratio_vs_klein"] = gw / out["bare_klein"]["tokens_per_s"]
        out["ratio_vs_floor"] = gw / out["floor"]["tokens_per_s"]
        return out

    # 3b

    def scenario_paced(self) -> dict:
        return {
            str(n): self.stream_targets(self.paced, n, self.s.paced_tokens, True, f"paced_{n}")
            for n in self.s.paced_streams
        }

    # 5

    def scenario_memory(self) -> dict:
        """
        A fresh gateway of its own, so that what the other scenarios left
        in the heap does not count: its RSS idle (after one short stream,
        so that the code paths are loaded), at the peak of
        C{memory_streams} open paced streams, and after; a fresh bare Klein
        alongside, from its RSS after one stream.
        """
        fresh = start_gateway(self.r.logdir, "gateway_memory")
        self.r.servers["gateway_memory"] = fresh
        klein = start_bare("klein", self.r.recordings, self.r.logdir, "bare_klein_memory")
        self.r.servers["bare_klein_memory"] = klein
        try:
            out: dict[str, Any] = {"fresh_idle_kb": {"gateway": rss_kb(fresh.pid), "worker": rss_kb(fresh.worker_pid or 0)}}
            fetch(fresh.port, "POST", "/v1/chat/completions", shapes.body(shapes.chat_data(3, stream=True)))
            out["warm_kb"] = {"gateway": rss_kb(fresh.pid), "worker": rss_kb(fresh.worker_pid or 0)}
            body = shapes.body(self.paced).decode("latin-1")
            fetch(klein.port, "POST", "/v1/chat/completions", shapes.body(self.paced))
            for target in ("bare_klein_memory", "gateway_memory"):
                server = self.r.servers[target]
                before = rss_kb(server.pid)
                spec = {"mode": "sse", "host": HOST, "port": server.port, "path": "/v1/chat/completions",
                        "body": body, "streams": self.s.memory_streams, "tokens": self.s.paced_tokens, "gaps": False,
                        "timeout": self.s.stream_timeout}
                res = self.r.client(spec, target, self.s.stream_timeout + 90)
                out[target] = {"before_kb": before, "rss_peak_kb": res["server_rss_peak_kb"].get(target, 0),
                               "worker_peak_kb": res["server_rss_peak_kb"].get("worker", 0),
                               "all_tokens_arrived": res["all_tokens_arrived"], "streams": res["streams"]}
            time.sleep(1.0)
            out["after_kb"] = {"gateway": rss_kb(fresh.pid), "worker": rss_kb(fresh.worker_pid or 0)}
            return out
        finally:
            for name in ("gateway_memory", "bare_klein_memory"):
                self.r.servers.pop(name).stop()

    # 4

    def scenario_payloads(self) -> dict:
        out = {}
        for name, p in self.payloads.items():
            body = shapes.body(p["data"]).decode("latin-1")
            rounds: dict[str, list] = {"bare_twisted": [], "bare_klein": [], "gateway": []}
            for i in range(self.s.rounds):
                for target in rounds:
                    spec = {"mode": "http_closed", "host": HOST, "port": self.r.servers[target].port, "path": p["path"],
                            "body": body, "concurrency": self.s.payload_concurrency, "duration": self.s.payload_duration,
                            "warmup": self.s.warmup, "fetch_urls": bool(p.get("fetch")), "timeout": 60}
                    profile = f"payload_{name}" if target == "gateway" and i == 0 else None
                    rounds[target].append(self.r.client(spec, target, self.s.payload_duration + self.s.warmup + 120, profile))
            best = {t: max(rs, key=lambda r: r["mbps"]) for t, rs in rounds.items()}
            call, data = worker_call(p["path"], p["data"])
            floor = self.r.client({"mode": "msgpack_closed", "name": call, "data": data, "concurrency": self.s.payload_concurrency,
                                   "duration": self.s.payload_duration, "warmup": self.s.warmup}, "floor", self.s.payload_duration + 120)
            # What the worker alone could feed, in the gateway's HTTP bytes.
            per_request = best["gateway"]["bytes"] / max(1, best["gateway"]["requests"])
            floor["mbps"] = floor["rps"] * per_request / 1e6
            out[name] = {
                "rounds": rounds,
                "best": best,
                "floor": floor,
                "goal": p["goal"],
                "ratio_vs_klein": best["gateway"]["mbps"] / best["bare_klein"]["mbps"],
                "ratio_vs_twisted": best["gateway"]["mbps"] / best["bare_twisted"]["mbps"],
            }
        return out


# Report


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}"


def bg(result: dict) -> str:
    """
    The CPU other programs took during a measurement, when notable.
    """
    value = result.get("foreign_cpu_pct")
    return f"; other programs {value:.0f}%" if value and value >= 10 else ""


def client_max(results: dict) -> str:
    """
    The busiest client among the targets of a row, when it is not the
    gateway's: a ceiling measured with a busy client is a low estimate.
    """
    busiest = max(results.items(), key=lambda kv: kv[1].get("client_cpu_pct", 0))
    name, value = busiest[0], busiest[1].get("client_cpu_pct", 0)
    return f"; client CPU {value:.0f}% on {name}" if name != "gateway" and value >= 50 else ""


def table_rows(results: dict, s: Settings) -> list[list[str]]:
    """
    Scenario, metric, gateway, floor, bare twisted, bare Klein, ratio,
    goal, met, driver.
    """
    rows: list[list[str]] = []
    sc = results["scenarios"]
    mark = lambda ok: "MET" if ok else "MISSED"  # noqa: E731
    if "small" in sc and "error" not in sc["small"]:
        for kind, r in sc["small"].items():
            b = r["best"]
            gw_cpu = b["gateway"]["server_cpu_pct"]
            rows.append([
                f"1 small {kind}", "req/s @c64",
                fmt(b["gateway"]["rps"]), fmt(r["floor"]["rps"]), fmt(b["bare_twisted"]["rps"]), fmt(b["bare_klein"]["rps"]),
                f"{r['ratio_vs_klein']:.2f} vs Klein", ">= 0.9", mark(r["ratio_vs_klein"] >= 0.9),
                f"{b['gateway']['tool']} (client CPU {b['gateway']['client_cpu_pct']:.0f}%; gateway {gw_cpu.get('gateway', 0):.0f}%, worker {gw_cpu.get('worker', 0):.0f}%{bg(b['gateway'])}{client_max(b)})",
            ])
    if "latency" in sc and "error" not in sc["latency"]:
        ms = lambda x: f"{1000 * x:.3f}"  # noqa: E731
        for kind, r in sc["latency"].items():
            t = r["targets"]
            rows.append([
                f"2 latency {kind}", "p50 ms @c1",
                ms(t["gateway"]["p50"]), ms(t["floor"]["p50"]), ms(t["bare_twisted"]["p50"]), ms(t["bare_klein"]["p50"]),
                f"+{r['added_p50_ms']:.3f} ms vs floor", "added < 0.2 ms", mark(r["added_p50_ms"] < 0.2),
                f"loadclient blocking, blocks of {r['block']} per target (client CPU {r['client_cpu_pct']:.0f}%{bg(r)})",
            ])
            rows.append([
                f"2 latency {kind}", "p99 ms @c1",
                ms(t["gateway"]["p99"]), ms(t["floor"]["p99"]), ms(t["bare_twisted"]["p99"]), ms(t["bare_klein"]["p99"]),
                f"+{r['added_p99_ms']:.3f} ms vs floor", "-", "", "",
            ])
            i = r.get("interleaved")
            if i:
                t = i["targets"]
                rows.append([
                    f"2 latency {kind}, cold", "p50 ms @c1",
                    ms(t["gateway"]["p50"]), ms(t["floor"]["p50"]), ms(t["bare_twisted"]["p50"]), ms(t["bare_klein"]["p50"]),
                    f"+{i['added_p50_ms']:.3f} ms vs floor", "-", "",
                    f"interleaved request by request (client CPU {i['client_cpu_pct']:.0f}%{bg(i)})",
                ])
    if "burst" in sc and "error" not in sc["burst"]:
        r = sc["burst"]
        g = r["gateway"]
        rows.append([
            f"3a burst {s.burst_streams}x{s.burst_tokens}", "tokens/s",
            fmt(g["tokens_per_s"]), fmt(r["floor"]["tokens_per_s"]), fmt(r["bare_twisted"]["tokens_per_s"]), fmt(r["bare_klein"]["tokens_per_s"]),
            f"{r['ratio_vs_klein']:.2f} vs Klein, {r['ratio_vs_floor']:.2f} vs floor", ">= 300,000", mark(g["tokens_per_s"] >= 300000 and g["all_tokens_arrived"]),
            f"loadclient SSE (client CPU {g['client_cpu_pct']:.0f}%; gateway {g['server_cpu_pct'].get('gateway', 0):.0f}%, worker {g['server_cpu_pct'].get('worker', 0):.0f}%{bg(g)}{client_max({t: r[t] for t in TARGETS})}); all arrived: {fmt(g['all_tokens_arrived'])}",
        ])
    if "paced" in sc and "error" not in sc["paced"]:
        top = str(max(s.paced_streams))
        for n, r in sc["paced"].items():
            ms = lambda res: f"{1000 * res['gaps']['p99']:.1f}" + ("" if res["all_tokens_arrived"] else " (lost)")  # noqa: E731
            g = r["gateway"]
            ok = g["all_tokens_arrived"] and g["gaps"]["p99"] < 0.060
            rows.append([
                f"3b paced {n} streams", "p99 gap ms",
                ms(g), ms(r["floor"]), ms(r["bare_twisted"]), ms(r["bare_klein"]),
                f"p50 {1000 * g['gaps']['p50']:.1f}, max {1000 * g['gaps']['max']:.0f} ms; first token p99 {g['ttft'].get('p99', 0):.2f} s (Klein {r['bare_klein']['ttft'].get('p99', 0):.2f} s)",
                "< 60 ms" + ("" if n == top else " (info)"), mark(ok) if n == top else ("ok" if ok else "over"),
                f"loadclient SSE (client CPU {g['client_cpu_pct']:.0f}%; gateway {g['server_cpu_pct'].get('gateway', 0):.0f}%, worker {g['server_cpu_pct'].get('worker', 0):.0f}%{bg(g)}{client_max({t: r[t] for t in TARGETS})}); all arrived: {fmt(g['all_tokens_arrived'])}",
            ])
    if "payloads" in sc and "error" not in sc["payloads"]:
        for name, r in sc["payloads"].items():
            b = r["best"]
            goal = r["goal"]
            rows.append([
                f"4 {name}", "MB/s",
                fmt(b["gateway"]["mbps"], 1), fmt(r["floor"]["mbps"], 1) if "floor" in r else "-", fmt(b["bare_twisted"]["mbps"], 1), fmt(b["bare_klein"]["mbps"], 1),
                f"{r['ratio_vs_klein']:.2f} vs Klein", f">= {goal}" if goal else "-", mark(r["ratio_vs_klein"] >= goal) if goal else "",
                f"loadclient c{s.payload_concurrency} (client CPU {b['gateway']['client_cpu_pct']:.0f}%; gateway {b['gateway']['server_cpu_pct'].get('gateway', 0):.0f}%, worker {b['gateway']['server_cpu_pct'].get('worker', 0):.0f}%{bg(b['gateway'])}{client_max(b)}); {fmt(b['gateway']['rps'], 1)} req/s",
            ])
    if "memory" in sc and "error" not in sc["memory"]:
        r = sc["memory"]
        gw, kl = r["gateway_memory"], r["bare_klein_memory"]
        warm = r["warm_kb"]["gateway"]
        per = (gw["rss_peak_kb"] - warm) / max(1, gw["streams"])
        per_klein = (kl["rss_peak_kb"] - kl["before_kb"]) / max(1, kl["streams"])
        rows.append(["5 memory idle", "RSS MB", fmt(r["fresh_idle_kb"]["gateway"] / 1024, 1), "-", "-", fmt(kl["before_kb"] / 1024, 1),
                     f"{warm / 1024:.1f} MB after one stream; worker {r['warm_kb']['worker'] / 1024:.1f} MB", "-", "",
                     "fresh processes; /proc/PID/status VmRSS (bare Klein holds the recordings)"])
        rows.append([f"5 memory {s.memory_streams} streams", "RSS MB peak", fmt(gw["rss_peak_kb"] / 1024, 1), "-", "-", fmt(kl["rss_peak_kb"] / 1024, 1),
                     f"+{per:.1f} KB per stream (bare Klein +{per_klein:.1f})", "-", "",
                     f"gateway {r['after_kb']['gateway'] / 1024:.1f} MB after they closed; all arrived: {fmt(gw['all_tokens_arrived'])}"])
    return rows


HEADER = ["Scenario", "Metric", "Gateway", "Floor", "Bare twisted", "Bare Klein", "Ratio / delta", "Goal", "Met", "Driver / notes"]


def render_table(rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER) - 1)]
    lines = []
    for row in [HEADER] + rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def summarize_profiles(profiles: dict, count: int = 12) -> str:
    lines = []
    for name, p in profiles.items():
        if "error" in p:
            lines.append(f"[{name}] py-spy failed: {p['error']}")
            continue
        lines.append(f"[{name}] {p['samples']} samples, gateway busy {p['busy_pct']}% of the time ({os.path.relpath(p['file'], REPO)})")
        lines.append("  self:      " + "; ".join(f"{f} {pct}%" for f, pct in p["self"][:count]))
        lines.append("  inclusive: " + "; ".join(f"{f} {pct}%" for f, pct in p["inclusive"][:count]))
    return "\n".join(lines)


def git_state() -> dict:
    """
    The commit measured, and whether src/ had uncommitted changes.
    """
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "src_changes": git("status", "--porcelain", "src").splitlines()}


def machine() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    versions = {}
    for module in ("twisted", "klein", "msgpack", "hfendpoint"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except Exception:
            versions[module] = "?"
    if "twisted" in versions:
        import twisted
        versions["twisted"] = twisted.__version__
    return {"cpus": os.cpu_count(), "cpu_model": model, "loadavg_at_start": load, "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the hfendpoint gateway against its floor and ceilings.")
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute: a smoke test of the harness")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    parser.add_argument("--profile", action="store_true", help="sample the gateway with py-spy during its measurements")
    parser.add_argument("--output", help="the JSON file to write (default bench/results/<timestamp>.json)")
    args = parser.parse_args(argv)
    settings = Settings(args.quick)
    chosen = [s for s in SCENARIOS if not args.scenario or s in args.scenario]

    if shutil.which("wrk") is None:
        print("note: wrk is not installed, so scenario 1 falls back to bench/loadclient.py, which may itself be the\n"
              "      bottleneck. Install it with: sudo apt-get update && sudo apt-get install -y wrk", file=sys.stderr)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(RESULTS, exist_ok=True)
    output = args.output or os.path.join(RESULTS, f"{stamp}{'-quick' if args.quick else ''}.json")
    logdir = os.path.join(RESULTS, f"{stamp}-logs")
    os.makedirs(logdir, exist_ok=True)
    profile_dir = None
    if args.profile:
        profile_dir = os.path.join(logdir, "profiles")
        os.makedirs(profile_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="hfendpoint-bench-")
    runner = Runner(settings, tmp, profile_dir)
    runner.logdir = logdir
    if args.profile and not runner.pyspy:
        print("note: --profile needs py-spy (pip install py-spy); profiling is off", file=sys.stderr)
    bench = Bench(runner, settings)
    command = " ".join(["python", "bench/run.py"] + (argv if argv is not None else sys.argv[1:]))
    results: dict[str, Any] = {"command": command, "quick": args.quick, "started": stamp, "machine": machine(), "git": git_state(),
                               "settings": vars(settings), "scenarios": {}}
    started = time.monotonic()
    try:
        print(f"starting the gateway, logs in {os.path.relpath(logdir, REPO)}", file=sys.stderr)
        gateway = start_gateway(logdir)
        runner.servers["gateway"] = gateway
        results["idle_rss_kb"] = {"gateway": rss_kb(gateway.pid), "worker": rss_kb(gateway.worker_pid or 0)}
        recordings = runner.recordings
        requests = bench.recorded_requests()
        results["recorded"] = record(gateway, requests, recordings)
        results["idle_rss_kb_after_recording"] = {"gateway": rss_kb(gateway.pid), "worker": rss_kb(gateway.worker_pid or 0)}
        for kind in ("twisted", "klein"):
            server = start_bare(kind, recordings, logdir)
            runner.servers[server.name] = server
            verify_bare(server, requests, results["recorded"])
            results["idle_rss_kb"][server.name] = rss_kb(server.pid)
        for name in chosen:
            print(f"scenario {name}...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                results["scenarios"][name] = getattr(bench, f"scenario_{name}")()
            except Exception as error:
                traceback.print_exc()
                results["scenarios"][name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        for server in runner.servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["profiles"] = runner.profiles
    rows = table_rows(results, settings)
    results["table"] = [dict(zip(HEADER, row)) for row in rows]
    results["table_markdown"] = render_table(rows, markdown=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print()
    m, g = results["machine"], results["git"]
    print(f"{m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, Twisted {m['versions'].get('twisted')}, "
          f"hfendpoint at {g['commit']}{' + uncommitted src changes' if g['src_changes'] else ''}")
    print(render_table(rows))
    failed = [n for n, r in results["scenarios"].items() if "error" in r]
    for n in failed:
        print(f"scenario {n} failed: {results['scenarios'][n]['error']}")
    if runner.profiles:
        print()
        print(summarize_profiles(runner.profiles))
    print(f"\nresults: {os.path.relpath(output, REPO)} ({results['elapsed_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
