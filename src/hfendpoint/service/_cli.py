"""
The C{hfendpoint} command, with the original's command line:

    hfendpoint [--host 0.0.0.0] [--port 3000] [--max-image-capacity 1G]
               [--max-body-size 10M] [WORKER_PATH [WORKER_ARGS]...]

It runs in the foreground and logs to stderr. Without C{WORKER_PATH} it
serves the built-in demo worker.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from twisted.logger import Logger

from hfendpoint import __version__
from hfendpoint.service._sizes import parse_size
from hfendpoint.web._coalescing import DEFAULT_BUSY_POLL

_log = Logger(namespace="hfendpoint")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfendpoint",
        description="Serve a model worker behind OpenAI-compatible HTTP endpoints.",
        epilog="Without WORKER_PATH, the built-in demo worker is served.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=3000, help="port to listen on (default: 3000)")
    parser.add_argument(
        "--max-image-capacity",
        type=_size,
        default=parse_size("1G"),
        metavar="SIZE",
        help="memory kept for images served by URL, oldest dropped first (default: 1G)",
    )
    parser.add_argument(
        "--max-body-size",
        type=_size,
        default=parse_size("10M"),
        metavar="SIZE",
        help="largest request body accepted (default: 10M)",
    )
    parser.add_argument("--model-name", help="the model name responses carry (default: the worker's, or 'hfendpoint')")
    parser.add_argument(
        "--reply-timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="longest wait for each reply from the worker (default: 300)",
    )
    parser.add_argument(
        "--first-reply-timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="longest wait for the first reply of a request (time to first token; default: --reply-timeout)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="longest time a whole request may take (default: no limit beyond --reply-timeout)",
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="requests served at once; more wait in a queue (default: 4096)",
    )
    parser.add_argument(
        "--max-queued-requests",
        type=_non_negative_int,
        default=1024,
        metavar="N",
        help="requests waiting for a turn; more get 429 with Retry-After (default: 1024)",
    )
    parser.add_argument(
        "--queue-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait in the queue before a 503 (default: 60)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long requests in flight may finish (default: 30)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=75.0,
        metavar="SECONDS",
        help="close client connections idle (or sending nothing) for this long (default: 75)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes to run, each told its index in HFENDPOINT_WORKER_INDEX (default: 1)",
    )
    parser.add_argument(
        "--embeddings-batch-tokens",
        type=_non_negative_int,
        default=16384,
        metavar="N",
        help="batch concurrent embeddings requests into worker calls of up to N tokens "
        "while the worker is busy (default: 16384; 0: no batching)",
    )
    parser.add_argument(
        "--busy-poll-us",
        type=_non_negative_int,
        default=round(DEFAULT_BUSY_POLL * 1e6),
        metavar="MICROSECONDS",
        help="after sending the worker a call while no other is in flight, poll for its reply "
        f"this long, awake, before sleeping (default: {round(DEFAULT_BUSY_POLL * 1e6)}; 0: never)",
    )
    parser.add_argument(
        "--max-restarts",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="give up and exit after N restarts of a failing worker in a row "
        "(default: restart forever, with a growing delay; 0: exit when the worker exits)",
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="do not log a line for each HTTP request",
    )
    parser.add_argument("--version", action="version", version=f"hfendpoint {__version__}")
    parser.add_argument("worker", nargs="?", metavar="WORKER_PATH", help="the worker executable")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER, metavar="WORKER_ARGS", help="arguments for the worker")
    return parser


def listen_description(host: str, port: int) -> str:
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"invalid port {args.port}")
    from hfendpoint.backend._process import WorkerNotFound, demo_worker_command, resolve_worker

    if args.worker is None:
        command = demo_worker_command()
    else:
        try:
            command = resolve_worker([args.worker, *args.worker_args])
        except WorkerNotFound as e:
            print(f"hfendpoint: error: {e}", file=sys.stderr)
            return 2
    return run(args, command)


def run(args: argparse.Namespace, command: list[str]) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from hfendpoint.service import _allocator as allocator

    from hfendpoint.service import _collector as collector
    from hfendpoint.service._service import GatewayService

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    gateway = GatewayService(
        reactor,
        command,
        listen=[listen_description(args.host, args.port)],
        max_body_size=args.max_body_size,
        max_image_capacity=args.max_image_capacity,
        model_name=args.model_name,
        reply_timeout=args.reply_timeout,
        first_reply_timeout=args.first_reply_timeout,
        request_timeout=args.request_timeout,
        max_in_flight=args.max_concurrent_requests,
        max_waiting=args.max_queued_requests,
        queue_timeout=args.queue_timeout,
        drain_timeout=args.drain_timeout,
        idle_timeout=args.idle_timeout,
        max_restarts=args.max_restarts,
        workers=args.workers,
        batch_tokens=args.embeddings_batch_tokens,
        busy_poll=args.busy_poll_us / 1e6,
        # Combined Log Format lines on stderr, beside the log, in one write
        # per reactor turn.
        access_log=sys.stderr if args.access_log else False,
    )
    gateway.stop_reactor_on_failure = True
    outcome = {"code": 0}

    def failed(why: str) -> None:
        outcome["code"] = 1
        print(f"hfendpoint: error: {why}", file=sys.stderr)

    def start() -> None:
        gateway.whenFailed().addCallback(failed)
        gateway.startService()
        gateway.whenListening().addCallback(
            lambda _: _log.info("Listening on http://{host}:{port}", host=args.host, port=args.port)
        )
        gateway.whenReady().addCallbacks(lambda _: _log.info("The worker is ready"), lambda f: None)

    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.callWhenRunning(start)
    collector.tune(reactor)
    allocator.tune()
    reactor.run()
    return outcome["code"]


def console_script() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_script()
