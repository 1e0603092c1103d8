"""
The HTTP API: one Klein route per endpoint, each handing its request to
the translator of its API family, with every error rendered in one place
as an OpenAI error object.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from zope.interface.verify import verifyObject

from hfendpoint.api import _chat as chat

from hfendpoint.api import _completions as completions

from hfendpoint.api import _embeddings as embeddings

from hfendpoint.api import _images as images

from hfendpoint.api import _openapi as openapi

from hfendpoint.api import _responses as responses
from hfendpoint.backend._batching import EmbeddingBatcher
from hfendpoint.errors import OpenAIError, not_found
from hfendpoint.interfaces import IImageStore, IWorkerClient
from hfendpoint.web._routing import ExactRoutes
from hfendpoint.web._json import parse_json_body, send_error, send_json, set_length, write_parts
from hfendpoint.web._multipart import parse_form
from hfendpoint.web._sse import EventStream

DEFAULT_MODEL_NAME = "hfendpoint"


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
        verifyObject(IWorkerClient, client)
        verifyObject(IImageStore, store)
        self.client = client
        self.store = store
        self._model_name = model_name
        self.is_ready = is_ready
        self.not_ready_reason = not_ready_reason
        self._clock = clock
        self.batcher = batcher or EmbeddingBatcher(client)

    def resource(self) -> Any:
        routes = {
            b"/v1/chat/completions": self.chat_completions,
            b"/v1/completions": self.create_completion,
            b"/v1/responses": self.create_response,
            b"/v1/embeddings": self.create_embeddings,
            b"/v1/images/generations": self.images_generations,
            b"/v1/images/edits": self.images_edits,
        }
        return ExactRoutes(self.app.resource(), routes, self._render_failure)

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

    def _require(self, call: str) -> None:
        """
        Fail at once for a call the worker said it does not serve.
        """
        if not self.client.info.serves(call):
            raise OpenAIError(
                501,
                f"This endpoint is not available: the worker does not serve '{call}'.",
                "invalid_request_error",
                None,
                "unsupported_endpoint",
            )

    async def _stream(self, request: Any, run: Callable[[EventStream], Any]) -> None:
        """
        Run a streaming translator on the response's event stream.
        """
        events = EventStream(request)
        try:
            await run(events)
        finally:
            events.close()

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
        self._log.failure("Unexpected error serving {uri}", failure, uri=request.uri)
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

    # Chat and responses

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat_completions(self, request: Any) -> Any:
        data = chat.validate_chat_request(parse_json_body(request))
        self._require(chat.CALL)
        completion = chat.ChatCompletion(self.client, data, self.model_name, self._now())
        if data["stream"]:
            await self._stream(request, completion.stream)
            return None
        return send_json(request, await completion.complete())

    @app.route("/v1/completions", methods=["POST"])
    async def create_completion(self, request: Any) -> Any:
        wanted = completions.validate_request(parse_json_body(request))
        self._require(chat.CALL)
        completion = completions.Completion(self.client, wanted, self.model_name, self._now())
        if wanted["stream"]:
            await self._stream(request, completion.stream)
            return None
        return send_json(request, await completion.complete())

    @app.route("/v1/responses", methods=["POST"])
    async def create_response(self, request: Any) -> Any:
        body = parse_json_body(request)
        data = responses.validate_request(body)
        self._require(chat.CALL)
        responder = responses.Responder(self.client, body, data, self.model_name, self._now())
        if data["stream"]:
            await self._stream(request, responder.stream)
            return None
        return send_json(request, await responder.complete())

    # Embeddings

    @app.route("/v1/embeddings", methods=["POST"])
    async def create_embeddings(self, request: Any) -> Any:
        wanted = embeddings.validate_request(parse_json_body(request))
        if wanted["tokens"] is None:
            self._require("tokenize")
        self._require("embeddings")
        body = await embeddings.create_embeddings(self.client, self.batcher, wanted, self.model_name)
        request.setHeader(b"content-type", b"application/json")
        set_length(request, len(body))
        return body

    # Images

    def _url_for(self, request: Any) -> Callable[[str], str]:
        scheme = request.getHeader(b"x-forwarded-proto")
        host = request.getHeader(b"x-forwarded-host") or request.getHeader(b"host")
        if not scheme:
            scheme = b"https" if request.isSecure() else b"http"
        if not host:
            address = request.getHost()
            host = f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', '')}".encode()
        base = scheme.decode("ascii", "replace") + "://" + host.decode("ascii", "replace")
        return lambda image_id: f"{base}/v1/images/{image_id}"

    @app.route("/v1/images/generations", methods=["POST"])
    async def images_generations(self, request: Any) -> Any:
        wanted = images.validate_generation(parse_json_body(request))
        self._require("images_generations")
        body = await images.generate(
            self.client, "images_generations", wanted, self.store, self._url_for(request), self._now()
        )
        request.setHeader(b"content-type", b"application/json")
        return write_parts(request, body)

    @app.route("/v1/images/edits", methods=["POST"])
    async def images_edits(self, request: Any) -> Any:
        wanted = images.validate_edit(parse_form(request))
        self._require("images_editions")
        body = await images.generate(
            self.client, "images_editions", wanted, self.store, self._url_for(request), self._now()
        )
        request.setHeader(b"content-type", b"application/json")
        return write_parts(request, body)

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
