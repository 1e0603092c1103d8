"""
Our own OpenAPI 3.1 document: the routes this gateway serves, with the
request bodies as our validators enforce them and the bodies we send
back, so that a client generator or an API fuzzer sees exactly this
server rather than the whole OpenAI API.

It is written by hand as a subset of the official document, with the
limits taken from the validators' own constants where they have them.
Every optional field also accepts C{null}, which the validators treat as
absent, and every request object allows more properties, which are
passed through to the worker. Served as C{GET /openapi.json}.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from hfendpoint import __version__

from hfendpoint.api import _chat as chat

from hfendpoint.api import _completions as completions

from hfendpoint.api import _embeddings as embeddings

from hfendpoint.api import _images as images

Schema = dict[str, Any]

__all__ = ["document"]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _opt(kind: str, **keywords: Any) -> Schema:
    """
    An optional field of JSON type C{kind}: C{null} is taken as absent.
    """
    return {"type": [kind, "null"], **keywords}


def _one_of_or_null(*schemas: Schema) -> Schema:
    return {"anyOf": [*schemas, {"type": "null"}]}


def at_most(limit: int) -> str:
    """
    A regular expression for the decimal numbers 1 to C{limit}, without
    leading zeros.
    """
    digits = str(limit)
    width = len(digits)
    options = [f"[1-9][0-9]{{0,{width - 2}}}"] if width > 1 else []
    for i, char in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(char) > low:
            rest = width - i - 1
            options.append(digits[:i] + f"[{low}-{int(char) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    options.append(digits)
    return "(?:" + "|".join(options) + ")"


def _requires_true(field: str, flag: str) -> Schema:
    """
    A non-null C{field} is only allowed when C{flag} is C{true}.
    """
    return {
        "if": {"required": [field], "properties": {field: {"not": {"type": "null"}}}},
        "then": {"required": [flag], "properties": {flag: {"const": True}}},
    }


_SAMPLING: Schema = {
    "temperature": _opt("number", minimum=0, maximum=2),
    "top_p": _opt("number", minimum=0, maximum=1),
    "presence_penalty": _opt("number", minimum=-2, maximum=2),
    "frequency_penalty": _opt("number", minimum=-2, maximum=2),
    "seed": _opt("integer"),
    "user": _opt("string"),
    "metadata": _opt("object"),
}

_STREAM_OPTIONS = _opt("object", properties={"include_usage": _opt("boolean")})

_ERRORS = {
    400: "The request is invalid; `param` names the field at fault.",
    404: "No such route, model or image.",
    405: "The route does not take this method (the `Allow` header lists those it takes).",
    413: "The request body is larger than the server's limit.",
    429: "Too many requests are being served or waiting; retry after `Retry-After` seconds.",
    500: "The worker failed the request, or the server had an error.",
    501: "The worker does not serve the call this endpoint needs.",
    502: "The worker died or broke the protocol while the request was in flight.",
    503: "The worker cannot take requests now, or the server is shutting down.",
    504: "The worker did not answer in time.",
}

#: The error statuses of every operation, and those that a worker call or
#: a request body adds.
_ALWAYS = (404, 405, 500)
_WORKER = (400, 413, 429, 501, 502, 503, 504)


def _schemas() -> dict[str, Schema]:
    token_id = {"type": "integer", "minimum": 0, "maximum": embeddings.MAX_TOKEN_ID}
    side = at_most(images.MAX_SIDE)
    usage = {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    }
    return {
        # Errors
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
        "ErrorResponse": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _ref("Error")},
        },
        # Service
        "Ready": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ready"}},
        },
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
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        },
        # Shared request parts
        "Stop": _one_of_or_null(
            {"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}
        ),
        "LogitBias": _opt(
            "object",
            propertyNames={"pattern": "^-*[0-9]+$"},
            additionalProperties={"type": "number", "minimum": -100, "maximum": 100},
        ),
        "Usage": usage,
        # Chat
        "ChatMessage": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"enum": list(chat.ROLES)},
                "content": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": _ref("ContentPart")},
                        {"type": "null"},
                    ]
                },
            },
            # Only an assistant message (one with tool calls) may go
            # without content.
            "if": {"properties": {"role": {"const": "assistant"}}},
            "else": {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
        },
        "ContentPart": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
        },
        "Tool": {
            "type": "object",
            # A function tool (the default type) needs a named function.
            "if": {"properties": {"type": {"const": "function"}}},
            "then": {
                "required": ["function"],
                "properties": {
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    }
                },
            },
        },
        "CreateChatCompletionRequest": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "model": _opt("string"),
                "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
                "stream": _opt("boolean"),
                "stream_options": _STREAM_OPTIONS,
                **_SAMPLING,
                "stop": _ref("Stop"),
                "n": _opt("integer", minimum=1, maximum=128),
                "max_tokens": _opt("integer", minimum=1),
                "max_completion_tokens": _opt("integer", minimum=1),
                "logprobs": _opt("boolean"),
                "top_logprobs": _opt("integer", minimum=0, maximum=20),
                "logit_bias": _ref("LogitBias"),
                "response_format": _opt(
                    "object",
                    required=["type"],
                    properties={"type": {"enum": ["text", "json_object", "json_schema"]}},
                    allOf=[
                        {
                            "if": {"properties": {"type": {"const": "json_schema"}}},
                            "then": {
                                "required": ["json_schema"],
                                "properties": {"json_schema": {"type": "object"}},
                            },
                        }
                    ],
                ),
                "tools": _opt("array", items=_ref("Tool")),
                "tool_choice": _one_of_or_null(
                    {"enum": ["none", "auto", "required"]}, {"type": "object"}
                ),
            },
            "allOf": [_requires_true("top_logprobs", "logprobs"), _requires_true("stream_options", "stream")],
        },
        "ChatCompletionMessage": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"const": "assistant"},
                "content": {"type": ["string", "null"]},
                "refusal": {"type": ["string", "null"]},
                "annotations": {"type": "array"},
                "tool_calls": {"type": "array", "items": _ref("ToolCall")},
            },
        },
        "ToolCall": {
            "type": "object",
            "required": ["id", "type", "function"],
            "properties": {
                "index": {"type": "integer"},
                "id": {"type": "string"},
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name", "arguments"],
                    "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
                },
            },
        },
        "ChatLogprobs": _opt(
            "object",
            properties={"content": {"type": ["array", "null"]}, "refusal": {"type": ["array", "null"]}},
        ),
        "CreateChatCompletionResponse": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "message", "logprobs", "finish_reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "message": _ref("ChatCompletionMessage"),
                            "logprobs": _ref("ChatLogprobs"),
                            "finish_reason": {"enum": list(chat.FINISH_REASONS)},
                        },
                    },
                },
                "usage": _ref("Usage"),
                "service_tier": {"type": "string"},
            },
        },
        "CreateChatCompletionStreamResponse": {
            "description": "One server-sent event of a streamed chat completion.",
            "type": "object",
            "required": ["id", "object", "created", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion.chunk"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "delta", "finish_reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "delta": {
                                "type": "object",
                                "properties": {
                                    "role": {"const": "assistant"},
                                    "content": {"type": ["string", "null"]},
                                    "tool_calls": {"type": "array", "items": _ref("ToolCall")},
                                },
                            },
                            "logprobs": _ref("ChatLogprobs"),
                            "finish_reason": {"enum": [*chat.FINISH_REASONS, None]},
                        },
                    },
                },
                "usage": _one_of_or_null(_ref("Usage")),
            },
        },
        # Completions
        "CreateCompletionRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "model": _opt("string"),
                "prompt": {
                    "description": "Token-id prompts are refused with a 400.",
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    ],
                },
                "suffix": _opt("string", description="Accepted and passed to the worker."),
                "stream": _opt("boolean"),
                "stream_options": _STREAM_OPTIONS,
                "echo": _opt("boolean"),
                **_SAMPLING,
                "stop": _ref("Stop"),
                "logit_bias": _ref("LogitBias"),
                "n": _opt("integer", minimum=1, maximum=128),
                "best_of": _opt(
                    "integer",
                    minimum=1,
                    maximum=20,
                    description="Must equal `n`: every completion generated is returned.",
                ),
                "max_tokens": _opt("integer", minimum=0, default=completions.DEFAULT_MAX_TOKENS),
                "logprobs": _opt("integer", minimum=0, maximum=completions.MAX_LOGPROBS),
            },
            "allOf": [
                _requires_true("stream_options", "stream"),
                # best_of == n, with n defaulting to 1.
                {
                    "if": {"required": ["best_of"], "properties": {"best_of": {"const": 1}}},
                    "then": {"properties": {"n": {"enum": [1, None]}}},
                },
                *(
                    {
                        "if": {"required": ["best_of"], "properties": {"best_of": {"const": k}}},
                        "then": {"required": ["n"], "properties": {"n": {"const": k}}},
                    }
                    for k in range(2, 21)
                ),
            ],
        },
        "CompletionLogprobs": _opt(
            "object",
            properties={
                "tokens": {"type": "array", "items": {"type": "string"}},
                "token_logprobs": {"type": "array", "items": {"type": "number"}},
                "top_logprobs": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": {"type": "number"}},
                },
                "text_offset": {"type": "array", "items": {"type": "integer"}},
            },
        ),
        "CreateCompletionResponse": {
            "description": (
                "A completion; streamed, each server-sent event is one of these, "
                "with a null `finish_reason` until the choice ends."
            ),
            "type": "object",
            "required": ["id", "object", "created", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "text_completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["text", "index", "logprobs", "finish_reason"],
                        "properties": {
                            "text": {"type": "string"},
                            "index": {"type": "integer"},
                            "logprobs": _ref("CompletionLogprobs"),
                            "finish_reason": {"enum": [*completions.FINISH_REASONS, None]},
                        },
                    },
                },
                "usage": _one_of_or_null(_ref("Usage")),
            },
        },
        # Responses
        "InputContentPart": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
            "if": {"properties": {"type": {"enum": ["input_text", "output_text", "text"]}}},
            "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
        },
        "InputMessage": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "type": {"const": "message"},
                "role": {"enum": ["user", "assistant", "system", "developer"]},
                "content": {
                    "anyOf": [{"type": "string"}, {"type": "array", "items": _ref("InputContentPart")}]
                },
            },
        },
        "CreateResponse": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "model": _opt("string"),
                "input": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "minItems": 1, "items": _ref("InputMessage")},
                    ]
                },
                "instructions": _opt("string"),
                "stream": _opt("boolean"),
                **_SAMPLING,
                "max_output_tokens": _opt("integer", minimum=16),
                "previous_response_id": {
                    "type": "null",
                    "description": "Not supported: this server does not store responses.",
                },
            },
        },
        "Response": {
            "type": "object",
            "required": ["id", "object", "created_at", "status", "model", "output"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "response"},
                "created_at": {"type": "integer"},
                "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                "error": {"type": ["object", "null"]},
                "incomplete_details": {"type": ["object", "null"]},
                "model": {"type": "string"},
                "output": {"type": "array", "items": {"type": "object"}},
                "output_text": {"type": "string"},
                "usage": {
                    "type": "object",
                    "required": ["input_tokens", "output_tokens", "total_tokens"],
                    "properties": {
                        "input_tokens": {"type": "integer", "minimum": 0},
                        "output_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
        "ResponseStreamEvent": {
            "description": "One server-sent event of a streamed response.",
            "type": "object",
            "required": ["type", "sequence_number"],
            "properties": {
                "type": {"type": "string"},
                "sequence_number": {"type": "integer", "minimum": 0},
                "response": _ref("Response"),
            },
        },
        # Embeddings
        "CreateEmbeddingRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "model": _opt("string"),
                "input": {
                    "anyOf": [
                        {"type": "string", "minLength": 1},
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": embeddings.MAX_INPUTS,
                            "items": {"type": "string", "minLength": 1},
                        },
                        {"type": "array", "minItems": 1, "items": token_id},
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": embeddings.MAX_INPUTS,
                            "items": {"type": "array", "minItems": 1, "items": token_id},
                        },
                    ]
                },
                "encoding_format": {"enum": ["float", "base64", None]},
                "dimensions": _opt("integer", minimum=1),
                "user": _opt("string"),
            },
        },
        "CreateEmbeddingResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"const": "embedding"},
                            "index": {"type": "integer"},
                            "embedding": {
                                "description": "Floats, or base64 of little-endian float32.",
                                "anyOf": [
                                    {"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "contentEncoding": "base64"},
                                ],
                            },
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": {
                    "type": "object",
                    "required": ["prompt_tokens", "total_tokens"],
                    "properties": {
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
        # Images
        "ImageSize": {
            "type": "string",
            "pattern": f"^(?:auto|{side}x{side})$",
            "default": images.DEFAULT_SIZE,
        },
        "CreateImageRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string", "minLength": 1},
                "n": _opt("integer", minimum=1, maximum=images.MAX_N),
                "size": _one_of_or_null(_ref("ImageSize")),
                "response_format": {"enum": [*images.FORMATS, None]},
                "model": _opt("string"),
                "user": _opt("string"),
            },
        },
        "CreateImageEditRequest": {
            "type": "object",
            "description": "The image may also be sent as `image[]`, as the official client does.",
            "required": ["prompt", "image"],
            "properties": {
                "prompt": {"type": "string", "minLength": 1},
                "image": {"type": "string", "contentMediaType": "image/png"},
                "mask": {"type": "string", "contentMediaType": "image/png"},
                "n": {"type": "integer", "minimum": 1, "maximum": images.MAX_N},
                "size": _ref("ImageSize"),
                "response_format": {"enum": list(images.FORMATS)},
                "model": {"type": "string"},
                "user": {"type": "string"},
            },
        },
        "ImagesResponse": {
            "type": "object",
            "required": ["created", "data"],
            "properties": {
                "created": {"type": "integer"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"b64_json": {"type": "string"}, "url": {"type": "string"}},
                        "oneOf": [{"required": ["b64_json"]}, {"required": ["url"]}],
                    },
                },
            },
        },
    }


def _json(schema: str) -> Schema:
    return {"application/json": {"schema": _ref(schema)}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in sorted({*_ALWAYS, *statuses})}


def _operation(operation_id: str, summary: str, ok: dict[str, Any], *errors: int, **more: Any) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {**ok, **_errors(*errors)},
        **more,
    }


def _post(operation_id: str, summary: str, request: str, ok: dict[str, Any], content_type: str = "application/json") -> Schema:
    return _operation(
        operation_id,
        summary,
        ok,
        *_WORKER,
        requestBody={"required": True, "content": {content_type: {"schema": _ref(request)}}},
    )


def _ok(schema: str, stream: str = "") -> dict[str, Any]:
    content = _json(schema)
    description = "OK"
    if stream:
        content["text/event-stream"] = {"schema": _ref(stream)}
        description = (
            "OK. With `stream: true`, server-sent events, each `data:` line holding "
            "one JSON value of the `text/event-stream` schema; the stream ends with "
            "`data: [DONE]`, or with an ErrorResponse event if it fails midway."
        )
    return {"200": {"description": description, "content": content}}


_EMPTY = {"200": {"description": "Alive (an empty body)."}}


def _paths() -> dict[str, Any]:
    image_id = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/": {"get": _operation("root", "Liveness", _EMPTY)},
        "/health": {"get": _operation("health", "Liveness", _EMPTY)},
        "/ready": {
            "get": _operation("ready", "Readiness: whether the worker can take requests", _ok("Ready"), 503)
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
        "/v1/chat/completions": {
            "post": _post(
                "createChatCompletion",
                "Chat completion, whole or streamed",
                "CreateChatCompletionRequest",
                _ok("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
            )
        },
        "/v1/completions": {
            "post": _post(
                "createCompletion",
                "Legacy text completion, whole or streamed",
                "CreateCompletionRequest",
                _ok("CreateCompletionResponse", "CreateCompletionResponse"),
            )
        },
        "/v1/responses": {
            "post": _post(
                "createResponse",
                "Responses API, whole or streamed",
                "CreateResponse",
                _ok("Response", "ResponseStreamEvent"),
            )
        },
        "/v1/embeddings": {
            "post": _post(
                "createEmbedding", "Embeddings", "CreateEmbeddingRequest", _ok("CreateEmbeddingResponse")
            )
        },
        "/v1/images/generations": {
            "post": _post("createImage", "Generate images", "CreateImageRequest", _ok("ImagesResponse"))
        },
        "/v1/images/edits": {
            "post": _post(
                "createImageEdit",
                "Edit an image",
                "CreateImageEditRequest",
                _ok("ImagesResponse"),
                content_type="multipart/form-data",
            )
        },
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
        "components": {"schemas": _schemas(), "responses": _responses()},
    }


def document() -> dict[str, Any]:
    """
    The OpenAPI document, built once; callers must not change it.
    """
    return _document()
