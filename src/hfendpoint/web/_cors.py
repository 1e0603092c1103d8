"""
Cross-site safety: a web page a user visits must not drive the gateway
through their browser. A browser sends a "simple" cross-site POST (a
form's content types, no preflight) without asking; the JSON endpoints
refuse such bodies, so a page can only reach them through a preflight,
which only the origins allowed by C{--cors-origin} pass.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.web.resource import Resource

from hfendpoint._twisted_private import header_table
from hfendpoint.errors import OpenAIError
from hfendpoint.web._json import send_error

#: POST routes whose body is a multipart form rather than JSON.
FORM_PATHS = frozenset({b"/v1/images/edits"})

ALLOWED_METHODS = b"GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS = b"Authorization, Content-Type, X-Api-Key, X-Request-Id, OpenAI-Organization, OpenAI-Project"
EXPOSED_HEADERS = b"X-Request-Id, Retry-After"
#: Seconds a browser may keep a preflight's answer.
MAX_AGE = b"86400"


def is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def unsupported_media_type(content_type: bytes) -> OpenAIError:
    shown = content_type.decode("latin-1")[:100]
    return OpenAIError(
        415,
        f"Invalid Content-Type header ({shown}), expected application/json.",
        "invalid_request_error",
        None,
        "unsupported_media_type",
    )


class CrossSiteResource(Resource):
    """
    Refuses non-JSON bodies on the JSON endpoints (a missing
    C{Content-Type} stays accepted, as curl users send it) unless the
    request comes from an allowed origin; answers CORS preflights and adds
    the CORS headers to every answer for the origins allowed.

    @param origins: the allowed origins, C{*} for any; none turns CORS off.
    """

    isLeaf = True

    def __init__(self, inner: Any, origins: Iterable[str] = ()) -> None:
        super().__init__()
        self._inner = inner
        self._origins = frozenset(origin.rstrip("/").encode("ascii") for origin in origins)
        self._any = b"*" in self._origins

    def _allowed(self, origin: Any) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    def render(self, request: Any) -> Any:
        # With no origin allowed (the default), no request is from one.
        allowed = False
        if self._origins:
            origin = request.getHeader(b"origin")
            allowed = self._allowed(origin)
            if allowed:
                request.setHeader(b"access-control-allow-origin", b"*" if self._any else origin)
                request.setHeader(b"access-control-expose-headers", EXPOSED_HEADERS)
            request.setHeader(b"vary", b"Origin")
            if request.method == b"OPTIONS" and allowed and request.getHeader(b"access-control-request-method"):
                return self._preflight(request)
        if request.method == b"POST" and not allowed and request.path not in FORM_PATHS:
            sent = header_table(request.requestHeaders).get(b"Content-Type")
            if sent and sent[-1] != b"application/json" and not is_json(sent[-1]):
                return send_error(request, unsupported_media_type(sent[-1]))
        return self._inner.render(request)

    def _preflight(self, request: Any) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
        requested = request.getHeader(b"access-control-request-headers")
        request.setHeader(b"access-control-allow-headers", requested or ALLOWED_HEADERS)
        request.setHeader(b"access-control-max-age", MAX_AGE)
        request.setHeader(b"content-length", b"0")
        return b""
