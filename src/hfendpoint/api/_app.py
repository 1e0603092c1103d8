"""
The HTTP API: a Klein route for each endpoint the API families declare,
all served by one method, the service's own routes, and every error
rendered in one place as an OpenAI error object.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from hfendpoint.api import _openapi as openapi
from hfendpoint.api._endpoint import Context, Endpoint, respond
from hfendpoint.api._families import ENDPOINTS
from hfendpoint.backend._batching import EmbeddingBatcher
from hfendpoint.errors import OpenAIError, not_found
from hfendpoint.interfaces import IImageStore, IWorkerClient
from hfendpoint.web import ExactRoutes, send_error, send_json, set_length
from hfendpoint.backend._client import REQUEST_ID

DEFAULT_MODEL_NAME = "hfendpoint"


def _endpoint_route(endpoint: Endpoint) -> Callable[[Any, Any], Any]:
    """
    The Klein route handler of C{endpoint}.
    """

    async def route(self: GatewayApp, request: Any) -> Optional[bytes]:
        return await self.serve(endpoint, request)

    route.__name__ = endpoint.operation_id
    return route


class GatewayApp:
    """
    The OpenAI-compatible routes over one worker client.

    @ivar model_name: the name every response carries, when set by the
        operator; otherwise the worker's own, or L{DEFAULT_MODEL_NAME}.
    @ivar is_ready: tells whether the worker can take requests (readiness).
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        client: IWorkerClient,
        store: IImageStore,
        model_name: Optional[str] = None,
        is_ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        batcher: Optional[EmbeddingBatcher] = None,
        not_ready_reason: Callable[[], str] = lambda: "The worker is not ready.",
    ) -> None:
        # The interfaces' adaptation: an object that does not declare it
        # provides them is refused here, when the gateway is put together.
        self.client = IWorkerClient(client)
        self.store = IImageStore(store)
        self._model_name = model_name
        self.is_ready = is_ready
        self.not_ready_reason = not_ready_reason
        self._clock = clock
        self.batcher = batcher or EmbeddingBatcher(client)

    def resource(self) -> Any:
        """
        The Klein resource behind the exact-path lookup of the same
        endpoints, which serves them without Klein's URL matching.
        """
        routes = {endpoint.path.encode("ascii"): partial(self.serve, endpoint) for endpoint in ENDPOINTS}
        return ExactRoutes(self.app.resource(), routes, self._render_failure)

    async def serve(self, endpoint: Endpoint, request: Any) -> Optional[bytes]:
        """
        Serve one request to C{endpoint}: read and check its body, let the
        family's translator answer, and write the answer.
        """
        # The calls this request makes carry its id to the worker.
        REQUEST_ID.set(getattr(request, "request_id", None))
        body = endpoint.read(request)
        checked = endpoint.body.validate(body)
        context = Context(self.client, self.batcher, self.store, self.model_name, self._now(), request)
        answer = respond(request, await endpoint.serve(context, body, checked))
        if answer is None or type(answer) is bytes:
            return answer
        # A stream: its events are written as they come.
        await answer
        return None

    def _render_failure(self, request: Any, failure: Any) -> Optional[bytes]:
        """
        What the Klein error handlers below answer, for the exact routes.
        """
        if failure.check(OpenAIError):
            return self._openai_error(request, failure)
        return self._unexpected(request, failure)

    @property
    def model_name(self) -> str:
        return self._model_name or self.client.info.model or DEFAULT_MODEL_NAME

    def _now(self) -> int:
        return int(self._clock())

    # Errors

    @app.handle_errors(OpenAIError)
    def _openai_error(self, request: Any, failure: Any) -> bytes:
        return send_error(request, failure.value)

    @app.handle_errors(NotFound)
    def _not_found(self, request: Any, failure: Any) -> bytes:
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii", "replace")
        return send_error(request, not_found(f"Invalid URL ({method} {path})", code="unknown_url"))

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request: Any, failure: Any) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or [])
        error = OpenAIError(
            405,
            f"Method {request.method.decode('ascii', 'replace')} is not allowed here. Allowed: {allowed}.",
            "invalid_request_error",
            None,
            "method_not_allowed",
            headers={"Allow": allowed} if allowed else None,
        )
        return send_error(request, error)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        return send_error(
            request, OpenAIError(e.code or 400, e.description or e.name, "invalid_request_error")
        )

    @app.handle_errors(Exception)
    def _unexpected(self, request: Any, failure: Any) -> Any:
        if failure.check(CancelledError):
            return None
        self._log.failure(
            "Unexpected error serving {uri} (request {request_id})",
            failure,
            uri=request.uri,
            request_id=getattr(request, "request_id", None),
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
        )
        return send_error(
            request, OpenAIError(500, "The server had an error while processing your request.", "api_error")
        )

    # Liveness

    @app.route("/", methods=["GET"])
    def root(self, request: Any) -> bytes:
        return b""

    @app.route("/health", methods=["GET"])
    def health(self, request: Any) -> bytes:
        return b""

    @app.route("/openapi.json", methods=["GET"])
    def openapi_document(self, request: Any) -> bytes:
        return send_json(request, openapi.document())

    @app.route("/ready", methods=["GET"])
    def ready(self, request: Any) -> bytes:
        if self.is_ready():
            return send_json(request, {"status": "ready"})
        return send_error(
            request, OpenAIError(503, self.not_ready_reason(), "api_error", None, "worker_unavailable")
        )

    # Models

    def _model(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "hfendpoint"}

    @app.route("/v1/models", methods=["GET"])
    def models(self, request: Any) -> bytes:
        return send_json(request, {"object": "list", "data": [self._model()]})

    @app.route("/v1/models/<path:model>", methods=["GET"])
    def model(self, request: Any, model: str) -> bytes:
        if model != self.model_name:
            raise not_found(f"The model '{model}' does not exist", code="model_not_found")
        return send_json(request, self._model())

    # The API families' endpoints

    for _endpoint in ENDPOINTS:
        app.route(_endpoint.path, methods=["POST"], endpoint=_endpoint.operation_id)(
            _endpoint_route(_endpoint)
        )
    del _endpoint

    # Stored images

    @app.route("/v1/images/<image_id>", methods=["GET"])
    def get_image(self, request: Any, image_id: str) -> bytes:
        png = self.store.get(image_id)
        if png is None:
            raise not_found(f"No image with id '{image_id}'.", code="image_not_found")
        request.setHeader(b"content-type", b"image/png")
        request.setHeader(b"cache-control", b"private, max-age=3600")
        set_length(request, len(png))
        return png

    @app.route("/v1/images/<image_id>", methods=["DELETE"])
    def delete_image(self, request: Any, image_id: str) -> bytes:
        if not self.store.delete(image_id):
            raise not_found(f"No image with id '{image_id}'.", code="image_not_found")
        request.setResponseCode(204)
        return b""
