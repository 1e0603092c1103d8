"""
Request ids: each request is known by one id, the client's own
C{X-Request-Id} when it sends a usable one, so that its answer, the
access log, the gateway's log and the worker's log can be joined.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from twisted.web.resource import Resource

from hfendpoint._twisted_private import header_table, set_header

#: Longest client id kept; a longer one is replaced.
MAX_LENGTH = 128
_USABLE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,%d}\Z" % MAX_LENGTH)


class IdMaker:
    """
    Ids unique to the process and across processes: a random prefix drawn
    once, then a counter, as cheap per request as a number (a request id
    names a request, it grants nothing, so it need not be unguessable).
    """

    def __init__(self) -> None:
        self._format = os.urandom(8).hex().encode("ascii") + b"%016x"
        self._count = itertools.count(1)

    def __call__(self) -> bytes:
        return self._format % next(self._count)


def request_id_of(request: Any) -> str:
    """
    The id of C{request}, once L{RequestIdResource} has seen it.
    """
    return getattr(request, "request_id", None) or "-"


class RequestIdResource(Resource):
    """
    Gives every request an id (C{request.request_id}): the client's
    C{X-Request-Id} when it is short and plain (letters, digits and
    C{._:/+=@-}), a new random one otherwise, returned on every answer.
    """

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner
        self._new_id = IdMaker()

    def render(self, request: Any) -> Any:
        sent = header_table(request.requestHeaders).get(b"X-Request-Id")
        ident = sent[-1] if sent else None
        if ident is None or not _USABLE.match(ident):
            ident = self._new_id()
        request.request_id = ident.decode("ascii")
        request.started = time.time()
        set_header(request.responseHeaders, b"X-Request-Id", ident)
        return self._inner.render(request)
