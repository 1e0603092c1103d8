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
from typing import Any, Optional, Sequence

from twisted.logger import Logger

from hfendpoint import __version__
from hfendpoint.service._config import GatewayConfig
from hfendpoint.service._options import FLAGS, LISTEN_HELP, OPTIONS, build_config, worker_command

_log = Logger(namespace="hfendpoint")


def _argparse_type(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))

    convert.__name__ = parse.__name__
    return convert


def endpoint_description(text: str) -> str:
    """
    Check a Twisted server endpoint description (C{--listen},
    C{--metrics-listen}) when the options are read, so that a typo is a
    usage error rather than a traceback once the service starts.

    The description is parsed as the service will parse it, against a
    reactor in memory: nothing listens, but an unknown type, a bad port
    or a missing TLS key file are found.

    @raise ValueError: with a sentence saying what is wrong.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), text)
    except Exception as e:
        raise ValueError(f"invalid endpoint description {text!r}: {e or type(e).__name__}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfendpoint",
        description="Serve a model worker behind OpenAI-compatible HTTP endpoints.",
        epilog="Without WORKER_PATH, the built-in demo worker is served. A worker command "
        "that starts with 'python' runs with the gateway's own interpreter.",
    )
    parser.add_argument("--host", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default: 3000)")
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        type=_argparse_type(endpoint_description),
        metavar="DESCRIPTION",
        help=LISTEN_HELP + "; with --host/--port, both",
    )
    for option in OPTIONS:
        parse = endpoint_description if option.field == "metrics_listen" else option.parse
        parser.add_argument(
            "--" + option.name,
            dest=option.field,
            type=_argparse_type(parse),
            default=list(option.default) if option.repeatable else option.default,
            action="append" if option.repeatable else "store",
            metavar=option.metavar,
            help=option.describe(),
        )
    for flag in FLAGS:
        parser.add_argument("--" + flag.name, dest=flag.field, action="store_false", help=flag.help)
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


def listen_descriptions(args: argparse.Namespace) -> list[str]:
    """
    Where to listen: each C{--listen}, and C{--host}/C{--port} (the
    original's shorthand) when given or when nothing else is.
    """
    listen = list(args.listen)
    if args.host is not None or args.port is not None or not listen:
        listen.append(listen_description(args.host or "0.0.0.0", 3000 if args.port is None else args.port))
    return listen


def listen_description(host: str, port: int) -> str:
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error(f"invalid port {args.port}")
    from hfendpoint.backend._process import WorkerNotFound

    try:
        command = worker_command([args.worker, *args.worker_args] if args.worker else [])
    except WorkerNotFound as e:
        print(f"hfendpoint: error: {e}", file=sys.stderr)
        return 2
    config = build_config(
        vars(args),
        command,
        listen_descriptions(args),
        # Combined Log Format lines on stderr, beside the log, in one write
        # per reactor turn.
        sys.stderr if args.access_log else False,
    )
    return run(config)


def run(config: GatewayConfig) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from hfendpoint.service._service import GatewayService
    from hfendpoint.service._tuning import tune_process

    if config.log_format == "json":
        from hfendpoint.service._logging import json_log_observer

        observer = json_log_observer(sys.stderr)
    else:
        observer = textFileLogObserver(sys.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    gateway = GatewayService(reactor, config)
    gateway.stop_reactor_on_failure = True
    outcome = {"code": 0}

    def failed(why: str) -> None:
        outcome["code"] = 1
        if config.log_format == "text":
            # Logged already; said once more, plainly, as the last line.
            print(f"hfendpoint: error: {why}", file=sys.stderr)

    def start() -> None:
        gateway.whenFailed().addCallback(failed)
        gateway.startService()
        gateway.whenListening().addCallback(lambda ports: _log_listening(ports))
        gateway.whenReady().addCallbacks(lambda _: _log.info("The worker is ready"), lambda f: None)

    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reload_keys_on_hangup(reactor, gateway)
    reactor.callWhenRunning(start)
    tune_process(reactor)
    reactor.run()
    return outcome["code"]


def reload_keys_on_hangup(reactor: Any, gateway: Any) -> None:
    """
    Read the API key file again on SIGHUP, as daemons re-read their
    configuration; only the gateway's own entry points do this, since a
    signal handler belongs to the whole process.
    """
    import signal

    if gateway.api_keys.path is None or not hasattr(signal, "SIGHUP"):
        return
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gateway.reload_api_keys))


def _log_listening(ports: list) -> None:
    for port in ports:
        address = port.getHost()
        if hasattr(address, "port"):
            _log.info("Listening on http://{host}:{port}", host=address.host, port=address.port)
        else:
            _log.info("Listening on {address}", address=address)


def console_script() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_script()
