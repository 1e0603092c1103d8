"""
Prometheus metrics of the HTTP side: every answer counted by endpoint and
status and timed (by the site, as it finishes a request), and the
C{/metrics} page itself.

Everything else (queues, workers, the image store) is read from the
gateway's own state when Prometheus scrapes, by a collector the service
registers, so that it costs nothing per request.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource

from hfendpoint.web._tally import Buckets, Count, CounterTally, HistogramTally, TallyCollector

METRICS_PATH = b"/metrics"
_METHODS = frozenset({b"GET", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"PUT", b"PATCH"})

#: Paths counted under their own name; any other is a route template or
#: C{other}, so that no client can grow the number of series.
EXACT_ENDPOINTS = {
    path: path.decode("ascii")
    for path in (
        b"/",
        b"/health",
        b"/ready",
        b"/openapi.json",
        b"/metrics",
        b"/tokenize",
        b"/detokenize",
        b"/v1/models",
        b"/v1/chat/completions",
        b"/v1/completions",
        b"/v1/responses",
        b"/v1/embeddings",
        b"/v1/images/generations",
        b"/v1/images/edits",
    )
}
TEMPLATES = ((b"/v1/models/", "/v1/models/{model}"), (b"/v1/images/", "/v1/images/{image_id}"))

#: Seconds: from a token's few milliseconds to an image's minutes.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


def endpoint_of(path: bytes) -> str:
    name = EXACT_ENDPOINTS.get(path)
    if name is not None:
        return name
    for prefix, template in TEMPLATES:
        if path.startswith(prefix) and b"/" not in path[len(prefix) :]:
            return template
    return "other"


class _Finished:
    """
    What a finished request of one path, method and status counts: its
    series of the requests counter and of the durations.
    """

    __slots__ = ("requests", "duration")

    def __init__(self, requests: Count, duration: Buckets) -> None:
        self.requests = requests
        self.duration = duration


class _Tokens:
    """
    The token counters of one endpoint.
    """

    __slots__ = ("prompt", "completion")

    def __init__(self, prompt: Count, completion: Count) -> None:
        self.prompt = prompt
        self.completion = completion


class HTTPMetrics:
    """
    The metric families that the HTTP side records, in one registry of
    the gateway's own (never the process's global one, which an embedding
    application may use). They are tallies (L{hfendpoint.web._tally}):
    plain numbers while serving, Prometheus families when scraped.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = CounterTally(
            "hfendpoint_requests",
            "HTTP requests answered, by endpoint, method and status (429: refused by admission control)",
            ["endpoint", "method", "status"],
        )
        self.duration = HistogramTally(
            "hfendpoint_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            ["endpoint"],
            DURATION_BUCKETS,
        )
        self.time_to_first_token = HistogramTally(
            "hfendpoint_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first event",
            ["endpoint"],
            DURATION_BUCKETS,
        )
        self.time_between_tokens = HistogramTally(
            "hfendpoint_time_between_tokens_seconds",
            "Time between two writes of events to a stream",
            ["endpoint"],
            TOKEN_GAP_BUCKETS,
        )
        self.prompt_tokens = CounterTally(
            "hfendpoint_prompt_tokens",
            "Prompt tokens of answered requests, as their usage reports them",
            ["endpoint"],
        )
        self.completion_tokens = CounterTally(
            "hfendpoint_completion_tokens",
            "Completion tokens of answered requests, as their usage reports them",
            ["endpoint"],
        )
        self.tallies: list[Any] = [
            self.requests,
            self.duration,
            self.time_to_first_token,
            self.time_between_tokens,
            self.prompt_tokens,
            self.completion_tokens,
        ]
        registry.register(TallyCollector(self.tallies))
        #: By the path, method and status of a finished request: what it
        #: counts. Only the paths the API has are kept, so that no client
        #: can grow it.
        self._series: dict[tuple, _Finished] = {}
        #: By path: the token counters of the API's paths.
        self._tokens: dict[bytes, _Tokens] = {}

    def finished(self, request: Any, now: float) -> None:
        """
        Count and time C{request}, which the site has just finished
        (L{GatewaySite.log}, called for every finished request: no
        per-request callback is needed).
        """
        series = self._series.get((request.path, request.method, request.code))
        if series is None:
            series = self._finished_series(request)
        series.requests.value += 1
        started = getattr(request, "started", None)
        series.duration.observe(now - started if started else 0.0)

    def _finished_series(self, request: Any) -> _Finished:
        method = request.method.decode("ascii", "replace") if request.method in _METHODS else "other"
        endpoint = endpoint_of(request.path)
        series = _Finished(self.requests.of((endpoint, method, str(request.code))), self.duration.of((endpoint,)))
        if request.path in EXACT_ENDPOINTS and request.method in _METHODS:
            self._series[(request.path, request.method, request.code)] = series
        return series

    def usage(self, path: bytes, usage: Any) -> None:
        """
        Count the tokens of the C{usage} (OpenAI's shape, of any endpoint)
        of a request to C{path}.
        """
        if not isinstance(usage, dict):
            return
        counts = self._tokens.get(path)
        if counts is None:
            counts = self._token_counts(path)
        prompt = usage.get("prompt_tokens")
        if prompt is None:
            prompt = usage.get("input_tokens")
        completion = usage.get("completion_tokens")
        if completion is None:
            completion = usage.get("output_tokens")
        if isinstance(prompt, int) and prompt > 0:
            counts.prompt.value += prompt
        if isinstance(completion, int) and completion > 0:
            counts.completion.value += completion

    def _token_counts(self, path: bytes) -> _Tokens:
        key = (endpoint_of(path),)
        counts = _Tokens(self.prompt_tokens.of(key), self.completion_tokens.of(key))
        if path in EXACT_ENDPOINTS:
            self._tokens[path] = counts
        return counts


