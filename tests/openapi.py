"""
Check JSON bodies against the official OpenAI OpenAPI document.

The document is C{tests/data/openai-openapi.json} (MIT licensed, see
C{tests/data/openai-openapi.LICENSE}), found relative to this module so the
suite runs from a plain clone.  It is parsed once per process.

Usage::

    from tests.openapi import response_schema, validate

    validate("ErrorResponse", body)  # AssertionError if invalid
    name = response_schema("/chat/completions", "post",
                           content_type="text/event-stream")
    validate(name, chunk)  # CreateChatCompletionStreamResponse

OpenAPI 3.1 versus JSON Schema 2020-12
======================================

The component schemas are checked with L{jsonschema.Draft202012Validator}
and a L{referencing.Registry} holding the whole document, so
C{$ref: "#/components/schemas/..."} resolves.  Unknown keywords are
ignored by that validator, so the OpenAPI annotations (C{discriminator},
C{example}, C{x-oaiMeta}, C{x-stainless-const}, C{deprecated},
C{format: unixtime}, ...) are harmless; C{format} is not asserted.

The one keyword that I{changes} the meaning of a schema is OpenAPI 3.0's
C{nullable: true}, which this 3.1 document still uses in about a hundred
places, some of which matter to us (C{choices[].finish_reason},
C{choices[].logprobs} and C{usage} of C{CreateChatCompletionStreamResponse};
most optional parameters of C{CreateChatCompletionRequest} and
C{CreateImageRequest}; C{StopConfiguration}).  JSON Schema ignores it, which
would wrongly reject C{null} there.  Before building the registry,
L{_to_json_schema} therefore rewrites every schema node carrying
C{nullable: true} into C{{"anyOf": [<the node without nullable>,
{"type": "null"}]}}.  Wrapping, rather than adding C{"null"} to C{type},
keeps C{enum}, C{$ref} and C{oneOf} siblings right (C{null} is accepted by a
nullable C{enum}, and by a C{oneOf} with several nullable branches).
C{nullable: false} is dropped.  The rewrite only walks real subschema
positions (C{properties}, C{items}, C{allOf}, ...), so a property I{named}
C{nullable} and the contents of C{example} are left alone.

Quirks of the document itself (validation is faithful to them)
==============================================================

  - C{Embedding.embedding} is only an array of numbers: the base64 string
    returned for C{encoding_format: "base64"} does not validate.
  - C{CreateChatCompletionRequest} rejects C{"top_logprobs": null} (a
    non-nullable copy of it comes in through C{allOf}).
  - C{Response} rejects C{"user": null}; its own C{example} is invalid
    (that, plus C{output_text} parts lacking the required C{logprobs}).
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "SPEC_PATH",
    "load_spec",
    "validator_for",
    "validate",
    "response_schema",
    "request_schema",
]

SPEC_PATH = Path(__file__).resolve().parent / "data" / "openai-openapi.json"

# The URI under which the whole document is registered; every
# "#/components/schemas/..." reference inside it resolves against it.
_SPEC_URI = "urn:hfendpoint:openai-openapi"

# JSON Schema 2020-12 keywords whose values are subschemas.
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_SINGLE = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "contentSchema",
    }
)

_MAX_MESSAGE = 600


@lru_cache(maxsize=None)
def load_spec() -> dict[str, Any]:
    """
    The OpenAPI document, parsed once per process.  Treat it as read-only.
    """
    with SPEC_PATH.open("rb") as f:
        return json.load(f)


def _to_json_schema(node: Any) -> Any:
    """
    Return a copy of the schema C{node} with OpenAPI C{nullable} turned
    into JSON Schema (see the module docstring).  Non-dict nodes (boolean
    schemas) are returned unchanged.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_to_json_schema(sub) for sub in value]
        elif key in _SCHEMA_SINGLE:
            if isinstance(value, list):  # pre-2020 tuple form of "items"
                out[key] = [_to_json_schema(sub) for sub in value]
            else:
                out[key] = _to_json_schema(value)
        else:
            out[key] = value
    nullable = out.get("nullable")
    if isinstance(nullable, bool):
        del out["nullable"]
        if nullable:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@lru_cache(maxsize=None)
def _registry() -> Registry:
    spec = load_spec()
    components = dict(spec.get("components", {}))
    components["schemas"] = {
        name: _to_json_schema(schema)
        for name, schema in components.get("schemas", {}).items()
    }
    document = dict(spec, components=components)
    return Registry().with_resource(_SPEC_URI, DRAFT202012.create_resource(document))


def _pointer_token(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


@lru_cache(maxsize=None)
def validator_for(schema_name: str) -> Draft202012Validator:
    """
    A (cached) validator for C{#/components/schemas/<schema_name>}.

    @raise KeyError: if the document has no such schema.
    """
    schemas = load_spec()["components"]["schemas"]
    if schema_name not in schemas:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_PATH.name}")
    ref = f"{_SPEC_URI}#/components/schemas/{_pointer_token(schema_name)}"
    return Draft202012Validator({"$ref": ref}, registry=_registry())


def _shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def _type_mismatch(error: ValidationError) -> bool:
    """
    Whether C{error} only says the instance has the wrong JSON type: a root
    C{type} failure, or a union of nothing but such failures (as produced
    for a C{nullable} node).
    """
    if error.relative_path:
        return False
    if error.validator == "type":
        return True
    return error.validator in ("anyOf", "oneOf") and bool(error.context) and all(
        _type_mismatch(sub) for sub in error.context
    )


