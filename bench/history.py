#!/usr/bin/env python3
"""
Which commit cost the small requests their speed: the gateway of each
given commit, side by side in one run, on the small embeddings request
of bench/run.py's scenario 1 (or its small chat request, C{--chat}).

    python bench/history.py 22cacfb 9c45e22 HEAD [--rounds 3] [--seconds 3]
    python bench/history.py 22cacfb HEAD HEAD,--no-metrics,--no-access-log
    python bench/history.py 22cacfb HEAD --pin --rounds 5
    python bench/history.py 22cacfb HEAD --pin --chat

A commit may carry options for its gateway's command after commas.

With C{--pin}, each gateway runs alone on the first CPU and its worker and
wrk on the others, and the table also gives the gateway's CPU time per
request (the median of the rounds): on a small shared machine the
scheduler's placement moves throughput by several percent from round to
round, the CPU time a request costs much less.

Each commit is checked out in a temporary worktree and its gateway
started from there (as ``--baseline`` does), all of them at once, idle
but for the one measured; rounds go through them in turn and each keeps
its best. The first commit is the reference of the ratio column. Every
gateway runs this tree's bench/null_worker.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import shapes  # noqa: E402
from measure import WRK_SCRIPT, Settings  # noqa: E402
from servers import HOST, REPO, start_gateway  # noqa: E402

PATHS = {"embeddings": "/v1/embeddings", "chat": "/v1/chat/completions"}


def worktree(commit: str, parent: str) -> str:
    where = os.path.join(parent, commit.replace("/", "_"))
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-f", where, commit], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return where


def cpu_seconds(pid: int) -> float:
    """
    The user and system time process C{pid} has used so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(gateway: Any) -> list[str]:
    """
    Put C{gateway} alone on the first CPU and its worker on the others;
    the prefix of wrk's command that puts it there too.
    """
    others = set(range(1, os.cpu_count() or 1)) or {0}
    os.sched_setaffinity(gateway.pid, {0})
    if gateway.worker_pid:
        os.sched_setaffinity(gateway.worker_pid, others)
    return ["taskset", "-c", ",".join(map(str, sorted(others)))]


def wrk(gateway: Any, script: str, path: str, seconds: int, concurrency: int, prefix: list[str]) -> tuple[float, float]:
    """
    The requests a second C{gateway} answered, and its CPU time per
    request in microseconds.
    """
    argv = prefix + ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", script, f"http://{HOST}:{gateway.port}{path}"]
    before = cpu_seconds(gateway.pid)
    text = subprocess.run(argv, capture_output=True, check=True).stdout.decode()
    used = cpu_seconds(gateway.pid) - before
    line = next(l for l in text.splitlines() if l.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    return raw["requests"] / (raw["duration_us"] / 1e6), used / max(1, raw["requests"]) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs="+", help="commits (or anything git names one by), each with its options after commas")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--chat", action="store_true", help="the small chat request rather than the embeddings one")
    parser.add_argument("--pin", action="store_true", help="each gateway alone on the first CPU; also its CPU time per request")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    settings = Settings(quick=False)
    kind = "chat" if args.chat else "embeddings"
    path = PATHS[kind]
    if args.chat:
        body = shapes.body(shapes.chat_data(settings.small_tokens))
    else:
        body = shapes.body(shapes.embeddings_data(1, settings.small_tokens, settings.small_dims))
    parent = tempfile.mkdtemp(prefix="hfendpoint-history-")
    script = os.path.join(parent, "wrk.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.replace("BODY", body.decode("latin-1")).replace("PATH", path))
    gateways = []
    try:
        trees: dict[str, str] = {}
        for index, spec in enumerate(args.commits):
            commit, *options = spec.split(",")
            if commit not in trees:
                trees[commit] = worktree(commit, parent)
            gateway = start_gateway(parent, f"gateway-{index}", src_dir=trees[commit], options=options)
            gateways.append((commit, options, gateway))
        prefixes = [pin(gateway) if args.pin else [] for _, _, gateway in gateways]
        for (_, _, gateway), prefix in zip(gateways, prefixes):
            wrk(gateway, script, path, 1, settings.concurrency, prefix)
        best = [0.0] * len(gateways)
        costs: list[list[float]] = [[] for _ in gateways]
        for _ in range(args.rounds):
            for index, (_, _, gateway) in enumerate(gateways):
                rate, cost = wrk(gateway, script, path, args.seconds, settings.concurrency, prefixes[index])
                best[index] = max(best[index], rate)
                costs[index].append(cost)
        print(f"small {kind}, req/s @c{settings.concurrency}, best of {args.rounds} x {args.seconds} s"
              + (", and the gateway's CPU time per request (median)" if args.pin else ""))
        for index, (commit, options, _) in enumerate(gateways):
            subject = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %s", commit],
                                     capture_output=True, text=True).stdout.strip()[:60]
            cost = f"  {statistics.median(costs[index]):6.1f} us" if args.pin else ""
            print(f"{best[index]:9,.0f}  {best[index] / best[0]:5.2f}{cost}  {subject} {' '.join(options)}")
    finally:
        for _, _, gateway in gateways:
            gateway.stop()
        for entry in os.listdir(parent):
            path = os.path.join(parent, entry)
            if os.path.isdir(path):
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", path], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["git", "-C", REPO, "worktree", "prune"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
