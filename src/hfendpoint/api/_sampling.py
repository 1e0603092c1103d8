"""
The request fields that chat, completions and responses share: sampling,
stop sequences, logit bias and stream options, declared once for the
three of them.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from hfendpoint.api._contract import (
    Boolean,
    Components,
    Field,
    Integer,
    Number,
    Object,
    Schema,
    String,
    nullable,
    ref,
    requires_true,
)
from hfendpoint.api._wording import invalid_value, is_number, wrong_type
from hfendpoint.errors import invalid_request

MAX_STOP = 4

SAMPLING: dict[str, Field] = {
    "temperature": Number(minimum=0, maximum=2),
    "top_p": Number(minimum=0, maximum=1),
    "presence_penalty": Number(minimum=-2, maximum=2),
    "frequency_penalty": Number(minimum=-2, maximum=2),
    "seed": Integer(),
    "user": String(),
    "metadata": Object(),
}


@frozen(kw_only=True)
class Stop(Field):
    """
    A stop sequence or up to four of them.
    """

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise wrong_type(label, "a string or an array of strings", value)
        if len(value) > MAX_STOP:
            raise invalid_value(
                label,
                f"array too long. Expected an array with maximum length {MAX_STOP}, "
                f"but got an array with length {len(value)} instead.",
            )
        return value

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        components["Stop"] = {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "maxItems": MAX_STOP, "items": {"type": "string"}},
                {"type": "null"},
            ]
        }
        return ref("Stop")


@frozen(kw_only=True)
class LogitBias(Field):
    """
    Token ids (as object keys) to a bias from -100 to 100.
    """

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, dict):
            raise wrong_type(label, "an object", value)
        for key, bias in value.items():
            if not key.lstrip("-").isdigit():
                raise invalid_request(f"Invalid key in 'logit_bias': {key}. Keys must be token ids.", param=label)
            if not is_number(bias) or not -100 <= bias <= 100:
                raise invalid_request(
                    f"Invalid value for 'logit_bias' key {key}: values must be numbers between -100 and 100.",
                    param=label,
                )
        return value

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        components["LogitBias"] = nullable(
            {
                "type": "object",
                "propertyNames": {"pattern": "^-*[0-9]+$"},
                "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            }
        )
        return ref("LogitBias")


_INCLUDE_USAGE = Boolean()


@frozen(kw_only=True)
class StreamOptions(Field):
    """
    C{stream_options}, only with C{stream: true}.

    @return: (when checked) whether the final usage chunk was asked for.
    """

    default: Any = False

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, dict):
            raise wrong_type(label, "an object", value)
        if not checked.get("stream"):
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param=label
            )
        return bool(_INCLUDE_USAGE.check(value.get("include_usage"), f"{label}.include_usage", checked))

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        return nullable({"type": "object", "properties": {"include_usage": _INCLUDE_USAGE.schema(components)}})

    def rules(self, name: str) -> list[Schema]:
        return [requires_true(name, "stream")]


#: The token counts of a chat or completions response.
USAGE: Schema = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}
