"""
Request ids: each request is known by one id, the client's own
C{X-Request-Id} when it sends a usable one, so that its answer, the
access log, the gateway's log and the worker's log can be joined.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from twisted.web.resource import Resource

#: Longest client id kept; a longer one is replaced.
MAX_LENGTH = 128
_USABLE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,%d}\Z" % MAX_LENGTH)


def new_id() -> str:
    return os.urandom(16).hex()


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

    def render(self, request: Any) -> Any:
        given = request.getHeader(b"x-request-id")
        if given is not None and _USABLE.match(given):
            ident = given.decode("ascii")
        else:
            ident = new_id()
        request.request_id = ident
        request.started = time.time()
        request.setHeader(b"x-request-id", ident.encode("ascii"))
        return self._inner.render(request)
