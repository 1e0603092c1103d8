"""
The request fields that chat, completions and responses share: sampling,
stop sequences, logit bias and stream options, declared once for the
three of them.
"""

from __future__ import annotations

import re
from typing import Any

from attrs import frozen

from hfendpoint.api._contract import (
    Boolean,
    Components,
    Field,
    Integer,
    Number,
    Schema,
    String,
    nullable,
    ref,
    requires_true,
)
from hfendpoint.api._wording import invalid_value, is_number, shown, wrong_type
from hfendpoint.errors import invalid_request

MAX_STOP = 4
#: The API's bounds on C{metadata}: pairs, key length, value length.
METADATA_PAIRS = 16
METADATA_KEY = 64
METADATA_VALUE = 512


@frozen(kw_only=True)
class Metadata(Field):
    """
    Up to 16 string values under keys of up to 64 characters, as the API
    takes them. Checked rather than passed as any object: the Responses
    API sends it back, and an object nested hundreds deep is more than
    the JSON encoder writes (a 500 instead of this 400).
    """

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, dict):
            raise wrong_type(label, "an object", value)
        if len(value) > METADATA_PAIRS:
            raise invalid_value(
                label,
                f"too many properties. Expected an object with at most {METADATA_PAIRS} properties, "
                f"but got an object with {len(value)} properties instead.",
            )
        for key, item in value.items():
            if len(key) > METADATA_KEY:
                raise invalid_value(
                    label,
                    f"key too long. Expected keys with maximum length {METADATA_KEY}, "
                    f"but got a key with length {len(key)} instead.",
                )
            where = f"{label}.{key}"
            if not isinstance(item, str):
                raise wrong_type(where, "a string", item)
            if len(item) > METADATA_VALUE:
                raise invalid_value(
                    where,
                    f"string too long. Expected a string with maximum length {METADATA_VALUE}, "
                    f"but got a string with length {len(item)} instead.",
                )
        return value

    def type_schema(self, components: Components) -> Schema:
        return {
            "type": "object",
            "maxProperties": METADATA_PAIRS,
            "propertyNames": {"maxLength": METADATA_KEY},
            "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE},
        }


SAMPLING: dict[str, Field] = {
    "temperature": Number(minimum=0, maximum=2),
    "top_p": Number(minimum=0, maximum=1),
    "presence_penalty": Number(minimum=-2, maximum=2),
    "frequency_penalty": Number(minimum=-2, maximum=2),
    "seed": Integer(),
    "user": String(),
    "metadata": Metadata(),
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


_TOKEN_KEY_PATTERN = "^-?[0-9]{1,18}$"
_TOKEN_KEY = re.compile(_TOKEN_KEY_PATTERN[1:-1])


@frozen(kw_only=True)
class LogitBias(Field):
    """
    Token ids (as object keys) to a bias from -100 to 100.

    A key is an id in ASCII digits that a 64-bit integer holds: the worker
    receives the map as it is and reads each key as an integer, which
    C{"²"} (a digit to C{str.isdigit}), C{"--5"} or C{"2755930.0"} are not.
    The spec types the map's values, not its keys; the API refuses such
    keys too.
    """

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, dict):
            raise wrong_type(label, "an object", value)
        for key, bias in value.items():
            if _TOKEN_KEY.fullmatch(key) is None:
                raise invalid_request(
                    f"Invalid key in 'logit_bias': {shown(key)}. Keys must be token ids.", param=label
                )
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
                "propertyNames": {"pattern": _TOKEN_KEY_PATTERN},
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
