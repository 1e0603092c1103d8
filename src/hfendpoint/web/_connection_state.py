"""
The state of one connection of the hardened HTTP channel
(L{hfendpoint.web._hardened.HardenedChannel}), in objects of its own
rather than in the channel's instance dictionary, which is left to
Twisted's attributes (the channel's docstring says why).
"""

from __future__ import annotations

from typing import Any, Optional

#: Defaults of the site's options: nginx cuts a head off after 60 s;
#: Apache's mod_reqtimeout wants 500 bytes a second of a body after 20 s.
DEFAULT_REQUEST_HEAD_TIMEOUT = 60.0
DEFAULT_MIN_BODY_RATE = 500
DEFAULT_BODY_RATE_GRACE = 20.0


class ConnectionInfo:
    """
    What a connection knows once connected: its site's clock and limits,
    and its own address.
    """

    __slots__ = ("clock", "head_timeout", "min_rate", "grace", "plain_limit", "host")

    def __init__(self, channel: Any) -> None:
        site = getattr(channel, "site", None)
        self.clock = getattr(site, "reactor", None)
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        self.head_timeout: Optional[float] = getattr(site, "request_head_timeout", DEFAULT_REQUEST_HEAD_TIMEOUT)
        self.min_rate: int = getattr(site, "min_body_rate", DEFAULT_MIN_BODY_RATE)
        self.grace: float = getattr(site, "body_rate_grace", DEFAULT_BODY_RATE_GRACE)
        self.plain_limit = min(channel.totalHeadersSize, channel.MAX_LENGTH)
        #: The connection's own address, asked for by every request.
        self.host: Any = None


class ReadState:
    """
    Where a connection is in reading its requests.
    """

    __slots__ = (
        "refused",
        "plain",
        "waiting",
        "fresh",
        "reading",
        "request_start",
        "head_size",
        "headers",
        "te_seen",
        "cl_seen",
        "head_start",
        "head_call",
        "body_start",
        "body_call",
        "body_received",
    )

    def __init__(self) -> None:
        self.refused = False
        #: Whether the head being read passed whole (L{_plain_head}): its
        #: lines go to Twisted unchecked.
        self.plain = False
        #: Whether the channel waits for a request: its next byte starts a
        #: head.
        self.waiting = True
        #: Whether Twisted's line parser holds no byte of the next head:
        #: not so after a request answered in the middle of a read, whose
        #: rest the parser went on reading by itself.
        self.fresh = True
        #: Whether a read is being parsed.
        self.reading = False
        #: The start of the request being read (its line at least), once
        #: it came.
        self.request_start = b""
        self.head_size = 0
        self.headers = 0
        self.te_seen = False
        self.cl_seen = False
        #: When the head being read began, until it is whole.
        self.head_start: Optional[float] = None
        self.head_call: Any = None
        #: When the body being read began, until it is whole (and only
        #: when its rate is checked).
        self.body_start: Optional[float] = None
        self.body_call: Any = None
        self.body_received = 0
