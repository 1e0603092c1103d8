"""
API keys: every route but the probes and the images' capability URLs asks
for one of the configured keys, as OpenAI's clients send it.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.web.resource import Resource

from hfendpoint.errors import OpenAIError
from hfendpoint.web._json import send_error

#: Routes served without a key: the probes an orchestrator calls.
OPEN_PATHS = frozenset({b"/health", b"/ready"})

#: An image fetched by its URL needs no key: the URL holds an unguessable
#: id and works as a capability, as a signed URL does. Deleting one does.
IMAGE_PREFIX = b"/v1/images/"

NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
    "or in an X-Api-Key header."
)
WRONG_KEY = "Incorrect API key provided."


def missing_key() -> OpenAIError:
    return OpenAIError(401, NO_KEY, "invalid_request_error", None, None, {"WWW-Authenticate": "Bearer"})


def wrong_key() -> OpenAIError:
    return OpenAIError(
        401, WRONG_KEY, "invalid_request_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"}
    )


def presented_key(request: Any) -> Optional[bytes]:
    """
    The key a client sent: C{Authorization: Bearer KEY}, what every OpenAI
    client sends, or C{X-Api-Key}.
    """
    authorization = request.getHeader(b"authorization")
    if authorization is not None:
        scheme, _, key = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and key.strip():
            return key.strip()
    key = request.getHeader(b"x-api-key")
    return key.strip() if key else None


def needs_key(request: Any) -> bool:
    path = request.path
    if path in OPEN_PATHS:
        return False
    if request.method in (b"GET", b"HEAD") and path.startswith(IMAGE_PREFIX):
        return False
    # A browser's preflight carries no credentials; CORS answers it.
    return request.method != b"OPTIONS"


class KeyedResource(Resource):
    """
    Serves C{inner} to requests that carry one of the keys C{keys()}
    returns; with no key configured, to every request.

    Keys are compared in constant time, every one of them, so that the
    time of an answer tells nothing of how close a guess came.
    """

    isLeaf = True

    def __init__(self, inner: Any, keys: Callable[[], Sequence[bytes]]) -> None:
        super().__init__()
        self._inner = inner
        self._keys = keys

    def render(self, request: Any) -> Any:
        keys = self._keys()
        if keys and needs_key(request):
            key = presented_key(request)
            if key is None:
                return send_error(request, missing_key())
            if not matches(key, keys):
                return send_error(request, wrong_key())
        return self._inner.render(request)


def matches(key: bytes, keys: Iterable[bytes]) -> bool:
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(key, candidate)
    return found


class ApiKeys:
    """
    The keys the gateway accepts: those given, and those of a file (one
    per line, blank lines and C{#} comments ignored) read again by
    L{reload}, which the command calls on SIGHUP.
    """

    def __init__(self, keys: Iterable[str] = (), path: Optional[str] = None) -> None:
        self._given = tuple(key.encode("utf-8") for key in keys if key)
        self.path = path
        self._from_file: tuple[bytes, ...] = ()
        self._all = self._given
        if path is not None:
            self.reload()

    def reload(self) -> None:
        """
        Read the key file again; on failure the keys read before stay.

        @raise OSError: if the file cannot be read.
        """
        if self.path is None:
            return
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()
        self._from_file = tuple(
            line.strip() for line in lines if line.strip() and not line.strip().startswith(b"#")
        )
        self._all = self._given + self._from_file

    def __call__(self) -> tuple[bytes, ...]:
        return self._all

    def __bool__(self) -> bool:
        return bool(self._given or self.path is not None)
