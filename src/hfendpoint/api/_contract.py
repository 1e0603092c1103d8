"""
The request contract, declared once per endpoint: each field's type,
bounds, default and the OpenAI API's own wording for what is wrong with
it. A L{Body} checks a request against its fields and renders the JSON
Schema of the same fields for C{/openapi.json}, so the two cannot drift.

The OpenAI API answers a bad field with a 400 that names it in C{param}
and words the problem in a handful of fixed ways (missing, wrong type, out
of range, not one of); clients and their tests read that wording, so it is
reproduced here exactly rather than left to a schema library's own.

Every optional field takes C{null} as absent, and a request may carry
fields nobody declared: they are passed through to the worker.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from attrs import field, frozen

from hfendpoint.api._wording import invalid_value, is_int, is_number, missing, not_one_of, shown, wrong_type
from hfendpoint.api._schema import (
    INT64_MAX,
    INT64_MIN,
    Components,
    Schema,
    at_most,
    nullable,
    ref,
    requires_true,
)
from hfendpoint.errors import invalid_request

#: The fields, the body, and the schema pieces the declarations use with them.
__all__ = [
    "INT64_MAX", "INT64_MIN", "Components", "Schema", "at_most", "nullable", "ref", "requires_true",
    "Field", "String", "Boolean", "Integer", "Number", "OneOf", "Object", "Array", "OnlyWith", "Refused", "Body",
]

# Fields


@frozen(kw_only=True)
class Field:
    """
    One request field: how it is checked and how it is documented, side
    by side so that a change to one is a change to the other.

    Subclasses implement L{check_value} (the value is never C{None} there)
    and L{type_schema}; a field whose check looks at fields declared
    before it (in C{checked}) says so to the document in L{rules}.

    @ivar required: C{None} (or no value) is refused as missing.
    @ivar default: what an absent field is taken to be.
    """

    required: bool = False
    default: Any = None
    description: Optional[str] = None

    def check(self, value: Any, label: str, checked: dict) -> Any:
        """
        @param label: the field's name as the error names it
            (C{messages[0].role}, C{stream_options.include_usage}).
        @param checked: what the fields declared before this one gave.
        @return: the value to use, converted where the field converts it.
        @raise OpenAIError: a 400 in the API's wording.
        """
        if value is None:
            if self.required:
                raise missing(label)
            return self.default
        return self.check_value(value, label, checked)

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        return value

    def type_schema(self, components: Components) -> Schema:
        return {}

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        """
        The field's JSON Schema: C{null} is allowed unless it is required
        (or the body is a form, where nothing is null).
        """
        schema = self.type_schema(components)
        if with_null and not self.required:
            schema = nullable(schema)
        if self.default is not None and isinstance(self.default, (str, int, float, bool)):
            schema = {**schema, "default": self.default}
        if self.description:
            schema = {**schema, "description": self.description}
        return schema

    def rules(self, name: str) -> list[Schema]:
        return []


@frozen(kw_only=True)
class String(Field):
    non_empty: bool = False

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, str):
            raise wrong_type(label, "a string", value)
        if self.non_empty and not value:
            raise invalid_value(
                label, "empty string. Expected a string with minimum length 1, but got an empty string instead."
            )
        return value

    def type_schema(self, components: Components) -> Schema:
        return {"type": "string", "minLength": 1} if self.non_empty else {"type": "string"}


@frozen(kw_only=True)
class Boolean(Field):
    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, bool):
            raise wrong_type(label, "a boolean", value)
        return value

    def type_schema(self, components: Components) -> Schema:
        return {"type": "boolean"}


def _number(value: float) -> str:
    """
    A bound or a client's number in a message, as the API writes it; an
    integer too big for a float (a form field of thousands of digits) by
    its type, which C{:g} cannot format.
    """
    if isinstance(value, int) and abs(value) >= 10**15:
        return shown(value) if abs(value) >= 10**64 else f"{float(value):g}"
    return f"{value:g}"


def _check_range(label: str, value: float, minimum: Optional[float], maximum: Optional[float], kind: str) -> None:
    if minimum is not None and value < minimum:
        raise invalid_value(
            label,
            f"{kind} below minimum value. Expected a value >= {_number(minimum)}, but got {_number(value)} instead.",
        )
    if maximum is not None and value > maximum:
        raise invalid_value(
            label,
            f"{kind} above maximum value. Expected a value <= {_number(maximum)}, but got {_number(value)} instead.",
        )


def _bounds(minimum: Optional[float], maximum: Optional[float]) -> Schema:
    bounds: Schema = {}
    if minimum is not None:
        bounds["minimum"] = minimum
    if maximum is not None:
        bounds["maximum"] = maximum
    return bounds


@frozen(kw_only=True)
class Integer(Field):
    """
    An integer; C{2.0} is taken as C{2}, as JSON Schema does, and given
    to the worker as C{2} (see L{Body.forwarded}).

    @ivar saturate: without a declared maximum, a value above what the
        worker can take (C{INT64_MAX}) is taken as C{INT64_MAX} rather
        than refused. For an upper bound such as C{max_tokens}, which the
        API's spec leaves unbounded, any bound that large means the same:
        no model makes that many tokens.
    """

    minimum: Optional[int] = None
    maximum: Optional[int] = None
    saturate: bool = False

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_int(value):
            raise wrong_type(label, "an integer", value)
        maximum = self.maximum
        if maximum is None:
            if self.saturate and value > INT64_MAX:
                value = INT64_MAX
            maximum = INT64_MAX
        _check_range(label, value, INT64_MIN if self.minimum is None else self.minimum, maximum, "integer")
        return value

    def type_schema(self, components: Components) -> Schema:
        # Stated even when not declared: what the worker can take is checked.
        maximum = self.maximum
        if maximum is None and not self.saturate:
            maximum = INT64_MAX
        return {"type": "integer", **_bounds(INT64_MIN if self.minimum is None else self.minimum, maximum)}


@frozen(kw_only=True)
class Number(Field):
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not is_number(value):
            raise wrong_type(label, "a decimal", value)
        _check_range(label, value, self.minimum, self.maximum, "decimal")
        return value

    def type_schema(self, components: Components) -> Schema:
        return {"type": "number", **_bounds(self.minimum, self.maximum)}


@frozen(kw_only=True)
class OneOf(Field):
    """
    A string from a fixed list.
    """

    choices: tuple[str, ...]

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, str):
            raise wrong_type(label, "a string", value)
        if value not in self.choices:
            raise not_one_of(label, self.choices, shown(value))
        return value

    def type_schema(self, components: Components) -> Schema:
        return {"enum": list(self.choices)}


@frozen(kw_only=True)
class Object(Field):
    """
    An object, whose own declared fields (if any) are checked by their
    full name (C{stream_options.include_usage}).
    """

    fields: dict = field(factory=dict)

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, dict):
            raise wrong_type(label, "an object", value)
        inner: dict = {}
        for name, member in self.fields.items():
            inner[name] = member.check(value.get(name), f"{label}.{name}", inner)
        return value

    def type_schema(self, components: Components) -> Schema:
        schema: Schema = {"type": "object"}
        if self.fields:
            schema["properties"] = {n: f.schema(components) for n, f in self.fields.items()}
        return schema


@frozen(kw_only=True)
class Array(Field):
    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, list):
            raise wrong_type(label, "an array", value)
        return value

    def type_schema(self, components: Components) -> Schema:
        return {"type": "array"}


@frozen(kw_only=True)
class OnlyWith(Field):
    """
    C{field}, allowed only when the boolean C{flag} declared before it is
    true; otherwise a 400 worded C{message}.
    """

    field: Field
    flag: str
    message: str

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        value = self.field.check_value(value, label, checked)
        if not checked.get(self.flag):
            raise invalid_request(self.message, param=label)
        return value

    def type_schema(self, components: Components) -> Schema:
        return self.field.type_schema(components)

    def rules(self, name: str) -> list[Schema]:
        return [requires_true(name, self.flag)]


@frozen(kw_only=True)
class Refused(Field):
    """
    A field of the API this server does not support: any value but
    C{null} is a 400 worded C{message}.
    """

    message: str
    code: str = "unsupported_parameter"

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        raise invalid_request(self.message, param=label, code=self.code)

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        return {"type": "null", "description": self.message}


# Bodies


class Body:
    """
    The fields of one request body, checked in the order they are given
    (so that of several faults the API's first is the one reported), and
    the body's schema, named C{name} in the document's components.

    @ivar form: a C{multipart/form-data} body, whose fields are never null.
    """

    def __init__(
        self,
        name: str,
        fields: dict[str, Field],
        *,
        form: bool = False,
        description: Optional[str] = None,
        rules: Callable[[], list[Schema]] = list,
    ) -> None:
        self.name = name
        self.fields = dict(fields)
        self.form = form
        self.description = description
        self._items = tuple(self.fields.items())
        self._extra_rules = rules
        # What validate needs of each field, looked up once: most fields
        # of a request are absent, and each costs a lookup and a test.
        self._checks = tuple(
            (name, declared.required, declared.default, declared.check_value) for name, declared in self._items
        )

    def forwarded(self, body: dict, checked: dict) -> dict:
        """
        A copy of C{body} for the worker, every field passed through, but
        each integer as it was checked: C{2.0} or C{1e2} pass the check as
        integers and must reach the worker as such (a worker checking its
        own request refuses a float), and a saturated bound as its limit.
        """
        data = dict(body)
        for name, given in body.items():
            value = checked.get(name)
            if type(value) is int and given is not None and (type(given) is not int or given != value):
                data[name] = value
        return data

    def validate(self, body: dict) -> dict:
        """
        @return: each declared field's value (its default when absent).
        @raise OpenAIError: a 400 for the first field at fault.
        """
        checked: dict = {}
        get = body.get
        for name, required, default, check_value in self._checks:
            value = get(name)
            if value is None:
                if required:
                    raise missing(name)
                checked[name] = default
            else:
                checked[name] = check_value(value, name, checked)
        return checked

    def schema(self, components: Components) -> Schema:
        schema: Schema = {"type": "object"}
        if self.description:
            schema["description"] = self.description
        required = [name for name, declared in self._items if declared.required]
        if required:
            schema["required"] = required
        schema["properties"] = {
            name: declared.schema(components, with_null=not self.form) for name, declared in self._items
        }
        rules = [rule for name, declared in self._items for rule in declared.rules(name)]
        rules += self._extra_rules()
        if rules:
            schema["allOf"] = rules
        return schema
