"""
The gateway's options, declared once: the C{hfendpoint} command's
argparse parser and the twistd plugin's L{usage.Options} are both built
from L{OPTIONS}, and both end in the same L{GatewayConfig}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import attrs

from hfendpoint.service._config import GatewayConfig
from hfendpoint.service._sizes import format_size, parse_size

#: Worker commands starting with one of these run with the gateway's own
#: interpreter: C{hfendpoint python -m hfendpoint.workers.diffusers} must
#: not depend on which C{python} comes first on the PATH.
PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info[1]}"})


def _parser(kind: Callable[[str], Any], positive: bool) -> Callable[[str], Any]:
    """
    A parser of C{kind} numbers, above zero when C{positive}, at least zero
    otherwise.
    """

    def parse(text: str) -> Any:
        value = _number(text, kind)
        if value < 0 or (positive and value == 0):
            raise ValueError(f"{text!r} must be positive" if positive else f"{text!r} must not be negative")
        return value

    parse.__name__ = f"{'positive' if positive else 'non_negative'}_{kind.__name__}"
    return parse


positive_float = _parser(float, positive=True)
non_negative_float = _parser(float, positive=False)
positive_int = _parser(int, positive=True)
non_negative_int = _parser(int, positive=False)


def _number(text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text)
    except ValueError:
        noun = "integer" if kind is int else "number"
        raise ValueError(f"invalid {noun} {text!r}") from None


@attrs.frozen
class Option:
    """
    One option of both parsers.

    @ivar name: the long option, without its dashes.
    @ivar field: the L{GatewayConfig} field it sets; its default is that
        field's.
    @ivar parse: turns the text given into the value, or raises
        C{ValueError} with a sentence for the user.
    @ivar show: writes the default in the help text.
    """

    name: str
    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "N"
    show: Callable[[Any], str] = str
    repeatable: bool = False

    @property
    def default(self) -> Any:
        return getattr(GatewayConfig(), self.field)

    def describe(self) -> str:
        default = self.default
        if default is None or self.repeatable:
            return self.help
        return f"{self.help} (default: {self.show(default)})"


def log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"invalid log format {text!r}: expected text or json")
    return text


def addresses(text: str) -> tuple[str, ...]:
    from hfendpoint.web._forwarded import parse_networks

    entries = tuple(part.strip() for part in text.split(",") if part.strip())
    parse_networks(entries)
    return entries


def _seconds(value: float) -> str:
    return f"{value:g}"


OPTIONS = (
    Option("model-name", "model_name", str, "the model name responses carry (default: the worker's, or 'hfendpoint')", "NAME"),
    Option("workers", "workers", positive_int, "worker processes to run, each told its index in HFENDPOINT_WORKER_INDEX"),
    Option("max-image-capacity", "max_image_capacity", parse_size, "memory kept for images served by URL, oldest dropped first", "SIZE", format_size),
    Option("max-body-size", "max_body_size", parse_size, "largest request body accepted", "SIZE", format_size),
    Option("reply-timeout", "reply_timeout", positive_float, "longest wait for each reply from the worker", "SECONDS", _seconds),
    Option("first-reply-timeout", "first_reply_timeout", positive_float, "longest wait for the first reply of a request (time to first token; default: --reply-timeout)", "SECONDS"),
    Option("request-timeout", "request_timeout", positive_float, "longest time a whole request may take (default: no limit beyond --reply-timeout)", "SECONDS"),
    Option("max-concurrent-requests", "max_in_flight", positive_int, "requests served at once; more wait in a queue"),
    Option("max-queued-requests", "max_waiting", non_negative_int, "requests waiting for a turn; more get 429 with Retry-After"),
    Option("queue-timeout", "queue_timeout", positive_float, "longest wait in the queue before a 503", "SECONDS", _seconds),
    Option("drain-timeout", "drain_timeout", non_negative_float, "on SIGTERM/SIGINT, how long requests in flight may finish", "SECONDS", _seconds),
    Option("idle-timeout", "idle_timeout", positive_float, "close client connections idle (or sending nothing) for this long", "SECONDS", _seconds),
    Option("embeddings-batch-tokens", "batch_tokens", non_negative_int, "batch concurrent embeddings requests into worker calls of up to N tokens while the worker is busy (0: no batching)"),
    Option("api-key", "api_keys", str, "a key clients must send (Authorization: Bearer KEY or X-Api-Key); repeatable; also HFENDPOINT_API_KEY (default: none, the gateway is open)", "KEY", repeatable=True),
    Option("api-key-file", "api_key_file", str, "a file of keys, one per line, read again on SIGHUP", "FILE"),
    Option("cors-origin", "cors_origins", str, "a web origin allowed to call the gateway from a browser (https://app.example.com, or * for any); repeatable", "ORIGIN", repeatable=True),
    Option("forwarded-allow-ips", "forwarded_allow_ips", addresses, "the proxies whose X-Forwarded-For, -Proto and -Host are believed, comma-separated addresses or networks, or * for any", "ADDRESSES", ",".join),
    Option("log-format", "log_format", log_format, "text, or json for one JSON object per line (time, level, event, request id, method, path, status, duration, client), the access log's too", "FORMAT"),
    Option("metrics-listen", "metrics_listen", str, "also serve /metrics, alone and without API keys, on this Twisted endpoint (tcp:9100:interface=10.0.0.5); repeatable", "DESCRIPTION", repeatable=True),
    Option("max-restarts", "max_restarts", non_negative_int, "give up and exit after N restarts of a failing worker in a row (default: restart forever, with a growing delay; 0: exit when the worker exits)"),
    Option("request-head-timeout", "request_head_timeout", non_negative_float, "longest time a client may take to send a request's line and headers, from its first byte, before a 408 (0: no limit)", "SECONDS", _seconds),
    Option("min-body-rate", "min_body_rate", non_negative_int, "slowest average rate, in bytes a second, of a request body once --body-rate-grace has passed, before a 408 (0: no limit)", "BYTES"),
    Option("body-rate-grace", "body_rate_grace", non_negative_float, "seconds a request body may take before --min-body-rate applies", "SECONDS", _seconds),
    Option("ping-interval", "ping_interval", non_negative_float, "how often to check that a worker which supports it still answers (a liveness probe; 0: never)", "SECONDS", _seconds),
    Option("ping-timeout", "ping_timeout", positive_float, "how long a worker has to answer the liveness probe before it is reported not ready and restarted", "SECONDS", _seconds),
    Option("max-reply-memory", "max_reply_memory", parse_size, "worker replies held at once by requests in flight; the request whose reply goes over gets a 502", "SIZE", format_size),
)

@attrs.frozen
class Flag:
    """
    A switch of both parsers that turns a L{GatewayConfig} field off.
    """

    name: str
    field: str
    help: str


FLAGS = (Flag("no-metrics", "metrics", "do not keep Prometheus metrics nor serve /metrics"),)

#: The environment variable holding one more API key.
API_KEY_VARIABLE = "HFENDPOINT_API_KEY"

LISTEN_HELP = (
    "where to serve HTTP, as a Twisted endpoint description (tcp:3000, "
    "unix:/run/hfendpoint.sock, ssl:443:privateKey=key.pem:certKey=cert.pem); "
    "may be repeated (default: tcp:3000)"
)


def worker_command(argv: Sequence[str]) -> Optional[list[str]]:
    """
    The worker command to run, checked; C{None} (the demo worker) when
    C{argv} is empty. A command that starts with C{python} runs with the
    gateway's own interpreter, which has hfendpoint and its workers
    whether or not its virtual environment is active.

    @raise WorkerNotFound: with a sentence saying what is wrong.
    """
    from hfendpoint.backend._process import resolve_worker

    if not argv:
        return None
    argv = list(argv)
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return resolve_worker(argv)


def build_config(
    values: Mapping[str, Any],
    command: Optional[Sequence[str]],
    listen: Sequence[str],
    access_log: Any,
) -> GatewayConfig:
    """
    The configuration that the parsed C{values} (by L{GatewayConfig}
    field) describe.
    """
    fields = {option.field: values[option.field] for option in OPTIONS}
    fields.update((flag.field, values[flag.field]) for flag in FLAGS)
    from_environment = os.environ.get(API_KEY_VARIABLE)
    if from_environment:
        fields["api_keys"] = (*fields["api_keys"], from_environment)
    return GatewayConfig(
        worker_command=command,
        listen=listen,
        access_log=access_log,
        **fields,
    )
