"""
The legacy completions request, declared: the prompt, C{best_of} (which
must equal C{n} here) and every field the API checks, in its order.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from hfendpoint.api._contract import Body, Boolean, Components, Field, Integer, Schema, String
from hfendpoint.api._wording import EMPTY_ARRAY, invalid_value, is_int, wrong_type
from hfendpoint.api._sampling import SAMPLING, LogitBias, Stop, StreamOptions
from hfendpoint.errors import invalid_request

#: What the API does without C{max_tokens}.
DEFAULT_MAX_TOKENS = 16
DEFAULT_N = 1
MAX_LOGPROBS = 5
MAX_BEST_OF = 20


def _token_id(value: Any) -> bool:
    """
    Whether C{value} is written as a token id: an integer, C{2755930.0}
    included (a JSON Schema integer), so that such a prompt is told it is
    a token-id prompt rather than of the wrong type.
    """
    return is_int(value) or (type(value) is float and value.is_integer())


@frozen(kw_only=True)
class Prompt(Field):
    """
    C{prompt} as a list of texts; token ids are refused.
    """

    required: bool = True
    description: str = "Token-id prompts are refused with a 400."

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise wrong_type(label, "a string or an array of strings", value)
        if not value:
            raise invalid_value(label, EMPTY_ARRAY)
        if all(isinstance(p, str) for p in value):
            return value
        if all(map(_token_id, value)) or all(isinstance(p, list) and all(map(_token_id, p)) for p in value):
            raise invalid_request(
                "Invalid 'prompt': token-id prompts are not supported by this server; "
                "send the prompt as a string or an array of strings.",
                param=label,
                code="unsupported_value",
            )
        raise wrong_type(label, "a string or an array of strings", value)

    def type_schema(self, components: Components) -> Schema:
        return {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]}


@frozen(kw_only=True)
class BestOf(Field):
    """
    C{best_of}, which must equal C{n}: every completion made is returned.
    """

    description: str = "Must equal `n`: every completion generated is returned."
    count: Integer = Integer(minimum=0, maximum=MAX_BEST_OF)

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        value = self.count.check_value(value, label, checked)
        n = checked["n"]
        if value != n:
            raise invalid_request(
                f"Invalid 'best_of': this server returns every completion it generates, "
                f"so 'best_of' must equal 'n' ({n}) or be left out; got {value}.",
                param=label,
                code="unsupported_value",
            )
        return value

    def type_schema(self, components: Components) -> Schema:
        return self.count.type_schema(components)

    def rules(self, name: str) -> list[Schema]:
        def then(k: int) -> Schema:
            if k == DEFAULT_N:
                return {"properties": {"n": {"enum": [k, None]}}}
            return {"required": ["n"], "properties": {"n": {"const": k}}}

        return [
            {"if": {"required": [name], "properties": {name: {"const": k}}}, "then": then(k)}
            for k in range(self.count.minimum or 0, (self.count.maximum or 0) + 1)
        ]


COMPLETION_REQUEST = Body(
    "CreateCompletionRequest",
    {
        "model": String(),
        "prompt": Prompt(),
        "suffix": String(description="Accepted and passed to the worker."),
        "stream": Boolean(default=False),
        "echo": Boolean(default=False),
        **SAMPLING,
        "stop": Stop(),
        "logit_bias": LogitBias(),
        "n": Integer(default=DEFAULT_N, minimum=1, maximum=128),
        "best_of": BestOf(),
        "max_tokens": Integer(default=DEFAULT_MAX_TOKENS, minimum=0, saturate=True),
        "logprobs": Integer(minimum=0, maximum=MAX_LOGPROBS),
        "stream_options": StreamOptions(),
    },
)


def completion_request(body: dict, checked: dict) -> dict:
    """
    @return: C{prompts}, C{n}, C{stream}, C{echo}, C{logprobs} (the
        number asked for, or C{None}), C{include_usage}, and C{data}: the
        worker's request without its per-prompt fields.
    """
    data = COMPLETION_REQUEST.forwarded(body, checked)
    data["stream"] = checked["stream"]
    data["n"] = checked["n"]
    data["max_tokens"] = checked["max_tokens"]
    logprobs = checked["logprobs"]
    if logprobs is not None:
        data["logprobs"] = logprobs
        if "top_logprobs" not in data:
            # A chat worker's name for the number of alternatives.
            data["top_logprobs"] = logprobs
    return {
        "prompts": checked["prompt"],
        "n": checked["n"],
        "stream": checked["stream"],
        "echo": checked["echo"],
        "logprobs": logprobs,
        "include_usage": checked["stream_options"],
        "data": data,
    }


def read_request(body: dict) -> dict:
    return completion_request(body, COMPLETION_REQUEST.validate(body))
