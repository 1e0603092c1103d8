"""
Embeddings: text is tokenized by the worker, token ids are embedded, and
the vectors go back as JSON floats or as base64 of little-endian float32
(what the official client asks for by default).

A worker may send each vector as a list of floats or, to skip the float
round trip, as C{bin} holding little-endian float32 (PROTOCOL.md,
extensions).
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from itertools import chain
from typing import Any, Iterable, Optional

import orjson
from attrs import frozen
from pybase64 import b64encode

from hfendpoint.api._contract import Body, Components, Field, Integer, OneOf, Schema, String
from hfendpoint.api._wording import is_int, wrong_type
from hfendpoint.api._endpoint import Context, Endpoint, Reply
from hfendpoint.backend._batching import EmbeddingBatcher
from hfendpoint.errors import invalid_request, worker_failed
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.web import dumps
from hfendpoint.web._metrics import record_usage

MAX_INPUTS = 2048
MAX_TOKEN_ID = 2**32 - 1
_INTS = {int}
#: The array type code of a 32-bit unsigned integer on this platform.
_UINT32 = next(code for code in "IL" if array(code).itemsize == 4)


@frozen(kw_only=True)
class Input(Field):
    """
    C{input} sorted into texts or token lists, refused as the API refuses
    it.

    @return: (when checked) C{(texts, None)} or C{(None, token_lists)}.
    """

    required: bool = True

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if isinstance(value, str):
            value = [value]
        elif isinstance(value, list) and value and type(value[0]) is not list and all(
            is_int(v) or _integral(v) for v in value
        ):
            value = [value]
        if not isinstance(value, list):
            raise wrong_type(label, "a string or an array", value)
        if not value:
            raise invalid_request("'input' cannot be an empty array.", param=label, code="invalid_value")
        if len(value) > MAX_INPUTS:
            raise invalid_request(
                f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed.",
                param=label,
                code="invalid_value",
            )
        kinds = set(map(type, value))
        if kinds == {str}:
            for i, text in enumerate(value):
                if not text:
                    raise _empty_item(i)
            return value, None
        if kinds == {list}:
            if all(value) and _token_ids(chain.from_iterable(value)):
                return None, value
            value = [_integral_ids(tokens) for tokens in value]
            for i, tokens in enumerate(value):
                if not tokens:
                    raise _empty_item(i)
                if not _token_ids(tokens):
                    raise invalid_request(
                        f"Invalid 'input[{i}]': token ids must be integers from 0 to {MAX_TOKEN_ID}.",
                        param=f"input[{i}]",
                        code="invalid_value",
                    )
            return None, value
        raise invalid_request(
            "'input' must be a string, an array of strings, an array of token ids, "
            "or an array of arrays of token ids.",
            param=label,
            code="invalid_type",
        )

    def type_schema(self, components: Components) -> Schema:
        token_id = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
        text = {"type": "string", "minLength": 1}
        return {
            "anyOf": [
                text,
                {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": text},
                {"type": "array", "minItems": 1, "items": token_id},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_INPUTS,
                    "items": {"type": "array", "minItems": 1, "items": token_id},
                },
            ]
        }


def _token_ids(tokens: Iterable[Any]) -> bool:
    """
    Whether every item is a token id, checked with loops in C: a batch
    holds thousands. type() is exact, so a JSON true or 1.0 is not an id;
    an array of C unsigned ints takes exactly 0 to MAX_TOKEN_ID.
    """
    ids = list(tokens)
    if set(map(type, ids)) != _INTS:
        return False
    try:
        array(_UINT32, ids)
    except OverflowError:
        return False
    return True


def _integral(value: Any) -> bool:
    return type(value) is float and value.is_integer()


def _integral_ids(tokens: list) -> list:
    """
    C{tokens} with each integral float (C{2755930.0}) as its integer: the
    spec's token ids are JSON Schema integers, which such a number is, and
    the worker must receive integers. Only on the slow path: a batch of
    exact integers is never copied.
    """
    if any(type(t) is float for t in tokens):
        return [int(t) if _integral(t) else t for t in tokens]
    return tokens


def _empty_item(index: int) -> Exception:
    return invalid_request(
        f"Invalid 'input[{index}]': empty input. Expected a non-empty string or token array.",
        param=f"input[{index}]",
        code="invalid_value",
    )


EMBEDDING_REQUEST = Body(
    "CreateEmbeddingRequest",
    {
        "model": String(),
        "user": String(),
        "encoding_format": OneOf(choices=("float", "base64"), default="float"),
        "dimensions": Integer(minimum=1),
        "input": Input(),
    },
)


def embedding_request(checked: dict) -> dict:
    """
    @return: C{texts} or C{tokens}, C{encoding} and C{dimensions}.
    """
    texts, tokens = checked["input"]
    return {"texts": texts, "tokens": tokens, "encoding": checked["encoding_format"], "dimensions": checked["dimensions"]}


def read_request(body: dict) -> dict:
    return embedding_request(EMBEDDING_REQUEST.validate(body))


async def tokenize(client: IWorkerClient, texts: list[str]) -> list[list[int]]:
    reply = await client.call("tokenize", {"input": texts})
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or len(tokens) != len(texts):
        raise worker_failed("The worker's tokenize reply does not have one token list per input.")
    for i, row in enumerate(tokens):
        if not isinstance(row, list):
            raise worker_failed(f"The worker could not tokenize input {i}.")
        if not row:
            raise _empty_item(i)
    return tokens


def to_floats(vector: Any, index: int) -> array:
    """
    One vector as float32, from a list of numbers or from float32 bytes.
    """
    if isinstance(vector, (bytes, bytearray)):
        if len(vector) % 4:
            raise worker_failed(f"The worker sent embedding {index} as bytes that are not float32.")
        out = array("f")
        out.frombytes(vector)
        if sys.byteorder != "little":
            out.byteswap()
        return out
    if isinstance(vector, list):
        try:
            # struct converts a list of floats twice as fast as array does.
            out = array("f")
            out.frombytes(struct.pack("%df" % len(vector), *vector))
            return out
        except (struct.error, OverflowError):
            pass
        try:
            return array("f", vector)
        except TypeError:
            pass
    raise worker_failed(f"The worker could not embed input {index}.")


def shorten(vector: array, dimensions: Optional[int]) -> array:
    """
    Truncate to C{dimensions} and renormalise, as Matryoshka models are
    meant to be used.
    """
    if dimensions is None or dimensions >= len(vector):
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut))
    if norm > 0:
        cut = array("f", (x / norm for x in cut))
    return cut


def encode(vector: array, encoding: str, index: int) -> bytes:
    """
    One vector as the JSON value of its C{embedding} field.

    Each float32 is written as the shortest text of its exact value as a
    double, as OpenAI's own responses have it (C{-0.006929283495992422}):
    it reads back bit for bit, and orjson writes it seven times as fast as
    nine digits through C{%}-formatting.
    """
    if encoding == "base64":
        if sys.byteorder != "little":
            vector = array("f", vector)
            vector.byteswap()
        return b'"' + b64encode(vector) + b'"'
    text = orjson.dumps(vector.tolist())
    if b"n" in text:
        # orjson writes NaN and infinities as null.
        raise worker_failed(f"The worker's embedding {index} is not finite.")
    return text


_item_heads: list[bytes] = []


def item_heads(count: int) -> list[bytes]:
    """
    The openings of the first C{count} items of a response, up to their
    C{embedding} value, made once for the life of the process.
    """
    while len(_item_heads) < count:
        i = len(_item_heads)
        _item_heads.append(b'%s{"object":"embedding","index":%d,"embedding":' % (b"," if i else b"", i))
    return _item_heads


_quoted_heads: list[bytes] = []


def quoted_heads(count: int) -> list[bytes]:
    """
    L{item_heads} with the quote that opens a base64 value.
    """
    heads = item_heads(count)
    while len(_quoted_heads) < count:
        _quoted_heads.append(heads[len(_quoted_heads)] + b'"')
    return _quoted_heads


async def create_embeddings(batcher: EmbeddingBatcher, request: dict, model: str) -> bytes:
    """
    @param request: the checked request, its texts already made tokens.
    @return: the response body, written here rather than by the JSON
        encoder because the vectors are most of it.
    """
    tokens = request["tokens"]
    vectors = await batcher.embed(tokens)
    # float32 bytes from the worker are already what base64 wants.
    as_sent = request["encoding"] == "base64" and request["dimensions"] is None and sys.byteorder == "little"
    if as_sent and _all_float32_bytes(vectors):
        return _base64_body(vectors, tokens, model)
    # One list of parts joined once: the vectors are most of the body.
    parts = [b'{"object":"list","data":[']
    heads = item_heads(len(vectors))
    for i, raw in enumerate(vectors):
        if as_sent and type(raw) is bytes and not len(raw) % 4:
            parts += (quoted_heads(i + 1)[i], b64encode(raw), b'"}')
        else:
            parts += (heads[i], encode(shorten(to_floats(raw, i), request["dimensions"]), request["encoding"], i), b"}")
    parts.append(_tail(tokens, model))
    return b"".join(parts)


def _all_float32_bytes(vectors: list[Any]) -> bool:
    return set(map(type, vectors)) == {bytes} and not any(map((4).__rmod__, map(len, vectors)))


def _base64_body(vectors: list[bytes], tokens: list[list[int]], model: str) -> bytes:
    """
    The body when every vector came as float32 bytes and goes out as base64
    (what the official client asks for): built with loops in C.
    """
    n = len(vectors)
    parts = [b""] * (3 * n + 2)
    parts[0] = b'{"object":"list","data":['
    parts[1:-1:3] = quoted_heads(n)[:n]
    parts[2:-1:3] = map(b64encode, vectors)
    parts[3:-1:3] = [b'"}'] * n
    parts[-1] = _tail(tokens, model)
    return b"".join(parts)


def _tail(tokens: list[list[int]], model: str) -> bytes:
    count = sum(map(len, tokens))
    return b'],"model":' + dumps(model) + b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (count, count)


async def serve(context: Context, body: dict, checked: dict) -> Reply:
    request = embedding_request(checked)
    if request["tokens"] is None:
        context.require("tokenize")
    context.require("embeddings")
    if request["tokens"] is None:
        request["tokens"] = await tokenize(context.client, request["texts"])
    record_usage(context.request, {"prompt_tokens": sum(map(len, request["tokens"]))})
    return await create_embeddings(context.batcher, request, context.model)


_COUNT = {"type": "integer", "minimum": 0}

SCHEMAS: dict[str, Schema] = {
    "CreateEmbeddingResponse": {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "index", "embedding"],
                    "properties": {
                        "object": {"const": "embedding"},
                        "index": {"type": "integer"},
                        "embedding": {
                            "description": "Floats, or base64 of little-endian float32.",
                            "anyOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"},
                            ],
                        },
                    },
                },
            },
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {"prompt_tokens": _COUNT, "total_tokens": _COUNT},
            },
        },
    },
}

ENDPOINTS = (
    Endpoint(
        path="/v1/embeddings",
        operation_id="createEmbedding",
        summary="Embeddings",
        body=EMBEDDING_REQUEST,
        serve=serve,
        response="CreateEmbeddingResponse",
    ),
)
