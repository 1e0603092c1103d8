"""
Tests for L{tests.openapi}: the validator must be able to both pass and
fail, and the spec lookups must name the schemas we validate against.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.openapi import (
    SPEC_PATH,
    _to_json_schema,
    load_spec,
    request_schema,
    response_schema,
    validate,
    validator_for,
)


def error_response() -> dict[str, Any]:
    return {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "some-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chat_chunk(**overrides: Any) -> dict[str, Any]:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "some-model",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hi"},
                "finish_reason": None,
                "logprobs": None,
            }
        ],
    }
    chunk.update(overrides)
    return chunk


def embedding_response() -> dict[str, Any]:
    return {
        "object": "list",
        "model": "some-embedder",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.25, -1, 3.5e-3]},
            {"object": "embedding", "index": 1, "embedding": [0.0, 0.5, 1.0]},
        ],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


def minimal_response() -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": "some-model",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Hi!",
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": None,
        "top_p": None,
        "metadata": {},
    }


class ValidateTests(SynchronousTestCase):
    """
    L{validate} accepts valid bodies and rejects invalid ones with a
    readable L{AssertionError}.
    """

    def assertInvalid(self, schema_name: str, instance: Any, *fragments: str) -> str:
        """
        Assert C{instance} is not a valid C{schema_name} and that the
        failure message contains every one of C{fragments}.
        """
        message = str(self.assertRaises(AssertionError, validate, schema_name, instance))
        self.assertIn(schema_name, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_errorResponseValid(self) -> None:
        validate("ErrorResponse", error_response())

    def test_errorResponseNullParamAndCode(self) -> None:
        """
        C{param} and C{code} are required but may be C{null}.
        """
        body = error_response()
        body["error"].update(param=None, code=None)
        validate("ErrorResponse", body)

    def test_errorResponseMissingParam(self) -> None:
        body = error_response()
        del body["error"]["param"]
        self.assertInvalid(
            "ErrorResponse", body, "'param' is a required property", "$.error"
        )

    def test_chatCompletionValid(self) -> None:
        validate("CreateChatCompletionResponse", chat_completion())

    def test_chatCompletionBogusFinishReason(self) -> None:
        body = chat_completion()
        body["choices"][0]["finish_reason"] = "bogus"
        self.assertInvalid(
            "CreateChatCompletionResponse",
            body,
            "'bogus' is not one of",
            "$.choices[0].finish_reason",
            "finish_reason/enum",
        )

    def test_chatCompletionWrongObject(self) -> None:
        body = chat_completion()
        body["object"] = "chat.completion.chunk"
        self.assertInvalid("CreateChatCompletionResponse", body, "$.object")

    def test_embeddingResponseValid(self) -> None:
        validate("CreateEmbeddingResponse", embedding_response())

    def test_embeddingResponseMissingUsage(self) -> None:
        body = embedding_response()
        del body["usage"]
        self.assertInvalid("CreateEmbeddingResponse", body, "'usage'")

    def test_streamChunkNullable(self) -> None:
        """
        C{nullable: true} in the document is honoured: a chunk's
        C{finish_reason} (an C{enum}), C{logprobs} and C{usage} may be
        C{null}, but a wrong C{finish_reason} still fails.
        """
        validate("CreateChatCompletionStreamResponse", chat_chunk(usage=None))
        bad = chat_chunk()
        bad["choices"][0]["finish_reason"] = "bogus"
        self.assertInvalid(
            "CreateChatCompletionStreamResponse",
            bad,
            "'bogus' is not one of",
            "$.choices[0].finish_reason",
        )

    def test_streamUsageChunk(self) -> None:
        """
        The final C{include_usage} chunk has empty C{choices} and a full
        usage object; a partial usage object is reported precisely.
        """
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        validate("CreateChatCompletionStreamResponse", chat_chunk(choices=[], usage=usage))
        self.assertInvalid(
            "CreateChatCompletionStreamResponse",
            chat_chunk(choices=[], usage={"prompt_tokens": 3}),
            "'completion_tokens' is a required property",
            "$.usage",
        )

    def test_responseValid(self) -> None:
        validate("Response", minimal_response())

    def test_responseMissingTopP(self) -> None:
        body = minimal_response()
        del body["top_p"]
        self.assertInvalid("Response", body, "'top_p' is a required property")

    def test_discriminatedUnionMessage(self) -> None:
        """
        For a union such as C{ResponseStreamEvent} the message is about the
        member the C{type} selects, not about some other member.
        """
        delta = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi",
            "sequence_number": 3,
            "logprobs": [],
        }
        validate("ResponseStreamEvent", delta)
        del delta["logprobs"]
        self.assertInvalid(
            "ResponseStreamEvent", delta, "'logprobs' is a required property"
        )
        body = minimal_response()
        del body["output"][0]["content"][0]["logprobs"]
        self.assertInvalid(
            "Response",
            body,
            "'logprobs' is a required property",
            "$.output[0].content[0]",
        )

    def test_nullableUnionMessage(self) -> None:
        """
        Inside a C{nullable} union the message is about the branch of the
        right type: five C{stop} strings are too many, not "not valid under
        any of the given schemas".
        """
        request = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stop": ["a", "b", "c", "d", "e"],
        }
        self.assertInvalid("CreateChatCompletionRequest", request, "is too long", "$.stop")

    def test_unknownSchema(self) -> None:
        self.assertRaises(KeyError, validate, "NoSuchSchema", {})

    def test_cached(self) -> None:
        self.assertIs(load_spec(), load_spec())
        self.assertIs(validator_for("ErrorResponse"), validator_for("ErrorResponse"))
        self.assertTrue(SPEC_PATH.is_file())


class ToJSONSchemaTests(SynchronousTestCase):
    """
    L{_to_json_schema} turns OpenAPI C{nullable} into JSON Schema.
    """

    def test_nullableWrapped(self) -> None:
        schema = {"type": "string", "enum": ["a"], "nullable": True}
        self.assertEqual(
            _to_json_schema(schema),
            {"anyOf": [{"type": "string", "enum": ["a"]}, {"type": "null"}]},
        )
        self.assertEqual(schema["nullable"], True, "input must not be mutated")

    def test_nullableFalseDropped(self) -> None:
        self.assertEqual(
            _to_json_schema({"type": "string", "nullable": False}), {"type": "string"}
        )

    def test_nested(self) -> None:
        schema = {
            "type": "object",
            "properties": {
                "nullable": {"type": "boolean"},
                "x": {"type": "array", "items": {"type": "integer", "nullable": True}},
            },
            "example": {"nullable": True},
        }
        converted = _to_json_schema(schema)
        self.assertEqual(converted["properties"]["nullable"], {"type": "boolean"})
        self.assertEqual(
            converted["properties"]["x"]["items"],
            {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        )
        self.assertEqual(converted["example"], {"nullable": True})

    def test_specUntouched(self) -> None:
        """
        Building validators does not rewrite the cached document.
        """
        before = copy.deepcopy(load_spec()["components"]["schemas"]["StopConfiguration"])
        validate("CreateChatCompletionRequest", {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stop": None,
            "n": None,
        })
        self.assertEqual(load_spec()["components"]["schemas"]["StopConfiguration"], before)


class SchemaLookupTests(SynchronousTestCase):
    """
    L{response_schema} and L{request_schema} read schema names off the spec.
    """

    def test_responses(self) -> None:
        expected = [
            ("/chat/completions", "post", "application/json", "CreateChatCompletionResponse"),
            ("/chat/completions", "post", "text/event-stream", "CreateChatCompletionStreamResponse"),
            ("/embeddings", "post", "application/json", "CreateEmbeddingResponse"),
            ("/images/generations", "post", "application/json", "ImagesResponse"),
            ("/images/generations", "post", "text/event-stream", "ImageGenStreamEvent"),
            ("/completions", "post", "application/json", "CreateCompletionResponse"),
            ("/responses", "post", "application/json", "Response"),
            ("/responses", "post", "text/event-stream", "ResponseStreamEvent"),
            ("/models", "get", "application/json", "ListModelsResponse"),
            ("/models/{model}", "get", "application/json", "Model"),
        ]
        for path, method, content_type, name in expected:
            self.assertEqual(
                response_schema(path, method, content_type=content_type),
                name,
                (path, method, content_type),
            )

    def test_defaults(self) -> None:
        self.assertEqual(
            response_schema("/chat/completions", "POST"), "CreateChatCompletionResponse"
        )

    def test_referencedResponse(self) -> None:
        """
        Responses given as C{$ref} to C{#/components/responses/...} are
        followed.
        """
        self.assertEqual(
            response_schema("/chat/completions", "post", status=429), "ErrorResponse"
        )

    def test_requests(self) -> None:
        self.assertEqual(request_schema("/chat/completions", "post"), "CreateChatCompletionRequest")
        self.assertEqual(request_schema("/embeddings", "post"), "CreateEmbeddingRequest")
        self.assertEqual(request_schema("/images/generations", "post"), "CreateImageRequest")
        self.assertEqual(request_schema("/completions", "post"), "CreateCompletionRequest")
        self.assertEqual(request_schema("/responses", "post"), "CreateResponse")

    def test_missing(self) -> None:
        self.assertRaises(KeyError, response_schema, "/nope", "get")
        self.assertRaises(KeyError, response_schema, "/models", "delete")
        self.assertRaises(KeyError, response_schema, "/models", "get", status="418")
        self.assertRaises(
            KeyError, response_schema, "/models", "get", content_type="text/plain"
        )
