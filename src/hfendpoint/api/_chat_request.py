"""
The chat completions request, declared: its messages, tools and response
format, and every field the API checks, in the order it checks them.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from hfendpoint.api._contract import (
    Body,
    Boolean,
    Components,
    Field,
    Integer,
    OneOf,
    OnlyWith,
    Schema,
    String,
    nullable,
    ref,
)
from hfendpoint.api._wording import EMPTY_ARRAY, invalid_value, missing, not_one_of, shown, wrong_type
from hfendpoint.api._sampling import SAMPLING, LogitBias, Stop, StreamOptions
from hfendpoint.errors import invalid_request

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")


@frozen(kw_only=True)
class Messages(Field):
    """
    The conversation: at least one message, each with a known role, and
    content (a string or typed parts) unless it is the assistant's.
    """

    required: bool = True

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, list):
            raise wrong_type(label, "an array", value)
        if not value:
            raise invalid_value(label, EMPTY_ARRAY)
        for i, message in enumerate(value):
            where = f"{label}[{i}]"
            if not isinstance(message, dict):
                raise wrong_type(where, "an object", message)
            role = message.get("role")
            if role is None:
                raise missing(f"{where}.role")
            if role not in ROLES:
                raise not_one_of(f"{where}.role", ROLES, shown(role))
            content = message.get("content")
            if content is None:
                if role != "assistant":
                    raise missing(f"{where}.content")
            elif not isinstance(content, (str, list)):
                raise wrong_type(f"{where}.content", "a string or an array", content)
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                        raise invalid_request(
                            f"Invalid '{where}.content[{j}]': each content part must be an object with a 'type'.",
                            param=f"{where}.content[{j}]",
                            code="invalid_value",
                        )
        return value

    def type_schema(self, components: Components) -> Schema:
        components["ContentPart"] = {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
        }
        components["ChatMessage"] = {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"enum": list(ROLES)},
                "content": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": ref("ContentPart")},
                        {"type": "null"},
                    ]
                },
            },
            # Only an assistant message (one with tool calls) may go
            # without content.
            "if": {"properties": {"role": {"const": "assistant"}}},
            "else": {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
        }
        return {"type": "array", "minItems": 1, "items": ref("ChatMessage")}


_FORMAT_TYPE = OneOf(choices=FORMATS, required=True)


@frozen(kw_only=True)
class ResponseFormat(Field):
    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, dict):
            raise wrong_type(label, "an object", value)
        kind = _FORMAT_TYPE.check(value.get("type"), f"{label}.type", checked)
        if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
            raise missing(f"{label}.json_schema")
        return value

    def type_schema(self, components: Components) -> Schema:
        return {
            "type": "object",
            "required": ["type"],
            "properties": {"type": _FORMAT_TYPE.type_schema(components)},
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": "json_schema"}}},
                    "then": {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
                }
            ],
        }


@frozen(kw_only=True)
class Tools(Field):
    """
    Tools the model may call; a function tool (the default type) needs
    a named function.
    """

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, list):
            raise wrong_type(label, "an array", value)
        for i, tool in enumerate(value):
            if not isinstance(tool, dict):
                raise wrong_type(f"{label}[{i}]", "an object", tool)
            if tool.get("type", "function") == "function":
                function = tool.get("function")
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise missing(f"{label}[{i}].function.name")
        return value

    def type_schema(self, components: Components) -> Schema:
        components["Tool"] = {
            "type": "object",
            "if": {"properties": {"type": {"const": "function"}}},
            "then": {
                "required": ["function"],
                "properties": {
                    "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
                },
            },
        }
        return {"type": "array", "items": ref("Tool")}


@frozen(kw_only=True)
class ToolChoice(Field):
    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, (str, dict)):
            raise wrong_type(label, "a string or an object", value)
        if isinstance(value, str) and value not in TOOL_CHOICES:
            raise not_one_of(label, TOOL_CHOICES, shown(value))
        return value

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        return nullable({"anyOf": [{"enum": list(TOOL_CHOICES)}, {"type": "object"}]})


CHAT_REQUEST = Body(
    "CreateChatCompletionRequest",
    {
        "model": String(),
        "messages": Messages(),
        "stream": Boolean(default=False),
        **SAMPLING,
        "stop": Stop(),
        "n": Integer(minimum=1, maximum=128),
        "max_tokens": Integer(minimum=1, saturate=True),
        "max_completion_tokens": Integer(minimum=1, saturate=True),
        "logprobs": Boolean(),
        "top_logprobs": OnlyWith(
            field=Integer(minimum=0, maximum=20),
            flag="logprobs",
            message="Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
        ),
        "logit_bias": LogitBias(),
        "response_format": ResponseFormat(),
        "tools": Tools(),
        "tool_choice": ToolChoice(),
        "stream_options": StreamOptions(),
    },
)


def worker_request(body: dict, checked: dict) -> dict:
    """
    What the worker receives: the request itself, every field passed
    through, with C{max_tokens} filled in from C{max_completion_tokens}
    for workers that only know the older name. Integers go as they were
    checked (C{2} for C{2.0}).
    """
    data = CHAT_REQUEST.forwarded(body, checked)
    data["stream"] = checked["stream"]
    if checked["max_tokens"] is None and checked["max_completion_tokens"] is not None:
        data["max_tokens"] = checked["max_completion_tokens"]
    return data


def read_request(body: dict) -> dict:
    """
    Check a chat request as the API would and return the worker's request.
    """
    return worker_request(body, CHAT_REQUEST.validate(body))
