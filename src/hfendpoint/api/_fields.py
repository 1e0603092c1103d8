"""
Checking request fields the way the OpenAI API does, with its wording,
so a client sees the same 400s (naming the field in C{param}) here as
there.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from hfendpoint.errors import invalid_request

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


def missing(name: str) -> Exception:
    return invalid_request(f"Missing required parameter: '{name}'.", param=name)


def wrong_type(name: str, expected: str, value: Any) -> Exception:
    return invalid_request(
        f"Invalid type for '{name}': expected {expected}, but got "
        f"{type_name(value)} instead.",
        param=name,
        code="invalid_type",
    )


def invalid_value(name: str, message: str) -> Exception:
    return invalid_request(f"Invalid '{name}': {message}", param=name, code="invalid_value")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def get_string(
    body: dict,
    name: str,
    *,
    required: bool = False,
    default: Optional[str] = None,
    non_empty: bool = False,
    prefix: str = "",
) -> Optional[str]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        if required:
            raise missing(label)
        return default
    if not isinstance(value, str):
        raise wrong_type(label, "a string", value)
    if non_empty and not value:
        raise invalid_value(label, "empty string. Expected a string with minimum length 1, but got an empty string instead.")
    return value


def get_bool(body: dict, name: str, default: Optional[bool] = None, prefix: str = "") -> Optional[bool]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(label, "a boolean", value)
    return value


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _check_range(label: str, value: float, minimum: Optional[float], maximum: Optional[float], kind: str) -> None:
    if minimum is not None and value < minimum:
        raise invalid_value(
            label,
            f"{kind} below minimum value. Expected a value >= {minimum:g}, but got {value:g} instead.",
        )
    if maximum is not None and value > maximum:
        raise invalid_value(
            label,
            f"{kind} above maximum value. Expected a value <= {maximum:g}, but got {value:g} instead.",
        )


def get_int(
    body: dict,
    name: str,
    default: Optional[int] = None,
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
    prefix: str = "",
) -> Optional[int]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_int(value):
        raise wrong_type(label, "an integer", value)
    # Integers travel to the worker as 64-bit MessagePack integers.
    _check_range(
        label,
        value,
        INT64_MIN if minimum is None else minimum,
        INT64_MAX if maximum is None else maximum,
        "integer",
    )
    return value


def get_number(
    body: dict,
    name: str,
    default: Optional[float] = None,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    prefix: str = "",
) -> Optional[float]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        return default
    if not is_number(value):
        raise wrong_type(label, "a decimal", value)
    _check_range(label, value, minimum, maximum, "decimal")
    return value


def get_enum(body: dict, name: str, choices: Iterable[str], default: Optional[str] = None, prefix: str = "") -> Optional[str]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        return default
    choices = tuple(choices)
    if not isinstance(value, str):
        raise wrong_type(label, "a string", value)
    if value not in choices:
        listed = ", ".join(f"'{c}'" for c in choices)
        raise invalid_value(
            label, f"value must be one of {listed}, but got '{value}' instead."
        )
    return value


def get_object(body: dict, name: str, prefix: str = "") -> Optional[dict]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type(label, "an object", value)
    return value


def get_list(body: dict, name: str, prefix: str = "") -> Optional[list]:
    value = body.get(name)
    label = prefix + name
    if value is None:
        return None
    if not isinstance(value, list):
        raise wrong_type(label, "an array", value)
    return value
