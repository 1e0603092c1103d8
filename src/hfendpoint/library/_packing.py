"""
What a reply becomes on the wire, made cheap for the two replies that are
big: an embeddings reply's vectors and an image's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import msgpack

#: A C{bytes} value of a reply's data at least this big (an image) is kept
#: apart from the packed message instead of copied into it; the writer
#: writes such a message one at a time, in pieces.
BIG_MESSAGE = 256 * 1024


def pack_parts(message: dict[str, Any]) -> list[bytes]:
    """
    A message as MessagePack, in parts: the big C{bytes} values of its
    C{data} map (an image) stay apart as they are instead of being copied
    into the packed message, twice, by msgpack. Joined, the parts are
    exactly what C{msgpack.packb} makes.
    """
    data = message.get("data")
    if type(data) is dict:
        for value in data.values():
            if type(value) is bytes and len(value) >= BIG_MESSAGE:
                return _pack_apart(message)
    return [msgpack.packb(message, use_bin_type=True)]


def _pack_apart(message: dict[str, Any]) -> list[bytes]:
    parts: list[bytes] = []
    head = [_packer.pack_map_header(len(message))]
    for key, value in message.items():
        head.append(_packer.pack(key))
        if key != "data":
            head.append(_packer.pack(value))
            continue
        head.append(_packer.pack_map_header(len(value)))
        for name, item in value.items():
            head.append(_packer.pack(name))
            if type(item) is bytes and len(item) >= BIG_MESSAGE:
                # bin 32: the type byte, then the length, big-endian.
                head.append(b"\xc6" + len(item).to_bytes(4, "big"))
                parts += [b"".join(head), item]
                head = []
            else:
                head.append(_packer.pack(item))
    parts.append(b"".join(head))
    return parts


_packer = msgpack.Packer(use_bin_type=True)


def float32_vectors(value: Any) -> Any:
    """
    An C{embeddings} reply with each vector given as a list of floats
    turned into little-endian float32 bytes: a few microseconds in C here
    instead of packing, and the gateway unpacking, a MessagePack float per
    dimension. Anything unexpected is left as it is, for the gateway to
    judge.
    """
    if not isinstance(value, Mapping) or not isinstance(value.get("embeddings"), list):
        return value
    packed = []
    for vector in value["embeddings"]:
        if isinstance(vector, (list, tuple)):
            try:
                vector = struct.pack("<%df" % len(vector), *vector)
            except (struct.error, TypeError, OverflowError):
                return value
        packed.append(vector)
    return {**value, "embeddings": packed}
