#!/usr/bin/env python3
"""
Which commit cost the small requests their speed: the gateway of each
given commit, side by side in one run, on the small embeddings request
of bench/run.py's scenario 1.

    python bench/history.py 22cacfb 9c45e22 HEAD [--rounds 3] [--seconds 3]
    python bench/history.py 22cacfb HEAD HEAD,--no-metrics,--no-access-log

A commit may carry options for its gateway's command after commas.

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
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import shapes  # noqa: E402
from measure import WRK_SCRIPT, Settings  # noqa: E402
from servers import HOST, REPO, start_gateway  # noqa: E402

PATH = "/v1/embeddings"


def worktree(commit: str, parent: str) -> str:
    where = os.path.join(parent, commit.replace("/", "_"))
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-f", where, commit], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return where


def wrk(port: int, script: str, seconds: int, concurrency: int) -> float:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", script, f"http://{HOST}:{port}{PATH}"]
    text = subprocess.run(argv, capture_output=True, check=True).stdout.decode()
    line = next(l for l in text.splitlines() if l.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    return raw["requests"] / (raw["duration_us"] / 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commits", nargs="+", help="commits (or anything git names one by), each with its options after commas")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    settings = Settings(quick=False)
    body = shapes.body(shapes.embeddings_data(1, settings.small_tokens, settings.small_dims))
    parent = tempfile.mkdtemp(prefix="hfendpoint-history-")
    script = os.path.join(parent, "wrk.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.replace("BODY", body.decode("latin-1")).replace("PATH", PATH))
    gateways = []
    try:
        trees: dict[str, str] = {}
        for index, spec in enumerate(args.commits):
            commit, *options = spec.split(",")
            if commit not in trees:
                trees[commit] = worktree(commit, parent)
            gateway = start_gateway(parent, f"gateway-{index}", src_dir=trees[commit], options=options)
            gateways.append((commit, options, gateway))
        for _, _, gateway in gateways:
            wrk(gateway.port, script, 1, settings.concurrency)
        best = [0.0] * len(gateways)
        for _ in range(args.rounds):
            for index, (_, _, gateway) in enumerate(gateways):
                best[index] = max(best[index], wrk(gateway.port, script, args.seconds, settings.concurrency))
        print(f"small embeddings, req/s @c{settings.concurrency}, best of {args.rounds} x {args.seconds} s")
        for index, (commit, options, _) in enumerate(gateways):
            subject = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h %s", commit],
                                     capture_output=True, text=True).stdout.strip()[:60]
            print(f"{best[index]:9,.0f}  {best[index] / best[0]:5.2f}  {subject} {' '.join(options)}")
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
