"""
The JSON Schema pieces the request declarations render themselves with
(L{hfendpoint.api._contract}): references, C{null} for optional fields,
bounds written as patterns, and conditional rules.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

#: Named schemas a field adds to C{components.schemas} when rendered.
Components = dict[str, Schema]

#: Integers travel to the worker as 64-bit MessagePack integers.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """
    C{schema}, or C{null}: what an optional field accepts.
    """
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if "enum" in schema and len(schema) == 1:
        return {"enum": [*schema["enum"], None]}
    if "anyOf" in schema and len(schema) == 1:
        return {"anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


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


def requires_true(name: str, flag: str) -> Schema:
    """
    The schema rule for a non-null C{name} that needs C{flag} set to C{true}.
    """
    return {
        "if": {"required": [name], "properties": {name: {"not": {"type": "null"}}}},
        "then": {"required": [flag], "properties": {flag: {"const": True}}},
    }
