"""
Tests for the request contract (L{hfendpoint.api._contract}): each kind
of field checks with the OpenAI API's wording, a body reports the first
field at fault in declaration order, and the schema a field renders
accepts exactly what its check accepts.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.api._app import GatewayApp
from hfendpoint.api._contract import (
    INT64_MAX,
    Array,
    Body,
    Boolean,
    Field,
    Integer,
    Number,
    Object,
    OneOf,
    OnlyWith,
    Refused,
    String,
)
from hfendpoint.api._families import ENDPOINTS
from hfendpoint.api._openapi import document
from hfendpoint.errors import OpenAIError

from .test_app import MESSAGES, AppHarness, tokens_chat

SAMPLES: list[Any] = [
    None, True, False, 0, 1, -1, 2.0, 2.5, -3.5, 200, INT64_MAX, INT64_MAX + 1,
    "", "a", "text", [], ["a"], [1], {}, {"a": 1}, {"inner": "x"}, {"inner": 5},
]

FIELDS: dict[str, Field] = {
    "string": String(),
    "non-empty string": String(non_empty=True),
    "required string": String(required=True),
    "boolean": Boolean(),
    "integer": Integer(),
    "bounded integer": Integer(minimum=1, maximum=128),
    "number": Number(minimum=-2, maximum=2),
    "one of": OneOf(choices=("a", "text")),
    "object": Object(),
    "object with fields": Object(fields={"inner": String()}),
    "array": Array(),
    "refused": Refused(message="Not here."),
}


class FieldTests(SynchronousTestCase):
    def error(self, field: Field, value: Any, label: str = "f", checked: Any = None) -> OpenAIError:
        with self.assertRaises(OpenAIError) as caught:
            field.check(value, label, checked or {})
        return caught.exception

    def assertError(self, error: OpenAIError, message: str, param: str, code: Any) -> None:
        self.assertEqual((error.status, error.message, error.param, error.code), (400, message, param, code))

    def test_missing(self) -> None:
        self.assertError(
            self.error(String(required=True), None, "prompt"), "Missing required parameter: 'prompt'.", "prompt", None
        )

    def test_null_is_absent(self) -> None:
        self.assertIsNone(Integer(minimum=1).check(None, "n", {}))
        self.assertEqual(Integer(default=16).check(None, "n", {}), 16)

    def test_wrong_type(self) -> None:
        self.assertError(
            self.error(Integer(), True, "n"),
            "Invalid type for 'n': expected an integer, but got a boolean instead.",
            "n",
            "invalid_type",
        )
        self.assertError(
            self.error(Number(), "1", "t"),
            "Invalid type for 't': expected a decimal, but got a string instead.",
            "t",
            "invalid_type",
        )

    def test_range(self) -> None:
        self.assertError(
            self.error(Integer(minimum=1), 0, "n"),
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
            "n",
            "invalid_value",
        )
        self.assertError(
            self.error(Number(maximum=2), 2.5, "t"),
            "Invalid 't': decimal above maximum value. Expected a value <= 2, but got 2.5 instead.",
            "t",
            "invalid_value",
        )

    def test_integers_are_64_bit(self) -> None:
        self.assertEqual(Integer().check(INT64_MAX, "seed", {}), INT64_MAX)
        self.assertEqual(self.error(Integer(), INT64_MAX + 1, "seed").code, "invalid_value")

    def test_whole_decimal_is_an_integer(self) -> None:
        value = Integer().check(2.0, "n", {})
        self.assertEqual((value, type(value)), (2, int))

    def test_one_of(self) -> None:
        self.assertError(
            self.error(OneOf(choices=("float", "base64")), "int8", "encoding_format"),
            "Invalid 'encoding_format': value must be one of 'float', 'base64', but got 'int8' instead.",
            "encoding_format",
            "invalid_value",
        )

    def test_nested_fields_are_named_in_full(self) -> None:
        field = Object(fields={"include_usage": Boolean()})
        self.assertEqual(self.error(field, {"include_usage": 1}, "stream_options").param, "stream_options.include_usage")

    def test_only_with(self) -> None:
        field = OnlyWith(field=Integer(maximum=20), flag="logprobs", message="Needs logprobs.")
        self.assertEqual(field.check(3, "top_logprobs", {"logprobs": True}), 3)
        self.assertError(self.error(field, 3, "top_logprobs", {"logprobs": False}), "Needs logprobs.", "top_logprobs", None)
        # The field's own check comes first.
        self.assertEqual(self.error(field, 21, "top_logprobs", {"logprobs": False}).code, "invalid_value")

    def test_refused(self) -> None:
        self.assertIsNone(Refused(message="No.").check(None, "x", {}))
        self.assertError(self.error(Refused(message="No."), "id", "x"), "No.", "x", "unsupported_parameter")


class BodyTests(SynchronousTestCase):
    body = Body(
        "Example",
        {
            "name": String(required=True),
            "count": Integer(default=1, minimum=1),
            "logprobs": Boolean(),
            "top": OnlyWith(field=Integer(), flag="logprobs", message="Needs logprobs."),
        },
    )

    def test_values_and_defaults(self) -> None:
        self.assertEqual(
            self.body.validate({"name": "x", "extra": [1]}), {"name": "x", "count": 1, "logprobs": None, "top": None}
        )

    def test_first_fault_in_declaration_order(self) -> None:
        with self.assertRaises(OpenAIError) as caught:
            self.body.validate({"top": 1, "count": 0})
        self.assertEqual(caught.exception.param, "name")
        with self.assertRaises(OpenAIError) as caught:
            self.body.validate({"top": 1, "count": 0, "name": "x"})
        self.assertEqual(caught.exception.param, "count")

    def test_schema(self) -> None:
        schema = self.body.schema({})
        self.assertEqual(schema["required"], ["name"])
        self.assertEqual(schema["properties"]["name"], {"type": "string"})
        self.assertEqual(
            schema["properties"]["count"], {"type": ["integer", "null"], "minimum": 1, "maximum": INT64_MAX, "default": 1}
        )
        self.assertEqual(len(schema["allOf"]), 1)
        validator = Draft202012Validator(schema)
        self.assertTrue(validator.is_valid({"name": "x", "logprobs": True, "top": 2}))
        self.assertFalse(validator.is_valid({"name": "x", "top": 2}))
        self.assertTrue(validator.is_valid({"name": "x", "top": None}))

    def test_form_fields_are_never_null(self) -> None:
        form = Body("Form", {"count": Integer(minimum=1)}, form=True)
        self.assertEqual(form.schema({})["properties"]["count"], {"type": "integer", "minimum": 1, "maximum": INT64_MAX})

    def test_each_field_schema_accepts_what_it_checks(self) -> None:
        for kind, field in FIELDS.items():
            validator = Draft202012Validator(Body("One", {"f": field}).schema({}))
            for value in SAMPLES:
                try:
                    field.check(value, "f", {})
                    accepted = True
                except OpenAIError:
                    accepted = False
                self.assertEqual(validator.is_valid({"f": value}), accepted, (kind, value))


class DeclarationTests(SynchronousTestCase):
    """
    Every declared endpoint is routed and documented from its one
    declaration.
    """

    def test_routed(self) -> None:
        rules = {(rule.rule, rule.endpoint) for rule in GatewayApp.app.url_map.iter_rules()}
        for endpoint in ENDPOINTS:
            self.assertIn((endpoint.path, endpoint.operation_id), rules)

    def test_documented_with_its_body(self) -> None:
        doc = document()
        for endpoint in ENDPOINTS:
            operation = doc["paths"][endpoint.path]["post"]
            self.assertEqual(operation["operationId"], endpoint.operation_id)
            content = operation["requestBody"]["content"][endpoint.content_type]
            self.assertEqual(content["schema"], {"$ref": f"#/components/schemas/{endpoint.body.name}"})
            schema = doc["components"]["schemas"][endpoint.body.name]
            self.assertEqual(list(schema["properties"]), list(endpoint.body.fields))
            self.assertIn(endpoint.response, doc["components"]["schemas"])

    def test_names_are_unique(self) -> None:
        self.assertEqual(len({e.path for e in ENDPOINTS}), len(ENDPOINTS))
        self.assertEqual(len({e.operation_id for e in ENDPOINTS}), len(ENDPOINTS))

    def test_klein_route_serves_as_the_exact_route(self) -> None:
        """
        Requests the exact-path table does not take reach the same
        endpoints through Klein, served the same way.
        """
        harness = AppHarness({"chat_completions": tokens_chat("a", "b")})
        klein = StubTreq(harness.app.app.resource())
        answers = []
        for treq in (harness.treq, klein):
            for body in ({"messages": MESSAGES}, {"messages": []}):
                response = self.successResultOf(treq.post("http://gw/v1/chat/completions", json=body))
                content = self.successResultOf(response.json())
                content.pop("id", None)
                answers.append((response.code, content))
        self.assertEqual(answers[:2], answers[2:])
        self.assertEqual([code for code, _ in answers[:2]], [200, 400])
