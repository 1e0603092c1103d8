"""
Everything that configures a gateway, in one immutable object: the
C{hfendpoint} command and the twistd plugin build it from their options
(one table, L{hfendpoint.service._options}), and an application embedding
L{GatewayService} builds it directly.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, TextIO, Union

import attrs

#: The defaults, for the option table's help texts and the config alike.
DEFAULT_LISTEN = ("tcp:3000",)
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_IMAGE_CAPACITY = 1024**3
DEFAULT_MAX_WORKER_MESSAGE_SIZE = 256 * 1024 * 1024
DEFAULT_MAX_REPLY_MEMORY = 1024 * 1024 * 1024


def _tuple(value: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """
    How one gateway serves: where it listens, which worker it runs, and
    the limits and timeouts it keeps.

    @ivar worker_command: the worker's argv; C{None} serves the built-in
        demo worker.
    @ivar listen: Twisted endpoint descriptions to serve HTTP on
        (C{tcp:3000}, C{unix:/run/hfendpoint.sock}, C{ssl:443:...}).
    @ivar api_keys: the keys clients must present; with none (and no
        C{api_key_file}), the gateway is open to whoever reaches it.
    @ivar api_key_file: a file of keys, one per line, read again on
        L{GatewayService.reload_api_keys}.
    @ivar cors_origins: the web origins allowed to call the gateway from
        a browser, C{*} for any.
    @ivar forwarded_allow_ips: the proxies (addresses, networks, or C{*})
        whose C{X-Forwarded-For}, C{-Proto} and C{-Host} are believed.
    @ivar metrics: whether to keep Prometheus metrics and serve them at
        C{/metrics}.
    @ivar metrics_listen: endpoint descriptions serving only C{/metrics},
        without API keys, for a scraper on a private network.
    @ivar log_format: C{text}, or C{json} for the access log's lines as
        JSON objects (the command's own log follows it too).
    @ivar ping_interval: seconds between two liveness probes of a worker
        that answers them (C{hfendpoint.ping}); 0 for none.
    @ivar ping_timeout: seconds a worker has to answer one before it is
        taken as hung, reported on C{/ready} and restarted.
    @ivar max_reply_memory: the most bytes of worker replies held at once
        by requests in flight; the request whose reply goes over fails
        with a 502.
    @ivar access_log: C{True} for Twisted's access log through the global
        log, C{False} for none, or a text stream to write Combined Log
        Format lines to directly.
    @ivar request_head_timeout: seconds a client has to send a whole
        request head from its first byte (C{0}: no limit), answered with a
        408 past that; the idle timeout alone starts again on every byte.
    @ivar min_body_rate: bytes a second a request body must average once
        C{body_rate_grace} seconds have passed (C{0}: no limit), or a 408.
    """

    worker_command: Optional[tuple[str, ...]] = attrs.field(default=None, converter=_tuple)
    listen: tuple[str, ...] = attrs.field(default=DEFAULT_LISTEN, converter=tuple)
    model_name: Optional[str] = None
    workers: int = 1
    worker_env: Mapping[str, str] = attrs.field(factory=dict)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    max_image_capacity: int = DEFAULT_IMAGE_CAPACITY
    max_worker_message_size: int = DEFAULT_MAX_WORKER_MESSAGE_SIZE
    reply_timeout: float = 300.0
    first_reply_timeout: Optional[float] = None
    request_timeout: Optional[float] = None
    max_in_flight: int = 4096
    max_waiting: int = 1024
    queue_timeout: float = 60.0
    drain_timeout: float = 30.0
    idle_timeout: float = 75.0
    startup_grace: float = 2.0
    stop_timeout: float = 10.0
    max_restarts: Optional[int] = None
    batch_tokens: int = 16384
    access_log: Union[bool, TextIO] = True
    api_keys: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    api_key_file: Optional[str] = None
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    metrics: bool = True
    forwarded_allow_ips: tuple[str, ...] = attrs.field(default=("127.0.0.1", "::1"), converter=tuple)
    log_format: str = attrs.field(default="text", validator=attrs.validators.in_(("text", "json")))
    metrics_listen: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    request_head_timeout: float = 60.0
    min_body_rate: int = 500
    body_rate_grace: float = 20.0
    ping_interval: float = 10.0
    ping_timeout: float = 15.0
    max_reply_memory: int = DEFAULT_MAX_REPLY_MEMORY

    def replace(self, **changes: Any) -> "GatewayConfig":
        """
        A copy with C{changes}, for a test or an application that starts
        from the defaults.
        """
        return attrs.evolve(self, **changes)
