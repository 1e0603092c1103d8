"""
The twistd plugin's options and service:

    twistd -n hfendpoint --listen tcp:3000 --worker ./worker [-- worker args...]
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from hfendpoint.service._sizes import parse_size
from hfendpoint.web._coalescing import DEFAULT_BUSY_POLL

_log = Logger(namespace="hfendpoint")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise usage.UsageError(str(e))


class Options(usage.Options):
    synopsis = "[options] [-- worker arguments...]"
    longdesc = (
        "Serve a model worker behind OpenAI-compatible HTTP endpoints. "
        "Without --worker, the built-in demo worker is served. Arguments after "
        "the options are passed to the worker."
    )

    optFlags = [["no-access-log", None, "Do not log a line for each HTTP request."]]

    optParameters = [
        ["worker", "w", None, "The worker executable (default: the built-in demo worker)."],
        ["max-image-capacity", None, parse_size("1G"), "Memory kept for images served by URL (K, M, G suffixes).", _size],
        ["max-body-size", None, parse_size("10M"), "Largest request body accepted (K, M, G suffixes).", _size],
        ["model-name", None, None, "The model name responses carry."],
        ["reply-timeout", None, 300.0, "Longest wait for each worker reply, in seconds.", float],
        ["first-reply-timeout", None, None, "Longest wait for a request's first reply, in seconds.", float],
        ["request-timeout", None, None, "Longest time a whole request may take, in seconds.", float],
        ["max-concurrent-requests", None, 4096, "Requests served at once.", int],
        ["max-queued-requests", None, 1024, "Requests waiting for a turn before 429s.", int],
        ["queue-timeout", None, 60.0, "Longest wait in the queue, in seconds.", float],
        ["drain-timeout", None, 30.0, "How long requests in flight may finish on stop.", float],
        ["idle-timeout", None, 75.0, "Close connections idle this long, in seconds.", float],
        ["workers", None, 1, "Worker processes to run (HFENDPOINT_WORKER_INDEX tells each its index).", int],
        ["embeddings-batch-tokens", None, 16384, "Batch concurrent embeddings into calls of up to N tokens (0: off).", int],
        ["max-restarts", None, None, "Give up after N restarts in a row of a failing worker.", int],
        ["busy-poll-us", None, round(DEFAULT_BUSY_POLL * 1e6), "Poll this long, awake, for the reply to a lone worker call (0: never).", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Where to serve HTTP, as a Twisted endpoint description (tcp:3000, unix:/run/hfendpoint.sock, ssl:443:privateKey=key.pem); may be repeated. Default: tcp:3000.
        """
        self["listen"].append(description)

    def parseArgs(self, *worker_args: str) -> None:
        self["worker_args"] = list(worker_args)

    _positive = ("reply-timeout", "first-reply-timeout", "request-timeout", "queue-timeout",
                 "idle-timeout", "max-concurrent-requests", "workers")
    _non_negative = ("max-queued-requests", "drain-timeout", "max-restarts", "embeddings-batch-tokens", "busy-poll-us")

    def postOptions(self) -> None:
        for name in self._positive:
            if self[name] is not None and self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        for name in self._non_negative:
            if self[name] is not None and self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        if not self["listen"]:
            self["listen"] = ["tcp:3000"]
        from hfendpoint.backend._process import WorkerNotFound, resolve_worker

        if self["worker"] is None:
            if self["worker_args"]:
                raise usage.UsageError("worker arguments were given without --worker")
            self["command"] = None
            return
        try:
            self["command"] = resolve_worker([self["worker"], *self["worker_args"]])
        except WorkerNotFound as e:
            raise usage.UsageError(str(e))


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from hfendpoint.service import _allocator as allocator

    from hfendpoint.service import _collector as collector
    from hfendpoint.service._service import GatewayService

    gateway = GatewayService(
        reactor,
        options["command"],
        listen=options["listen"],
        max_body_size=options["max-body-size"],
        max_image_capacity=options["max-image-capacity"],
        model_name=options["model-name"],
        reply_timeout=options["reply-timeout"],
        first_reply_timeout=options["first-reply-timeout"],
        request_timeout=options["request-timeout"],
        max_in_flight=options["max-concurrent-requests"],
        max_waiting=options["max-queued-requests"],
        queue_timeout=options["queue-timeout"],
        drain_timeout=options["drain-timeout"],
        idle_timeout=options["idle-timeout"],
        max_restarts=options["max-restarts"],
        workers=options["workers"],
        batch_tokens=options["embeddings-batch-tokens"],
        busy_poll=options["busy-poll-us"] / 1e6,
        access_log=not options["no-access-log"],
    )
    gateway.stop_reactor_on_failure = True
    collector.tune(reactor)
    allocator.tune()
    return gateway
