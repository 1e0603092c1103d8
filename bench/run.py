#!/usr/bin/env python3
"""
hfendpoint's benchmark: the gateway against its floor and its ceilings,
side by side in one run, and (--baseline) against the gateway of another
source tree.

    python bench/run.py [--quick] [--scenario NAME ...] [--profile] [--baseline SRC_DIR]

It starts, each in a process of its own:

  - the gateway, ``python -m hfendpoint --host 127.0.0.1 --port P
    bench/null_worker.py`` (which starts the null worker);
  - with --baseline, "gateway (before)": the gateway of SRC_DIR, run the
    same way with SRC_DIR/src first on its PYTHONPATH;
  - the ceilings, a bare twisted.web Resource and a bare Klein app
    (bench/bare_servers.py) replaying the gateway's own answers;
  - the floor, spawned by the load client itself for each floor
    measurement: a null worker spoken to in MessagePack over a socket pair;

then drives every scenario with wrk (small requests) or bench/loadclient.py
(everything else), prints a table and writes bench/results/<timestamp>.json.
See bench/README.md. The modules: servers.py (the processes), measure.py
(the clients and what is watched meanwhile), report.py (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

import shapes  # noqa: E402
from measure import Runner, Settings  # noqa: E402
from report import git_state, header, machine, render_table, summarize_profiles, table_rows  # noqa: E402
from servers import HOST, REPO, fetch, gateway_module, record, rss_kb, start_bare, start_gateway, verify_bare  # noqa: E402

#: Requests to one target before the latency scenario moves to the next.
LATENCY_BLOCK = 100

SCENARIOS = ("small", "latency", "burst", "paced", "memory", "payloads")
#: The name of the gateway of the --baseline source tree.
BEFORE = "gateway_before"


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

    def http_targets(self) -> list[str]:
        """
        The HTTP servers, in the order each round measures them: the
        ceilings, then the gateway and (--baseline) the gateway before.
        """
        return ["bare_twisted", "bare_klein"] + self.r.gateways

    # 1

    def scenario_small(self) -> dict:
        out = {}
        for kind, req in self.small.items():
            body = shapes.body(req["data"])
            if not self.s.quick:
                for target in self.http_targets():
                    self.r.run_wrk(target, req["path"], body, self.s.warmup, record=False)
            rounds: dict[str, list] = {t: [] for t in self.http_targets()}
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
            if BEFORE in best:
                out[kind]["ratio_after_before"] = best["gateway"]["rps"] / best[BEFORE]["rps"]
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
            {"name": t, "kind": "http", "port": self.r.servers[t].port} for t in self.r.gateways + ["bare_klein", "bare_twisted"]
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
            if BEFORE in t:
                for q in ("p50", "p99"):
                    res[f"ratio_after_before_{q}"] = t["gateway"][q] / t[BEFORE][q]
                    res[f"after_minus_before_{q}_us"] = 1e6 * (t["gateway"][q] - t[BEFORE][q])
        return result

    # 3a

    def stream_targets(self, data: dict, streams: int, tokens: int, gaps: bool, profile: Optional[str]) -> dict:
        out = {}
        timeout = self.s.stream_timeout
        out["floor"] = self.r.client({"mode": "msgpack_streams", "streams": streams, "tokens": tokens, "data": data,
                                      "gaps": gaps, "timeout": timeout}, "floor", timeout + 60)
        body = shapes.body(data).decode("latin-1")
        for target in self.http_targets():
            spec = {"mode": "sse", "host": HOST, "port": self.r.servers[target].port, "path": "/v1/chat/completions",
                    "body": body, "streams": streams, "tokens": tokens, "gaps": gaps, "timeout": timeout}
            out[target] = self.r.client(spec, target, timeout + 90, profile if target == "gateway" else None)
        return out

    def scenario_burst(self) -> dict:
        out = self.stream_targets(self.burst, self.s.burst_streams, self.s.burst_tokens, False, "burst")
        gw = out["gateway"]["tokens_per_s"]
        out["ratio_vs_klein"] = gw / out["bare_klein"]["tokens_per_s"]
        out["ratio_vs_floor"] = gw / out["floor"]["tokens_per_s"]
        if BEFORE in out:
            out["ratio_after_before"] = gw / out[BEFORE]["tokens_per_s"]
        return out

    # 3b

    def scenario_paced(self) -> dict:
        out = {}
        for n in self.s.paced_streams:
            res = out[str(n)] = self.stream_targets(self.paced, n, self.s.paced_tokens, True, f"paced_{n}")
            if BEFORE in res:
                res["ratio_after_before"] = res["gateway"]["gaps"]["p99"] / res[BEFORE]["gaps"]["p99"]
        return out

    # 5

    def scenario_memory(self) -> dict:
        """
        A fresh gateway of its own (and a fresh gateway before, with
        --baseline), so that what the other scenarios left in the heap does
        not count: its RSS idle (after one short stream, so that the code
        paths are loaded), at the peak of C{memory_streams} open paced
        streams, and after; a fresh bare Klein alongside, from its RSS after
        one stream.
        """
        fresh = {}
        try:
            for gateway in self.r.gateways:
                name = f"{gateway}_memory"
                fresh[gateway] = self.r.servers[name] = start_gateway(self.r.logdir, name, self.r.sources.get(gateway))
            klein = start_bare("klein", self.r.recordings, self.r.logdir, "bare_klein_memory")
            self.r.servers["bare_klein_memory"] = klein
            out: dict[str, Any] = {"fresh_idle_kb": {}, "warm_kb": {}, "after_kb": {}}

            def rss(key: str) -> None:
                for gateway, server in fresh.items():
                    prefix = "" if gateway == "gateway" else f"{gateway}_"
                    out[key][gateway] = rss_kb(server.pid)
                    out[key][f"{prefix}worker"] = rss_kb(server.worker_pid or 0)

            rss("fresh_idle_kb")
            for server in fresh.values():
                fetch(server.port, "POST", "/v1/chat/completions", shapes.body(shapes.chat_data(3, stream=True)))
            rss("warm_kb")
            body = shapes.body(self.paced).decode("latin-1")
            fetch(klein.port, "POST", "/v1/chat/completions", shapes.body(self.paced))
            for target in ["bare_klein_memory"] + [f"{g}_memory" for g in fresh]:
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
            rss("after_kb")
            if BEFORE in fresh:
                out["ratio_after_before_idle"] = out["fresh_idle_kb"]["gateway"] / out["fresh_idle_kb"][BEFORE]
                out["ratio_after_before_peak"] = out["gateway_memory"]["rss_peak_kb"] / out[f"{BEFORE}_memory"]["rss_peak_kb"]
            return out
        finally:
            for name in [f"{g}_memory" for g in self.r.gateways] + ["bare_klein_memory"]:
                server = self.r.servers.pop(name, None)
                if server is not None:
                    server.stop()

    # 4

    def scenario_payloads(self) -> dict:
        out = {}
        for name, p in self.payloads.items():
            body = shapes.body(p["data"]).decode("latin-1")
            rounds: dict[str, list] = {t: [] for t in self.http_targets()}
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
            if BEFORE in best:
                out[name]["ratio_after_before"] = best["gateway"]["mbps"] / best[BEFORE]["mbps"]
        return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the hfendpoint gateway against its floor and ceilings.")
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute: a smoke test of the harness")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    parser.add_argument("--profile", action="store_true", help="sample the gateway with py-spy during its measurements")
    parser.add_argument("--output", help="the JSON file to write (default bench/results/<timestamp>.json)")
    parser.add_argument("--baseline", metavar="SRC_DIR",
                        help="also measure the gateway of this source tree (a checkout of hfendpoint), side by side: "
                             "\"gateway (before)\", and the ratio after/before")
    parser.add_argument("--baseline-arg", metavar="OPTION", action="append", default=[],
                        help="an option for the baseline gateway's command (repeatable): with --baseline . "
                             "--baseline-arg=--no-metrics, what the metrics cost")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="rounds of each measurement that keeps its best (default 2, 1 with --quick): more for "
                             "ratios within a few percent on a noisy machine")
    args = parser.parse_args(argv)
    baseline = None
    if args.baseline:
        baseline = os.path.abspath(args.baseline)
        if not os.path.isdir(os.path.join(baseline, "src", "hfendpoint")):
            parser.error(f"--baseline: no src/hfendpoint in {args.baseline}")
    settings = Settings(args.quick)
    if args.rounds:
        settings.rounds = args.rounds
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
    if baseline:
        runner.gateways.append(BEFORE)
        runner.sources[BEFORE] = baseline
        results["baseline"] = {"module": gateway_module(baseline), "git": git_state(baseline), "options": args.baseline_arg}
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
        if baseline:
            print(f"starting the gateway before ({results['baseline']['git']['commit']})", file=sys.stderr)
            before = start_gateway(logdir, BEFORE, baseline, args.baseline_arg)
            runner.servers[BEFORE] = before
            results["idle_rss_kb"].update({BEFORE: rss_kb(before.pid), f"{BEFORE}_worker": rss_kb(before.worker_pid or 0)})
            # The same questions, checked the same way (the bare servers
            # replay the current gateway's answers only).
            results["recorded_before"] = record(before, requests, os.path.join(tmp, "recordings-before.json"))
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
    columns = header(bool(baseline))
    rows = table_rows(results, settings, columns)
    results["table"] = [dict(zip(columns, row)) for row in rows]
    results["table_markdown"] = render_table(columns, rows, markdown=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print()
    m, g = results["machine"], results["git"]
    print(f"{m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, Twisted {m['versions'].get('twisted')}, "
          f"hfendpoint at {g['commit']}{' + uncommitted src changes' if g['src_changes'] else ''}")
    if baseline:
        b = results["baseline"]["git"]
        print(f"gateway (before): {baseline} at {b['commit']}{' + uncommitted src changes' if b['src_changes'] else ''}, "
              f"python -m {results['baseline']['module']}")
    print(render_table(columns, rows))
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