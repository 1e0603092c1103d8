"""
Measuring while a client runs: the load client or wrk in a process of its
own, the CPU and memory of the servers meanwhile, and py-spy's profile of
the gateway.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from loadclient import proc_cpu
from servers import HERE, HOST, Server, rss_kb

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
        #: The gateways measured: "gateway", and "gateway_before" with --baseline.
        self.gateways: list[str] = ["gateway"]
        #: The source tree of a gateway that is not this tree's.
        self.sources: dict[str, str] = {}
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

