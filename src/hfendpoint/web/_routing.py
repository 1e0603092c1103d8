"""
The inference routes, dispatched by an exact path lookup in front of the
Klein application.

Klein binds a werkzeug URL map and matches it for every request, wraps
the handler in several Deferreds and looks up request components: about
as much CPU as the whole worker round trip of a small embeddings call.
The handful of POST routes that carry the traffic have fixed paths, so a
dictionary finds them; everything else (other methods, other paths, the
405s and 404s) goes to the Klein resource, except what Klein answers
badly:

 - a path that is not UTF-8 once percent-decoded (C{/v1/models/%ff}), or
   a C{Host} that is not: Klein answers a plain-text 400 and logs a
   traceback for each; here, an OpenAI-shaped 400 and nothing logged;
 - a path with an empty segment (C{/v1//models}): werkzeug redirects it
   with a 308 whose C{Location} Klein's error handling loses. It is a 404
   here, as for any path the API does not have: a redirect would make a
   client send its body twice to reach a URL it should have spelled
   right, and its C{Location} would have to be built from the C{Host} the
   client sent;
 - another method than POST on a route's path: Klein matches
   C{/v1/images/generations} against C{/v1/images/<image_id>} as well, so
   a GET there looked for an image named C{generations} and an OPTIONS
   was told GET and DELETE were allowed. Here, a 405 saying C{Allow:
   POST}, the one method the path has (the gateway serves OPTIONS only as
   a CORS preflight, answered before this resource when origins are
   configured; everywhere else it is a 405 with the path's own C{Allow}).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Optional

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hfendpoint.errors import OpenAIError, invalid_request, not_found
from hfendpoint.web._json import send_error
from hfendpoint.web._site import when_done

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
        path = b"/" + b"/".join(request.postpath)
        handler = self._routes.get(path) if request.method == b"POST" else None
        if handler is None:
            error = self._refusal(request, path)
            if error is not None:
                return send_error(request, error)
            return self._fallback.render(request)
        _Exchange(request, handler, self._on_failure)
        return NOT_DONE_YET

    def _refusal(self, request: Any, path: bytes) -> Optional[OpenAIError]:
        """
        The error to answer instead of letting Klein see C{request}, if any
        (see the module's docstring).
        """
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return invalid_request("The request's path is not valid UTF-8 once percent-decoded.", code="invalid_url")
        try:
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return invalid_request("The request's Host header is not valid UTF-8.", code="invalid_host")
        if b"//" in path:
            method = request.method.decode("ascii", "replace")
            return not_found(f"Invalid URL ({method} {request.path.decode('utf-8', 'replace')})", code="unknown_url")
        if path in self._routes:
            method = request.method.decode("ascii", "replace")
            return OpenAIError(
                405,
                f"Method {method} is not allowed here. Allowed: POST.",
                "invalid_request_error",
                None,
                "method_not_allowed",
                headers={"Allow": "POST"},
            )
        return None


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
        when_done(request, self._ended)
        self._deferred.addCallbacks(self._respond, self._failed)
        self._deferred.addErrback(_log.failure, "Could not write a response")

    def _ended(self, reason: Optional[Failure]) -> None:
        self._over = True
        if reason is not None:
            # The client went away before the answer was finished.
            self._deferred.cancel()

    def _respond(self, body: Optional[bytes]) -> None:
        if self._over:
            # Gone, or answered by the handler itself (a stream).
            return
        if body is not None:
            self._request.write(body)
        self._request.finish()

    def _failed(self, failure: Failure) -> None:
        if self._over:
            if not failure.check(CancelledError):
                _log.failure(
                    "A request failed after its client left (request {request_id})",
                    failure,
                    request_id=getattr(self._request, "request_id", None),
                )
            return
        self._respond(self._on_failure(self._request, failure))
