"""
The demo worker: what the gateway runs when it is given no worker.

It answers every call of the protocol without a model, so that the gateway
can be tried, tested and benchmarked with nothing installed but hfendpoint
itself. Every answer but C{detokenize}'s is deterministic (the same
request gets the same bytes), which is what tests want, and cheap, so
that a benchmark measures the gateway rather than the worker:

  - C{chat_completions} says C{"Hello! You said: ..."}, one token at a time;
  - C{tokenize} cuts words and punctuation and hashes each piece to an id;
  - C{detokenize} turns ids back into the pieces they were cut from, as far
    as a hash allows (see L{detokenize});
  - C{embeddings} sums a pseudo-random vector per token and normalises it;
  - C{images_generations} and C{images_editions} paint gradients as PNGs.

It is written on the worker library like any other worker (v0.3 style), and
doubles as an example of one. Run it as C{python -m hfendpoint.workers.demo};
C{HFENDPOINT_DEMO_DIM} sets the embedding dimension (384 by default).
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import os
import random
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from typing import Any

import hfendpoint
from hfendpoint import WorkerError
from hfendpoint.workers._demo_images import (
    PNG_SIGNATURE,
    horizontal_gradient,
    palette,
    vertical_gradient,
)
from hfendpoint.workers._tf_request import token_limit

MODEL = "hfendpoint-demo"
DEFAULT_DIMENSION = 384
FIRST_TOKEN_ID = 1000
VOCABULARY_SIZE = 50000
MAX_SIDE = 4096
MAX_IMAGES = 10

# A token is a word or a single punctuation sign; a streamed chunk is the
# same token with the spaces before it, so that chunks concatenate back to
# the reply and count exactly as the tokenizer counts.
TOKEN = re.compile(r"\w+|[^\w\s]")
CHUNK = re.compile(r"\s*(?:\w+|[^\w\s])")
WORD = re.compile(r"\w")


def token_id(piece: str) -> int:
    """
    A stable id for a piece of text: a hash, since the demo has no
    vocabulary to look it up in.
    """
    return zlib.crc32(piece.encode("utf-8")) % VOCABULARY_SIZE + FIRST_TOKEN_ID


#: The longest piece remembered for L{detokenize}, and how many pieces
#: are remembered at most: the memory stays bounded whatever clients send.
MAX_PIECE = 64
MAX_PIECES = 1 << 17

#: The id of each piece seen, and the piece each id was first seen for.
_ids: dict[str, int] = {}
_pieces: dict[int, str] = {}


def learn(piece: str) -> int:
    """
    The id of a piece not seen before, remembered both ways: a hash cannot
    be turned back, so detokenizing needs the pieces themselves. Of two
    pieces with the same id, the first keeps it.
    """
    ident = token_id(piece)
    if len(piece) <= MAX_PIECE and len(_ids) < MAX_PIECES:
        _ids[piece] = ident
        _pieces.setdefault(ident, piece)
    return ident


def tokenize_text(text: str) -> list[int]:
    # Ids are never 0, so a miss is the only falsy lookup.
    ids = _ids
    return [ids.get(piece) or learn(piece) for piece in TOKEN.findall(text)]


@hfendpoint.handler("tokenize")
def tokenize(data: dict[str, Any]) -> dict[str, Any]:
    """
    Token ids for each text: the gateway needs them before C{embeddings},
    and clients count them for usage.
    """
    texts = data.get("input")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise WorkerError("input must be a list of strings")
    return {"tokens": [tokenize_text(text) for text in texts]}


def join_pieces(pieces: list[str]) -> str:
    """
    Text whose tokens are C{pieces}: a word is set off by a space, a
    punctuation sign follows what comes before it. C{tokenize} drops the
    spaces of a text, so this is the original up to spacing: tokenized
    again, it gives back the same ids.
    """
    parts: list[str] = []
    for piece in pieces:
        if parts and WORD.match(piece):
            parts.append(" ")
        parts.append(piece)
    return "".join(parts)


@hfendpoint.handler("detokenize")
def detokenize(data: dict[str, Any]) -> dict[str, Any]:
    """
    Text for each list of token ids, the inverse of C{tokenize}, an
    optional call that old workers lack. The demo's ids are hashes, so it
    only knows the pieces of texts it has cut into tokens itself, in this
    process (C{tokenize}, and the prompts of chat requests it counted): any
    other id, one out of its vocabulary included, is refused by name. This
    is the one call whose answer depends on earlier ones.
    """
    lists = data.get("tokens")
    if not isinstance(lists, list):
        raise WorkerError("tokens must be a list of token id lists")
    texts = []
    for index, tokens in enumerate(lists):
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise WorkerError(f"tokens {index} must be a list of token ids")
        pieces = []
        for token in tokens:
            piece = _pieces.get(token)
            if piece is None:
                raise WorkerError(
                    f"token {token} is unknown: the demo worker can only turn back "
                    "the tokens of texts it has tokenized"
                )
            pieces.append(piece)
        texts.append(join_pieces(pieces))
    return {"texts": texts}


def dimension() -> int:
    """
    The embedding size, read at each call so that a test can change it
    without restarting anything.
    """
    value = os.environ.get("HFENDPOINT_DEMO_DIM", "")
    if not value:
        return DEFAULT_DIMENSION
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise WorkerError(f"HFENDPOINT_DEMO_DIM must be a positive integer, not {value!r}")
    return size


@lru_cache(maxsize=16384)
def token_vector(token: int, size: int) -> tuple[float, ...]:
    """
    A pseudo-random direction per token: seeded by the token alone, so it
    is the same in every run and on every machine.
    """
    generator = random.Random(token)
    return tuple(generator.uniform(-1.0, 1.0) for _ in range(size))


def embed(tokens: Sequence[int], size: int) -> list[float]:
    """
    A bag-of-tokens embedding: texts sharing tokens point in similar
    directions, which is enough for a similarity demo to look sensible.
    """
    total = [0.0] * size
    for token in tokens:
        total = list(map(operator.add, total, token_vector(token, size)))
    norm = math.sqrt(sum(value * value for value in total))
    if norm == 0.0:
        return total
    return [value / norm for value in total]


@hfendpoint.handler("embeddings")
def embeddings(data: dict[str, Any]) -> dict[str, Any]:
    """
    One unit vector per token list; an empty list is refused, since it has
    no direction to normalise.
    """
    inputs = data.get("input")
    if not isinstance(inputs, list):
        raise WorkerError("input must be a list of token lists")
    size = dimension()
    vectors = []
    for index, tokens in enumerate(inputs):
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise WorkerError(f"input {index} must be a list of token ids")
        if not tokens:
            raise WorkerError(f"input {index} is empty")
        vectors.append(embed(tokens, size))
    return {"embeddings": vectors}


def message_text(message: Any) -> str:
    """
    The text of a chat message, whose content may be a string or a list of
    parts of which only the text ones mean anything to the demo.
    """
    if not isinstance(message, dict):
        raise WorkerError("each message must be a map")
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    raise WorkerError("message content must be a string or a list of parts")


def compose_reply(said: str) -> str:
    """
    Spaces are normalised so that the streamed tokens, each with the spaces
    before it, concatenate back to exactly this text.
    """
    said = " ".join(said.split())
    if not said:
        return "Hello! You said nothing."
    return f"Hello! You said: {said}"


@hfendpoint.handler("chat_completions")
async def chat_completions(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """
    Echo the last user message one token per reply, as a streaming model
    does, so that streaming, C{max_tokens} and usage can all be seen at
    work; the counts agree with C{tokenize}.
    """
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise WorkerError("messages must be a list")
    texts = [message_text(message) for message in messages]
    said = next(
        (
            text
            for message, text in zip(reversed(messages), reversed(texts))
            if message.get("role") == "user"
        ),
        "",
    )
    chunks = CHUNK.findall(compose_reply(said))
    finish_reason = "stop"
    limit = token_limit(data)
    if limit is not None and len(chunks) > limit:
        chunks = chunks[:limit]
        finish_reason = "length"
    for chunk in chunks:
        yield {"content": chunk, "finish_reason": None}
    prompt_tokens = sum(len(tokenize_text(text)) for text in texts)
    yield {
        "content": "",
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(chunks),
            "total_tokens": prompt_tokens + len(chunks),
        },
    }


def image_request(data: dict[str, Any]) -> tuple[str, int, int, int]:
    """
    @return: the prompt, the count and the size of an image request.
    """
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise WorkerError("prompt must be a string")
    count = data.get("n", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_IMAGES:
        raise WorkerError(f"n must be an integer from 1 to {MAX_IMAGES}")
    sizes = []
    for key in ("width", "height"):
        value = data.get(key, 1024)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise WorkerError(f"{key} must be an integer from 1 to {MAX_SIDE}")
        sizes.append(value)
    return prompt, count, sizes[0], sizes[1]


def image_seed(prompt: str, index: int, *extra: bytes) -> bytes:
    return b"\x00".join([str(index).encode(), prompt.encode("utf-8"), *extra])


@hfendpoint.handler("images_generations")
async def images_generations(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """
    One PNG per reply, painted off the event loop so that other requests
    go on meanwhile.
    """
    prompt, count, width, height = image_request(data)
    for index in range(count):
        colours = palette(image_seed(prompt, index))
        png = await asyncio.to_thread(vertical_gradient, width, height, colours)
        yield {"png": png}


def require_png(data: dict[str, Any], key: str, required: bool) -> bytes:
    value = data.get(key)
    if value is None and not required:
        return b""
    if not isinstance(value, bytes) or not value.startswith(PNG_SIGNATURE):
        raise WorkerError(f"{key} must be a PNG")
    return value


@hfendpoint.handler("images_editions")
async def images_editions(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """
    Like L{images_generations}, but refuses input that is not a PNG, as a
    real image model would fail to decode it.
    """
    prompt, count, width, height = image_request(data)
    image = require_png(data, "image", required=True)
    mask = require_png(data, "mask", required=False)
    # The input picks the tint too, so that editing another image shows.
    source = zlib.crc32(mask, zlib.crc32(image)).to_bytes(4, "big")
    for index in range(count):
        colours = palette(image_seed(prompt, index, source))
        png = await asyncio.to_thread(horizontal_gradient, width, height, colours)
        yield {"png": png}


def main() -> None:
    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s", level=logging.INFO)
    model = os.environ.get("HFENDPOINT_MODEL_NAME") or MODEL
    logging.getLogger("hfendpoint.workers.demo").info("Demo worker serving model %s", model)
    asyncio.run(hfendpoint.run(model=model))


if __name__ == "__main__":
    main()
