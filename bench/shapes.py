"""
What the benchmark sends and what the null worker answers, shared by the
null worker, the load client and the runner so that every side agrees.

Conventions of the null worker (see bench/README.md):

  - chat: ``bench_tokens`` (default 8) replies of ``TOKEN_TEXT`` each, then
    a final ``finish_reason: stop`` reply carrying usage; with
    ``bench_interval`` > 0 seconds, the first token comes at once and each
    next one at the next step of a clock ticking every ``bench_interval``
    seconds, shared by all the streams: a model decoding its streams as one
    batch, one token for each at every step.
  - embeddings: a token id ``DIM_BASE + d`` at the head of an input asks for
    a vector of d floats (default ``DEFAULT_DIMS``), fixed (seeded) and
    L2-normalised, sent as a list of floats as the original protocol has it;
    ``BIN_BASE + d`` asks for the same vector as ``bin`` of little-endian
    float32 (our protocol extension).
  - images: ``size = WxH`` asks for a PNG of exactly W * H bytes
    (2048x2048 = 4 MiB): a valid PNG whose bulk is an ancillary chunk of
    incompressible bytes.
"""

from __future__ import annotations

import json
import math
import random
import struct
import zlib
from functools import lru_cache

DIM_BASE = 1_000_000
BIN_BASE = 2_000_000
DEFAULT_DIMS = 384
DEFAULT_CHAT_TOKENS = 8
TOKEN_TEXT = " tok"
MODEL = "bench-null"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@lru_cache(maxsize=64)
def fixed_vector(dims: int) -> tuple[float, ...]:
    """
    A fixed unit vector of C{dims} floats that look like a real embedding's
    (so that their JSON text is as long as a real one's).
    """
    generator = random.Random(dims)
    values = [generator.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@lru_cache(maxsize=8)
def make_png(size: int) -> bytes:
    """
    A valid 1x1 PNG padded with a private ancillary chunk to exactly C{size}
    bytes (at least the bare image, 69 bytes).
    """
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\x00\x80\x80\x80"))
    end = _chunk(b"IEND", b"")
    bare = len(PNG_SIGNATURE) + len(header) + len(idat) + len(end)
    pad = size - bare - 12
    if pad < 0:
        return PNG_SIGNATURE + header + idat + end
    filler = random.Random(size).randbytes(pad)
    return PNG_SIGNATURE + header + _chunk(b"beNc", filler) + idat + end


# Request bodies (HTTP) and the matching worker data (msgpack floor)

MESSAGES = [{"role": "user", "content": "Say something."}]


def chat_data(tokens: int, interval: float = 0.0, stream: bool = False) -> dict:
    data: dict = {"model": MODEL, "messages": MESSAGES, "stream": stream, "bench_tokens": tokens}
    if interval:
        data["bench_interval"] = interval
    return data


@lru_cache(maxsize=64)
def fixed_vector_bytes(dims: int) -> bytes:
    return struct.pack(f"<{dims}f", *fixed_vector(dims))


def embeddings_tokens(inputs: int, tokens: int, dims: int, binary: bool = False) -> list[list[int]]:
    head = (BIN_BASE if binary else DIM_BASE) + dims
    return [[head] + [1000 + (i + j) % 5000 for j in range(tokens - 1)] for i in range(inputs)]


def embeddings_data(inputs: int, tokens: int, dims: int, encoding: str = "float", binary: bool = False) -> dict:
    return {"model": MODEL, "input": embeddings_tokens(inputs, tokens, dims, binary), "encoding_format": encoding}


def image_data(nbytes: int, response_format: str) -> dict:
    width = 2048 if nbytes % 2048 == 0 else 1
    height = nbytes // width
    return {"model": MODEL, "prompt": "bench", "size": f"{width}x{height}", "response_format": response_format}


def body(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