def metrics_of(request: Any) -> Optional["HTTPMetrics"]:
    """
    The metrics of the site serving C{request}, if it keeps any.
    """
    return getattr(getattr(request, "site", None), "metrics", None)


def record_usage(request: Any, usage: Any) -> None:
    """
    Count the tokens of an answer's C{usage} against C{request}'s endpoint,
    when metrics are kept.
    """
    metrics = metrics_of(request)
    if metrics is not None and usage:
        metrics.usage(request.path, usage)


def stream_timer(request: Any, clock: Callable[[], float] = time.time) -> Optional["StreamTimer"]:
    """
    A timer of the events of C{request}'s stream, when metrics are kept.
    """
    metrics = metrics_of(request)
    if metrics is None:
        return None
    return StreamTimer(metrics, endpoint_of(request.path), clock, getattr(request, "started", None) or clock())


class StreamTimer:
    """
    Times one stream's events: the first from the request's arrival, the
    next ones from the one before.
    """

    __slots__ = ("_metrics", "_endpoint", "_clock", "_last", "_first", "_gaps")

    def __init__(self, metrics: HTTPMetrics, endpoint: str, clock: Callable[[], float], started: float) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._clock = clock
        self._last = started
        self._first = True
        self._gaps = metrics.time_between_tokens.of((endpoint,))

    def event(self) -> None:
        now = self._clock()
        if self._first:
            self._metrics.time_to_first_token.of((self._endpoint,)).observe(now - self._last)
            self._first = False
        else:
            self._gaps.observe(now - self._last)
        self._last = now


class MetricsResource(Resource):
    """
    The registry in Prometheus' text format at C{/metrics}; anything else
    goes to C{inner} (a 404 without one).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, inner: Any = None) -> None:
        super().__init__()
        self._registry = registry
        self._inner = inner

    def render(self, request: Any) -> Any:
        if request.path == METRICS_PATH and request.method in (b"GET", b"HEAD"):
            return self._page(request)
        if self._inner is not None:
            return self._inner.render(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain")
        return b"Not found: metrics are at /metrics.\n"

    def _page(self, request: Any) -> bytes:
        body = generate_latest(self._registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body
