"""
The inference routes, dispatched by an exact path lookup in front of the
Klein application.

Klein binds a werkzeug URL map and matches it for every request, wraps
the handler in several Deferreds and looks up request components: about
as much CPU as the whole worker round trip of a small embeddings call.
The handful of POST routes that carry the traffic have fixed paths, so a
dictionary finds them; everything else (other methods, other paths, the
405s and 404s) goes to the Klein resource unchanged.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Optional

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

#: One logger for the module: a Logger that is a class attribute makes a
#: new Logger on every access through an instance, one per request here.
_log = Logger()

Handler = Callable[[Any], Awaitable[Optional[bytes]]]
OnFailure = Callable[[Any, Failure], Optional[bytes]]


class ExactRoutes(Resource):
    """
    Serve C{routes} (path -> async handler returning the body, or C{None}
    when it wrote the response itself) for POST requests, and hand every
    other request to C{fallback}.

    A handler's failure is rendered by C{on_failure}, as the Klein
    application's error handlers would; a client that goes away cancels
    the handler, as Klein does.
    """

    isLeaf = True

    def __init__(self, fallback: Any, routes: Mapping[bytes, Handler], on_failure: OnFailure) -> None:
        super().__init__()
        self._fallback = fallback
        self._routes = dict(routes)
        self._on_failure = on_failure

    def render(self, request: Any) -> Any:
        handler = None
        if request.method == b"POST":
            handler = self._routes.get(b"/" + b"/".join(request.postpath))
        if handler is None:
            return self._fallback.render(request)
        _Exchange(request, handler, self._on_failure)
        return NOT_DONE_YET


class _Exchange:
    """
    One request served by a route handler, from its call to C{finish}.
    """

    __slots__ = ("_request", "_on_failure", "_over", "_deferred")

    def __init__(self, request: Any, handler: Handler, on_failure: OnFailure) -> None:
        self._request = request
        self._on_failure = on_failure
        self._over = False
        self._deferred: Deferred = ensureDeferred(handler(request))
        request.notifyFinish().addBoth(self._ended)
        self._deferred.addCallbacks(self._respond, self._failed)
        self._deferred.addErrback(_log.failure, "Could not write a response")

    def _ended(self, result: Any) -> None:
        self._over = True
        if isinstance(result, Failure):
            self._deferred.cancel()

    def _respond(self, body: Optional[bytes]) -> None:
        if self._over:
            return
        if body is not None:
            self._request.write(body)
        self._request.finish()

    def _failed(self, failure: Failure) -> None:
        if self._over:
            if not failure.check(CancelledError):
                _log.failure("A request failed after its client left", failure)
            return
        self._respond(self._on_failure(self._request, failure))
