"""
Our own OpenAPI 3.1 document: the routes this gateway serves, with the
request bodies exactly as they are checked and the bodies we send back,
so that a client generator or an API fuzzer sees exactly this server
rather than the whole OpenAI API.

Each inference operation and its request schema come from the API
families' declarations (L{hfendpoint.api._families}), the very ones that
route and check the requests; the service's own routes (liveness, the
model, stored images) and the error responses are described here. Served
as C{GET /openapi.json}.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from hfendpoint import __version__
from hfendpoint.api._contract import Components, Schema, ref
from hfendpoint.api._endpoint import Endpoint
from hfendpoint.api._families import ENDPOINTS, FAMILIES

__all__ = ["document"]

_ERRORS = {
    400: "The request is invalid; `param` names the field at fault.",
    401: "No API key, or a wrong one (`invalid_api_key`), where the gateway has keys.",
    404: "No such route, model or image.",
    405: "The route does not take this method (the `Allow` header lists those it takes).",
    413: "The request body is larger than the server's limit.",
    415: "A JSON endpoint was sent a body that is not JSON, from a web origin CORS does not allow.",
    429: "Too many requests are being served or waiting; retry after `Retry-After` seconds.",
    500: "The worker failed the request, or the server had an error.",
    501: "The worker does not serve the call this endpoint needs.",
    502: "The worker died or broke the protocol while the request was in flight.",
    503: "The worker cannot take requests now, or the server is shutting down.",
    504: "The worker did not answer in time.",
}

#: The error statuses of every operation, and those that a worker call or
#: a request body adds.
_ALWAYS = (401, 404, 405, 500)
_WORKER = (400, 413, 415, 429, 501, 502, 503, 504)

#: How a client presents its API key, when the gateway has keys: as every
#: OpenAI client does, or in a header of its own.
_SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer KEY`, what OpenAI's clients send (`--api-key`).",
    },
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
}
#: Either scheme; none at all when the gateway runs without keys.
_SECURITY = [{"bearerAuth": []}, {"apiKeyHeader": []}, {}]
#: Operations that never ask for a key: the probes, and a stored image,
#: whose unguessable URL is its capability.
_OPEN: dict[str, Any] = {"security": []}


def _service_schemas() -> Components:
    return {
        "Error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
        "ErrorResponse": {"type": "object", "required": ["error"], "properties": {"error": ref("Error")}},
        "Ready": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ready"}}},
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ListModelsResponse": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
        },
    }


def _schemas() -> Components:
    components = _service_schemas()
    for family in FAMILIES:
        components.update(family.SCHEMAS)
    for endpoint in ENDPOINTS:
        components[endpoint.body.name] = endpoint.body.schema(components)
    return dict(sorted(components.items()))


def _json(schema: str) -> Schema:
    return {"application/json": {"schema": ref(schema)}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in sorted({*_ALWAYS, *statuses})}


def _operation(operation_id: str, summary: str, ok: dict[str, Any], *errors: int, **more: Any) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {**ok, **_errors(*errors)},
        **more,
    }


def _post(endpoint: Endpoint) -> Schema:
    return _operation(
        endpoint.operation_id,
        endpoint.summary,
        _ok(endpoint.response, endpoint.events or ""),
        *_WORKER,
        requestBody={"required": True, "content": {endpoint.content_type: {"schema": ref(endpoint.body.name)}}},
    )


def _ok(schema: str, stream: str = "") -> dict[str, Any]:
    content = _json(schema)
    description = "OK"
    if stream:
        content["text/event-stream"] = {"schema": ref(stream)}
        description = (
            "OK. With `stream: true`, server-sent events, each `data:` line holding "
            "one JSON value of the `text/event-stream` schema; the stream ends with "
            "`data: [DONE]`, or with an ErrorResponse event if it fails midway."
        )
    return {"200": {"description": description, "content": content}}


_EMPTY = {"200": {"description": "Alive (an empty body)."}}


def _paths() -> dict[str, Any]:
    image_id = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "string"}}
    inference = {endpoint.path: {"post": _post(endpoint)} for endpoint in ENDPOINTS}
    return {
        "/": {"get": _operation("root", "Liveness", _EMPTY)},
        "/health": {"get": _operation("health", "Liveness", _EMPTY, **_OPEN)},
        "/ready": {
            "get": _operation("ready", "Readiness: whether the worker can take requests", _ok("Ready"), 503, **_OPEN)
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics, in its text format",
                {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
            )
        },
        "/v1/models": {"get": _operation("listModels", "The served model", _ok("ListModelsResponse"))},
        "/v1/models/{model}": {
            "get": _operation(
                "retrieveModel",
                "The served model, by name",
                _ok("Model"),
                parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        **inference,
        "/v1/images/{image_id}": {
            "parameters": [image_id],
            "get": _operation(
                "getImage",
                "An image generated with `response_format: url`",
                {
                    "200": {
                        "description": "The PNG.",
                        "content": {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}},
                    }
                },
                **_OPEN,
            ),
            "delete": _operation(
                "deleteImage", "Forget a stored image", {"204": {"description": "Deleted."}}
            ),
        },
    }


def _responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, description in _ERRORS.items():
        response: dict[str, Any] = {"description": description, "content": _json("ErrorResponse")}
        if status in (429, 503):
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying, when the server knows.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        if status == 405:
            response["headers"] = {
                "Allow": {"description": "The methods the route takes.", "schema": {"type": "string"}}
            }
        out[f"Error{status}"] = response
    return out


@lru_cache(maxsize=None)
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hfendpoint",
            "version": __version__,
            "description": "An OpenAI-compatible gateway in front of a model worker process.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": _paths(),
        "security": _SECURITY,
        "components": {"schemas": _schemas(), "responses": _responses(), "securitySchemes": _SECURITY_SCHEMES},
    }


def document() -> dict[str, Any]:
    """
    The OpenAPI document, built once; callers must not change it.
    """
    return _document()
