"""
Our own OpenAPI document (L{hfendpoint.openapi}): a valid OpenAPI 3.1
document, describing exactly the routes the app serves, whose request
schemas accept what our validators accept and reject what they reject.

The helpers L{our_validate_request} and L{our_validate_response} are also
used by C{test_spec_conformance} to check every body it sees against our
document as well as against the official one.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint import __version__
from hfendpoint.api._app import GatewayApp
from hfendpoint.api._contract import at_most
from hfendpoint.api._openapi import document

from .test_app import AppHarness, Case, tokenize, tokens_chat

_URI = "urn:hfendpoint:our-openapi"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@lru_cache(maxsize=None)
def _registry() -> Registry:
    return Registry().with_resource(_URI, DRAFT202012.create_resource(document()))


def _token(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _resolve(pointer: str) -> tuple[str, Any]:
    """
    Follow C{$ref}s (to responses, request bodies) from a JSON pointer in
    our document; return the final pointer and the object there.
    """
    node: Any = document()
    current = ""
    for part in pointer.strip("/").split("/"):
        if isinstance(node, dict) and "$ref" in node:
            current = node["$ref"][1:]
            node = _at(current)
        name = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or name not in node:
            raise KeyError(f"nothing at {current}/{part} in our OpenAPI document")
        node = node[name]
        current = f"{current}/{part}"
    return current, node


def _at(pointer: str) -> Any:
    node: Any = document()
    for part in pointer.strip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@lru_cache(maxsize=None)
def _validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{_URI}#{pointer}"}, registry=_registry())


def _check(pointer: str, instance: Any, what: str) -> None:
    error = best_match(_validator(pointer).iter_errors(instance))
    if error is not None:
        raise AssertionError(
            f"{what} does not match our OpenAPI document: {error.message[:400]}\n"
            f"  at: {error.json_path}\n  schema: {pointer} / {'/'.join(map(str, error.absolute_schema_path))}"
        )


def our_request_errors(path: str, method: str, body: Any, content_type: str = "application/json") -> list:
    pointer, _ = _resolve(
        f"/paths/{_token(path)}/{method.lower()}/requestBody/content/{_token(content_type)}/schema"
    )
    return list(_validator(pointer).iter_errors(body))


def our_validate_request(path: str, method: str, body: Any, content_type: str = "application/json") -> None:
    pointer, _ = _resolve(
        f"/paths/{_token(path)}/{method.lower()}/requestBody/content/{_token(content_type)}/schema"
    )
    _check(pointer, body, f"request to {method.upper()} {path}")


def our_validate_response(
    path: str, method: str, status: int, body: Any, content_type: str = "application/json"
) -> None:
    """
    Check that C{status} is documented for the operation and that C{body}
    (or one SSE event's data) matches the schema documented for it.
    """
    operation = f"/paths/{_token(path)}/{method.lower()}"
    responses = _at(operation + "/responses")
    if str(status) not in responses:
        raise AssertionError(f"{method.upper()} {path} does not document status {status}")
    pointer, _ = _resolve(f"{operation}/responses/{status}/content/{_token(content_type)}/schema")
    _check(pointer, body, f"{status} {content_type} of {method.upper()} {path}")


def served_routes() -> set[tuple[str, str]]:
    """
    Every (OpenAPI path, method) the Klein app routes, HEAD (which Werkzeug
    adds for GET) aside.
    """
    from hfendpoint.web._metrics import METRICS_PATH

    # /metrics is served by the service's MetricsResource, before the app.
    routes = {(METRICS_PATH.decode("ascii"), "get")}
    for rule in GatewayApp.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method != "HEAD":
                routes.add((path, method.lower()))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method in _HTTP_METHODS
    }


class DocumentTests(SynchronousTestCase):
    def test_valid_openapi_3_1(self) -> None:
        doc = document()
        self.assertEqual(doc["openapi"], "3.1.0")
        self.assertEqual(doc["info"]["version"], __version__)
        validate_openapi(copy.deepcopy(doc))

    def test_the_validator_can_fail(self) -> None:
        broken = copy.deepcopy(document())
        broken["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]["description"] = "x"
        self.assertRaises(OpenAPIValidationError, validate_openapi, broken)

    def test_json_serialisable_and_built_once(self) -> None:
        self.assertIs(document(), document())
        self.assertEqual(json.loads(json.dumps(document(), allow_nan=False)), document())

    def test_every_route_is_documented_and_only_those(self) -> None:
        served = served_routes()
        self.assertIn(("/v1/images/{image_id}", "delete"), served)
        self.assertIn(("/v1/models/{model}", "get"), served)
        self.assertEqual(documented_routes(), served)

    def test_security(self) -> None:
        """
        The API key schemes are declared, every operation takes either
        (or none, for a gateway without keys), and the probes and a stored
        image never ask for one.
        """
        doc = document()
        self.assertEqual(set(doc["components"]["securitySchemes"]), {"bearerAuth", "apiKeyHeader"})
        self.assertIn({"bearerAuth": []}, doc["security"])
        self.assertIn({}, doc["security"])
        for path, method in (("/health", "get"), ("/ready", "get"), ("/v1/images/{image_id}", "get")):
            self.assertEqual(doc["paths"][path][method]["security"], [], path)
        self.assertNotIn("security", doc["paths"]["/v1/images/{image_id}"]["delete"])
        self.assertIn("401", doc["paths"]["/v1/chat/completions"]["post"]["responses"])

    def test_every_reference_resolves(self) -> None:
        refs: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("$ref"), str):
                    refs.append(node["$ref"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(document())
        self.assertTrue(refs)
        for ref in refs:
            self.assertTrue(ref.startswith("#/"), ref)
            _at(ref[1:])

    def test_every_operation_documents_its_errors(self) -> None:
        for path, method in documented_routes():
            responses = document()["paths"][path][method]["responses"]
            statuses = {"404", "405", "500"}
            if method == "post":
                statuses |= {"400", "413", "429", "501", "502", "503", "504"}
            self.assertLessEqual(statuses, set(responses), (path, method))
            for status in statuses:
                our_validate_response(
                    path,
                    method,
                    int(status),
                    {"error": {"message": "m", "type": "t", "param": None, "code": None}},
                )
                with self.assertRaises(AssertionError):
                    our_validate_response(path, method, int(status), {"error": {"message": "m"}})

    def test_operation_ids_are_unique(self) -> None:
        ids = [document()["paths"][p][m]["operationId"] for p, m in documented_routes()]
        self.assertEqual(len(ids), len(set(ids)))

    def test_at_most(self) -> None:
        for limit in (1, 7, 10, 99, 100, 128, 4096, 5000):
            pattern = re.compile(f"^{at_most(limit)}$")
            accepted = [i for i in range(0, limit * 3) if pattern.match(str(i))]
            self.assertEqual(accepted, list(range(1, limit + 1)), limit)
            self.assertIsNone(pattern.match("0" + str(limit)))


class ServedDocumentTests(Case):
    def test_get(self) -> None:
        h = AppHarness({})
        response = self.successResultOf(h.treq.get("http://gw/openapi.json"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(json.loads(self.successResultOf(response.content())), document())

    def test_other_methods(self) -> None:
        h = AppHarness({})
        response = self.successResultOf(h.treq.post("http://gw/openapi.json", data=b"{}"))
        self.assertEqual(response.code, 405)


def _embed(data: dict) -> list:
    return [{"embeddings": [[1.0, 0.0] for _ in data["input"]]}]


def _images(data: dict) -> list:
    return [{"png": b"\x89PNG\r\n\x1a\nfake"} for _ in range(data["n"])]


MESSAGES = [{"role": "user", "content": "hi"}]

# Request bodies, valid and invalid, for each JSON endpoint: our document
# must accept exactly those the gateway accepts.
AGREEMENT: dict[str, list[Any]] = {
    "/v1/chat/completions": [
        {"messages": MESSAGES},
        {"model": "m", "messages": MESSAGES, "model_extra": 1},
        {"model": None, "messages": MESSAGES, "stream": None, "n": None, "stop": None, "temperature": None},
        {"messages": MESSAGES, "n": 128},
        {"messages": MESSAGES, "n": 129},
        {"messages": MESSAGES, "n": 0},
        {"messages": MESSAGES, "n": 2.0},
        {"messages": MESSAGES, "n": 1.5},
        {"messages": MESSAGES, "n": True},
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "assistant"}]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": []}]},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
        {"messages": [{"role": "user", "content": [{"text": "a"}]}]},
        {"messages": [{"role": "user", "content": ["a"]}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": ["hi"]},
        {"messages": MESSAGES, "temperature": 2},
        {"messages": MESSAGES, "temperature": 2.01},
        {"messages": MESSAGES, "temperature": "1"},
        {"messages": MESSAGES, "top_p": 0},
        {"messages": MESSAGES, "top_p": 1.1},
        {"messages": MESSAGES, "presence_penalty": -2},
        {"messages": MESSAGES, "frequency_penalty": -2.5},
        {"messages": MESSAGES, "seed": -5},
        {"messages": MESSAGES, "seed": 0.5},
        {"messages": MESSAGES, "user": 1},
        {"messages": MESSAGES, "metadata": {"a": "b"}},
        {"messages": MESSAGES, "metadata": []},
        {"messages": MESSAGES, "stop": "x"},
        {"messages": MESSAGES, "stop": []},
        {"messages": MESSAGES, "stop": ["a", "b", "c", "d"]},
        {"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]},
        {"messages": MESSAGES, "stop": [1]},
        {"messages": MESSAGES, "max_tokens": 1},
        {"messages": MESSAGES, "max_tokens": 0},
        {"messages": MESSAGES, "max_completion_tokens": 0},
        {"messages": MESSAGES, "logprobs": True, "top_logprobs": 20},
        {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
        {"messages": MESSAGES, "top_logprobs": 2},
        {"messages": MESSAGES, "logprobs": False, "top_logprobs": 2},
        {"messages": MESSAGES, "top_logprobs": None},
        {"messages": MESSAGES, "logprobs": 1},
        {"messages": MESSAGES, "logit_bias": {"1": 100, "-2": -100}},
        {"messages": MESSAGES, "logit_bias": {"1": 101}},
        {"messages": MESSAGES, "logit_bias": {"a": 1}},
        {"messages": MESSAGES, "logit_bias": {"": 1}},
        {"messages": MESSAGES, "logit_bias": {"1": "1"}},
        {"messages": MESSAGES, "response_format": {"type": "json_object"}},
        {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {"messages": MESSAGES, "response_format": {"type": "json_schema"}},
        {"messages": MESSAGES, "response_format": {"type": "text", "json_schema": 5}},
        {"messages": MESSAGES, "response_format": {}},
        {"messages": MESSAGES, "response_format": "json"},
        {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {"messages": MESSAGES, "tools": [{"function": {"name": "f"}}]},
        {"messages": MESSAGES, "tools": [{"type": "function", "function": {}}]},
        {"messages": MESSAGES, "tools": [{"type": "function"}]},
        {"messages": MESSAGES, "tools": [{"type": "web_search"}]},
        {"messages": MESSAGES, "tools": [{"type": 5}]},
        {"messages": MESSAGES, "tools": ["f"]},
        {"messages": MESSAGES, "tools": {}},
        {"messages": MESSAGES, "tool_choice": "required"},
        {"messages": MESSAGES, "tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"messages": MESSAGES, "tool_choice": "sometimes"},
        {"messages": MESSAGES, "tool_choice": 1},
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        {"messages": MESSAGES, "stream": False, "stream_options": {"include_usage": True}},
        {"messages": MESSAGES, "stream_options": {}},
        {"messages": MESSAGES, "stream_options": None},
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "yes"}},
        {"messages": MESSAGES, "stream": "yes"},
    ],
    "/v1/completions": [
        {"prompt": "a"},
        {"prompt": ""},
        {"prompt": ["a", ""]},
        {"prompt": []},
        {"prompt": None},
        {},
        {"prompt": 1},
        {"prompt": [1, 2]},
        {"prompt": [[1, 2]]},
        {"prompt": ["a", 1]},
        {"prompt": "a", "suffix": "b"},
        {"prompt": "a", "suffix": 1},
        {"prompt": "a", "echo": True},
        {"prompt": "a", "echo": 1},
        {"prompt": "a", "best_of": 1},
        {"prompt": "a", "best_of": 1, "n": 1},
        {"prompt": "a", "best_of": 1, "n": None},
        {"prompt": "a", "best_of": 2},
        {"prompt": "a", "best_of": 2, "n": 2},
        {"prompt": "a", "best_of": 20, "n": 20},
        {"prompt": "a", "best_of": 21, "n": 21},
        {"prompt": "a", "best_of": 0},
        {"prompt": "a", "best_of": 3, "n": 2},
        {"prompt": "a", "best_of": None, "n": 5},
        {"prompt": "a", "n": 128},
        {"prompt": "a", "n": 129},
        {"prompt": "a", "max_tokens": 0},
        {"prompt": "a", "max_tokens": -1},
        {"prompt": "a", "logprobs": 0},
        {"prompt": "a", "logprobs": 5},
        {"prompt": "a", "logprobs": 6},
        {"prompt": "a", "logprobs": True},
        {"prompt": "a", "stop": ["x"]},
        {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]},
        {"prompt": "a", "logit_bias": {"5": 1}},
        {"prompt": "a", "logit_bias": {"x": 1}},
        {"prompt": "a", "stream": True, "stream_options": {"include_usage": False}},
        {"prompt": "a", "stream_options": {"include_usage": True}},
        {"prompt": "a", "temperature": -0.1},
        {"prompt": "a", "user": "u", "seed": 1, "top_p": 0.5},
        {"prompt": "a", "model": ["m"]},
    ],
    "/v1/responses": [
        {"input": "hi"},
        {"input": ""},
        {"input": None},
        {},
        {"input": 5},
        {"input": []},
        {"input": [{"role": "user", "content": "x"}]},
        {"input": [{"type": "message", "role": "assistant", "content": "x"}]},
        {"input": [{"type": "function_call", "role": "user", "content": "x"}]},
        {"input": [{"type": None, "role": "user", "content": "x"}]},
        {"input": [{"role": "tool", "content": "x"}]},
        {"input": [{"role": "user"}]},
        {"input": [{"role": "user", "content": None}]},
        {"input": [{"role": "user", "content": 5}]},
        {"input": [{"role": "user", "content": []}]},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}]}]},
        {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        {"input": [{"role": "user", "content": [{"text": "a"}]}]},
        {"input": ["x"]},
        {"input": "x", "instructions": "be brief"},
        {"input": "x", "instructions": 5},
        {"input": "x", "max_output_tokens": 16},
        {"input": "x", "max_output_tokens": 15},
        {"input": "x", "previous_response_id": "resp_1"},
        {"input": "x", "previous_response_id": None},
        {"input": "x", "temperature": 3},
        {"input": "x", "stream": True},
        {"input": "x", "stream": 1},
        {"input": "x", "metadata": "m"},
    ],
    "/v1/embeddings": [
        {"input": "a"},
        {"input": ""},
        {"input": ["a", "b"]},
        {"input": ["a", ""]},
        {"input": []},
        {"input": None},
        {},
        {"input": [1, 2]},
        {"input": [[1], [2, 3]]},
        {"input": [[1], []]},
        {"input": [[-1]]},
        {"input": [2**32]},
        {"input": [2**32 - 1]},
        {"input": [1, "a"]},
        {"input": [[1], "a"]},
        {"input": ["a"] * 2048},
        {"input": ["a"] * 2049},
        {"input": 5},
        {"input": "a", "encoding_format": "base64"},
        {"input": "a", "encoding_format": None},
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "dimensions": 1},
        {"input": "a", "dimensions": 0},
        {"input": "a", "user": 1},
        {"input": "a", "model": "m"},
    ],
    "/v1/images/generations": [
        {"prompt": "a"},
        {"prompt": ""},
        {"prompt": None},
        {},
        {"prompt": 1},
        {"prompt": "a", "n": 10},
        {"prompt": "a", "n": 11},
        {"prompt": "a", "n": 0},
        {"prompt": "a", "n": None},
        {"prompt": "a", "size": "auto"},
        {"prompt": "a", "size": "256x256"},
        {"prompt": "a", "size": "4096x1"},
        {"prompt": "a", "size": "4097x1"},
        {"prompt": "a", "size": "0x10"},
        {"prompt": "a", "size": "010x10"},
        {"prompt": "a", "size": "big"},
        {"prompt": "a", "size": 256},
        {"prompt": "a", "size": None},
        {"prompt": "a", "response_format": "url"},
        {"prompt": "a", "response_format": "jpeg"},
        {"prompt": "a", "model": "m", "user": "u", "quality": "hd"},
        {"prompt": "a", "user": 5},
    ],
}


class RequestSchemaAgreementTests(Case):
    """
    Our document is what our validators enforce: for each body, it is
    accepted by the document exactly when the gateway answers 200, and
    the gateway answers 400 otherwise.
    """

    def harness(self) -> AppHarness:
        return AppHarness(
            {
                "chat_completions": tokens_chat("x"),
                "tokenize": tokenize,
                "embeddings": _embed,
                "images_generations": _images,
            }
        )

    def test_tables_have_both_kinds(self) -> None:
        for path, bodies in AGREEMENT.items():
            verdicts = {not our_request_errors(path, "post", body) for body in bodies}
            self.assertEqual(verdicts, {True, False}, path)

    def test_agreement(self) -> None:
        h = self.harness()
        disagreements = []
        for path, bodies in AGREEMENT.items():
            for body in bodies:
                errors = our_request_errors(path, "post", body)
                response, content = self.respond(h, path, body)
                if (response.code == 200) == (not errors) and response.code in (200, 400):
                    continue
                disagreements.append(
                    f"{path} {json.dumps(body)[:120]}: gateway {response.code} "
                    f"{content[:160]!r}, document: {errors[0].message[:160] if errors else 'valid'}"
                )
        self.assertEqual(disagreements, [])

    def test_edit_form_fields(self) -> None:
        # A multipart form cannot be checked as JSON, but its fields have
        # the same limits as the JSON generation's.
        schema = document()["components"]["schemas"]["CreateImageEditRequest"]["properties"]
        generation = document()["components"]["schemas"]["CreateImageRequest"]["properties"]
        self.assertEqual(schema["n"]["maximum"], generation["n"]["maximum"])
        self.assertEqual(schema["prompt"], generation["prompt"])
        self.assertEqual(schema["size"], {"$ref": "#/components/schemas/ImageSize"})
