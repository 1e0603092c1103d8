"""
The OpenAI API's wording for a request field at fault: clients and their
tests read these messages, C{param} and C{code}, so they are the API's
own, word for word.
"""

from __future__ import annotations

from typing import Any, Iterable

from hfendpoint.errors import OpenAIError, invalid_request

_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


#: The most of a client's string an error message repeats.
SHOWN_LENGTH = 64


def shown(value: Any) -> str:
    """
    A client's value as an error message quotes it: a string (cut short)
    or a number as written, anything else by its type only. Never C{repr}
    of a container: a list nested a thousand deep exceeds Python's
    recursion limit there, and a long one would make a message of
    megabytes.
    """
    if isinstance(value, str):
        if len(value) > SHOWN_LENGTH:
            return repr(value[:SHOWN_LENGTH]) + "..."
        return repr(value)
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**SHOWN_LENGTH):
        return repr(value)
    return type_name(value)


def missing(name: str) -> OpenAIError:
    return invalid_request(f"Missing required parameter: '{name}'.", param=name)


def wrong_type(name: str, expected: str, value: Any) -> OpenAIError:
    return invalid_request(
        f"Invalid type for '{name}': expected {expected}, but got {type_name(value)} instead.",
        param=name,
        code="invalid_type",
    )


def invalid_value(name: str, message: str) -> OpenAIError:
    return invalid_request(f"Invalid '{name}': {message}", param=name, code="invalid_value")


def not_one_of(name: str, choices: Iterable[str], got: str) -> OpenAIError:
    listed = ", ".join(f"'{c}'" for c in choices)
    return invalid_value(name, f"value must be one of {listed}, but got {got} instead.")


EMPTY_ARRAY = "empty array. Expected an array with minimum length 1, but got an empty array instead."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
