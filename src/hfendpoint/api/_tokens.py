"""
C{POST /tokenize} and C{POST /detokenize}, in the two shapes clients of
local model servers send: vLLM's (C{{"model", "prompt"}} or
C{{"model", "messages"}} answered C{{"count", "max_model_len", "tokens"}};
C{{"model", "tokens"}} answered C{{"prompt"}}) and llama.cpp's server's
(C{{"content"}} answered C{{"tokens"}}; C{{"tokens"}} answered
C{{"content"}}). Each is answered in the shape it was asked in.

Served by the worker's C{tokenize} call and its optional C{detokenize}
call, which is sent only to a worker whose handshake lists it.
"""

from __future__ import annotations

from typing import Any, Optional

from attrs import frozen

from hfendpoint.api._chat_request import Messages
from hfendpoint.api._choices import prompt_text
from hfendpoint.api._contract import Body, Components, Field, Schema, String
from hfendpoint.api._endpoint import Context, Endpoint, Reply
from hfendpoint.api._wording import missing, wrong_type
from hfendpoint.errors import invalid_request, unsupported_endpoint, worker_failed
from hfendpoint.wire import DETOKENIZE, TOKENIZE

MAX_TOKEN_ID = 2**32 - 1

#: The fields that carry the text, one of which a request gives.
TEXTS = ("prompt", "messages", "content")


def _one_text() -> list[Schema]:
    given = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in TEXTS]
    return [{"oneOf": given}]


TOKENIZE_REQUEST = Body(
    "TokenizeRequest",
    {
        "model": String(),
        "prompt": String(description="vLLM's shape: answered with `count`, `max_model_len` and `tokens`."),
        "messages": Messages(
            required=False,
            description="vLLM's shape: the messages' text is tokenized, as the gateway counts a prompt.",
        ),
        "content": String(description="llama.cpp server's shape: answered with `tokens` alone."),
    },
    description="Exactly one of `prompt`, `messages` and `content`.",
    rules=_one_text,
)


@frozen(kw_only=True)
class TokenIds(Field):
    """
    A list of token ids, C{2755930.0} taken as C{2755930} (a JSON Schema
    integer), each as the protocol carries it: 0 to 2^32 - 1.
    """

    required: bool = True

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not isinstance(value, list):
            raise wrong_type(label, "an array", value)
        ids = []
        for i, token in enumerate(value):
            if type(token) is float and token.is_integer():
                token = int(token)
            if type(token) is not int or not 0 <= token <= MAX_TOKEN_ID:
                raise invalid_request(
                    f"Invalid '{label}[{i}]': token ids must be integers from 0 to {MAX_TOKEN_ID}.",
                    param=f"{label}[{i}]",
                    code="invalid_value",
                )
            ids.append(token)
        return ids

    def type_schema(self, components: Components) -> Schema:
        return {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}}


DETOKENIZE_REQUEST = Body(
    "DetokenizeRequest",
    {
        "model": String(description="Given (vLLM's shape), the answer is `prompt`; else (llama.cpp's) `content`."),
        "tokens": TokenIds(),
    },
)


def _text_of(checked: dict) -> tuple[str, str]:
    """
    @return: the field the text came in, and the text.
    @raise OpenAIError: a 400 unless exactly one of L{TEXTS} is given.
    """
    given = [name for name in TEXTS if checked[name] is not None]
    if not given:
        raise missing("prompt")
    if len(given) > 1:
        raise invalid_request(
            f"Give only one of 'prompt', 'messages' and 'content'; got '{given[0]}' and '{given[1]}'.",
            param=given[1],
            code="invalid_value",
        )
    name = given[0]
    return name, prompt_text(checked[name]) if name == "messages" else checked[name]


async def tokenize(context: Context, body: dict, checked: dict) -> Reply:
    name, text = _text_of(checked)
    context.require(TOKENIZE)
    reply = await context.client.call(TOKENIZE, {"input": [text]})
    rows = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(rows, list) or len(rows) != 1 or not isinstance(rows[0], list):
        raise worker_failed("The worker's tokenize reply does not have one token list for the text.")
    tokens = rows[0]
    if name == "content":
        return {"tokens": tokens}
    limit = reply.get("max_model_len")
    return {
        "count": len(tokens),
        "max_model_len": limit if type(limit) is int else None,
        "tokens": tokens,
    }


def _require_listed(context: Context, call: str) -> None:
    """
    Fail at once unless the worker's handshake lists C{call}: an optional
    call of ours is never tried on a worker that did not say it serves it
    (an old one would leave it unanswered).
    """
    calls: Optional[frozenset] = context.client.info.calls
    if calls is None or call not in calls:
        raise unsupported_endpoint(call)


async def detokenize(context: Context, body: dict, checked: dict) -> Reply:
    _require_listed(context, DETOKENIZE)
    reply = await context.client.call(DETOKENIZE, {"tokens": [checked["tokens"]]})
    texts = reply.get("texts") if isinstance(reply, dict) else None
    if not isinstance(texts, list) or len(texts) != 1 or not isinstance(texts[0], str):
        raise worker_failed("The worker's detokenize reply does not have one text for the token list.")
    if checked["model"] is not None:
        return {"prompt": texts[0]}
    return {"content": texts[0]}


_IDS: Schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}

SCHEMAS: dict[str, Schema] = {
    "TokenizeResponse": {
        "description": "vLLM's shape for `prompt` or `messages`, llama.cpp server's for `content`.",
        "anyOf": [
            {
                "type": "object",
                "required": ["count", "max_model_len", "tokens"],
                "properties": {
                    "count": {"type": "integer", "minimum": 0},
                    "max_model_len": {"type": ["integer", "null"]},
                    "tokens": _IDS,
                },
            },
            {"type": "object", "required": ["tokens"], "properties": {"tokens": _IDS}},
        ],
    },
    "DetokenizeResponse": {
        "description": "`prompt` when the request named a model (vLLM's shape), else `content` (llama.cpp's).",
        "oneOf": [
            {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
            {"type": "object", "required": ["content"], "properties": {"content": {"type": "string"}}},
        ],
    },
}

ENDPOINTS = (
    Endpoint(
        path="/tokenize",
        operation_id="tokenize",
        summary="Token ids of a text, by the worker's tokenizer (vLLM's and llama.cpp server's shapes)",
        body=TOKENIZE_REQUEST,
        serve=tokenize,
        response="TokenizeResponse",
    ),
    Endpoint(
        path="/detokenize",
        operation_id="detokenize",
        summary="The text of token ids, by the worker's optional detokenize call",
        body=DETOKENIZE_REQUEST,
        serve=detokenize,
        response="DetokenizeResponse",
    ),
)