def _plausible_branches(error: ValidationError) -> list[list[ValidationError]]:
    """
    The sub-errors of an C{anyOf}/C{oneOf} failure grouped by branch, without
    the branches that were never meant to match: those whose discriminator
    property (C{discriminator.propertyName}, else C{"type"}) has the wrong
    C{enum}/C{const} value, and those whose root type differs (such as the
    C{{"type": "null"}} arm added for C{nullable}; see L{_type_mismatch}).
    Empty if no branch is plausible: the union itself is then the best
    error to report.
    """
    discriminator = "type"
    if isinstance(error.schema, dict):
        spec = error.schema.get("discriminator")
        if isinstance(spec, dict):
            discriminator = spec.get("propertyName", discriminator)
    branches: dict[Any, list[ValidationError]] = defaultdict(list)
    for sub in error.context:
        branch = sub.relative_schema_path[0] if sub.relative_schema_path else None
        branches[branch].append(sub)

    def wrong(sub: ValidationError) -> bool:
        path = list(sub.relative_path)
        if path == [discriminator] and sub.validator in ("enum", "const"):
            return True
        return _type_mismatch(sub)

    return [subs for subs in branches.values() if not any(wrong(s) for s in subs)]


def _most_relevant(errors: Any) -> ValidationError | None:
    """
    L{jsonschema.exceptions.best_match}, but descending into C{anyOf}/C{oneOf}
    only through plausible branches (see L{_plausible_branches}), so that a
    message for a discriminated union talks about the branch the instance
    was meant to be, not about the deepest mismatch in some other branch.
    """
    best = max(errors, key=relevance, default=None)
    while best is not None and best.context:
        branches = _plausible_branches(best)
        if not branches:
            break
        candidates = [(i, sub) for i, subs in enumerate(branches) for sub in subs]
        smallest = heapq.nsmallest(2, candidates, key=lambda c: relevance(c[1]))
        # Like best_match: equally relevant errors in *different* branches
        # mean we cannot tell which branch was meant, so stop at the union.
        if (
            len(smallest) == 2
            and smallest[0][0] != smallest[1][0]
            and relevance(smallest[0][1]) == relevance(smallest[1][1])
        ):
            break
        best = smallest[0][1]
    return best


def validate(schema_name: str, instance: Any) -> None:
    """
    Validate C{instance} against C{#/components/schemas/<schema_name>}.

    @raise AssertionError: if it is invalid; the message names the schema,
        the most relevant error (L{jsonschema.exceptions.best_match}'s
        heuristic, made discriminator-aware by L{_most_relevant}), the
        JSON path of the offending value and the schema path that rejected
        it.
    """
    validator = validator_for(schema_name)
    error = _most_relevant(validator.iter_errors(instance))
    if error is None:
        return
    schema_path = "/".join(str(p) for p in error.absolute_schema_path)
    raise AssertionError(
        f"body is not a valid {schema_name}: {_shorten(error.message)}\n"
        f"  at: {error.json_path}\n"
        f"  schema path: {schema_path}\n"
        f"  offending value: {_shorten(repr(error.instance), 300)}"
    )


def _resolve_local(obj: Any) -> Any:
    """Follow a local C{{"$ref": "#/..."}} within the document (not schemas)."""
    seen = set()
    while isinstance(obj, dict) and "$ref" in obj:
        ref = obj["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"cannot resolve {ref!r}")
        seen.add(ref)
        obj = load_spec()
        for token in ref[2:].split("/"):
            obj = obj[token.replace("~1", "/").replace("~0", "~")]
    return obj


def _schema_name(schema: Any, where: str) -> str:
    prefix = "#/components/schemas/"
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith(prefix):
        raise ValueError(f"{where}: schema is not a named component: {schema!r}")
    return ref[len(prefix) :].replace("~1", "/").replace("~0", "~")


def _operation(path: str, method: str) -> dict[str, Any]:
    paths = load_spec()["paths"]
    try:
        item = paths[path]
    except KeyError:
        raise KeyError(f"no path {path!r} in the OpenAPI document") from None
    try:
        return item[method.lower()]
    except KeyError:
        raise KeyError(f"no {method.upper()} {path} in the OpenAPI document") from None


def response_schema(
    path: str,
    method: str,
    status: str | int = "200",
    content_type: str = "application/json",
) -> str:
    """
    The name of the component schema the spec gives for a response, e.g.
    C{response_schema("/chat/completions", "post")} is
    C{"CreateChatCompletionResponse"} and with
    C{content_type="text/event-stream"} it is
    C{"CreateChatCompletionStreamResponse"} (the schema of one SSE
    C{data:} payload).

    @raise KeyError: if the operation, status or content type is not in
        the spec.
    @raise ValueError: if the schema there is inline rather than a
        C{$ref} to C{#/components/schemas/...}.
    """
    where = f"{method.upper()} {path} -> {status} {content_type}"
    responses = _operation(path, method).get("responses", {})
    try:
        response = _resolve_local(responses[str(status)])
        schema = response["content"][content_type]["schema"]
    except KeyError:
        raise KeyError(f"no response schema for {where}") from None
    return _schema_name(schema, where)


def request_schema(
    path: str, method: str, content_type: str = "application/json"
) -> str:
    """
    The name of the component schema of an operation's request body, e.g.
    C{request_schema("/embeddings", "post")} is C{"CreateEmbeddingRequest"}.
    """
    where = f"{method.upper()} {path} request {content_type}"
    try:
        body = _resolve_local(_operation(path, method)["requestBody"])
        schema = body["content"][content_type]["schema"]
    except KeyError:
        raise KeyError(f"no request schema for {where}") from None
    return _schema_name(schema, where)
