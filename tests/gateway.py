"""
Support for integration tests: the whole gateway in memory
(L{start_memory_gateway}, on L{hfendpoint.testing.MemoryGateway}), or a
real L{GatewayService} on loopback with a real worker process behind it, HTTP clients that leave the reactor clean,
the official C{openai} client run in a thread, and small worker scripts
written to a temporary directory.

Trial checks after every test that nothing is left in the reactor (no
listening port, no connection, no process, no timer), so each helper
registers the cleanup that undoes it, in the order that makes it clean:
cleanups run last-registered-first, so HTTP clients close their
connections before the gateway stops, and the gateway's stop fires only
once the worker process is gone.
"""

from __future__ import annotations

import base64
from array import array
import math
import os
import random
import re
import stat
import struct
import sys
import textwrap
import zlib
from typing import Any, Callable, Optional, Sequence

from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks, returnValue
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from hfendpoint.service import GatewayConfig, GatewayService
from hfendpoint.testing import MemoryGateway

__all__ = [
    "PNG_SIGNATURE",
    "start_gateway",
    "start_memory_gateway",
    "http_client",
    "openai_client",
    "in_thread",
    "write_worker",
    "parse_sse",
    "png_size",
    "tiny_png",
    "decode_float32",
    "demo_tokens",
    "demo_embedding",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@inlineCallbacks
def start_gateway(
    testCase: TestCase,
    worker_command: Optional[Sequence[str]] = None,
    reactor: Any = None,
    wait_ready: bool = True,
    **kwargs: Any,
) -> Any:
    """
    Start a gateway listening on an ephemeral loopback port, with the demo
    worker (C{worker_command} C{None}) or the given command, and wait until
    it listens and (unless C{wait_ready} is false) its worker is ready.

    The gateway is stopped at the end of the test; the cleanup waits for
    the worker process to exit.

    @param kwargs: more keyword arguments for L{GatewayService}
        (C{max_body_size}, ...).
    @return: a Deferred firing with C{(base_url, gateway)}, C{base_url}
        being C{"http://127.0.0.1:PORT"} (no trailing slash).
    """
    reactor = reactor or _global_reactor
    kwargs.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
    # A short stop timeout: a test worker that ignores EOF still gets
    # TERM soon, and a test never hangs on a stuck worker.
    kwargs.setdefault("stop_timeout", 5.0)
    gateway = GatewayService(reactor, GatewayConfig(worker_command=worker_command, **kwargs))
    gateway.startService()
    testCase.addCleanup(gateway.stopService)
    yield gateway.whenListening()
    if wait_ready:
        yield gateway.whenReady()
    port = gateway.ports[0].getHost().port
    returnValue((f"http://127.0.0.1:{port}", gateway))


def start_memory_gateway(
    testCase: TestCase,
    handlers: Optional[dict[str, Callable[[Any], Any]]] = None,
    wait_ready: bool = True,
    **kwargs: Any,
) -> MemoryGateway:
    """
    Start the whole gateway in memory (L{MemoryGateway}: the demo worker's
    calls unless C{handlers} are given), stopped at the end of the test.

    @param kwargs: keyword arguments for L{MemoryGateway} (C{worker}) and
        for L{GatewayService}.
    """
    memory = MemoryGateway(handlers, **kwargs)
    memory.start()
    testCase.addCleanup(_stop_memory_gateway, testCase, memory)
    if wait_ready:
        testCase.successResultOf(memory.service.whenReady())
    memory.http = _MultipartClient(memory.http)
    return memory


def _stop_memory_gateway(testCase: TestCase, memory: MemoryGateway) -> None:
    """
    Stop the gateway, letting time pass for what waits on it (a drain, a
    stubborn worker), and check that it stopped.
    """
    stopped = memory.stop()
    for _ in range(100):
        if stopped.called:
            break
        memory.advance(1.0)
    testCase.successResultOf(stopped)


class _MultipartClient:
    """
    A treq client that writes C{files=} bodies itself: treq's multipart
    producer writes on the global reactor, which a gateway in memory does
    not run.
    """

    def __init__(self, client: HTTPClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def post(self, url: str, data: Any = None, files: Any = None, **kwargs: Any) -> Deferred:
        if files is None:
            return self._client.post(url, data=data, **kwargs)
        boundary = "memory-boundary-7d3f"
        parts = []
        for name, value in sorted((data or {}).items()):
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                + str(value).encode()
                + b"\r\n"
            )
        for name, (filename, ctype, content) in files.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                + content
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {b"content-type": [f"multipart/form-data; boundary={boundary}".encode()]}
        return self._client.post(url, data=body, headers=headers, **kwargs)


def http_client(testCase: TestCase, reactor: Any = None) -> HTTPClient:
    """
    A treq client with its own connection pool, closed at the end of the
    test (the global pool would keep connections open across tests).

    Call it I{after} L{start_gateway} so that its connections are closed
    before the gateway stops.
    """
    reactor = reactor or _global_reactor
    pool = HTTPConnectionPool(reactor, persistent=False)
    testCase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def openai_client(testCase: TestCase, base_url: str) -> Any:
    """
    The official synchronous client against C{base_url}; no retries, so
    that an error surfaces at once as its exception.  Closed at the end of
    the test (call it after L{start_gateway}).
    """
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=30)
    testCase.addCleanup(client.close)
    return client


def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """
    Run a blocking call (the official client) in the reactor's thread pool,
    so that the reactor keeps serving the gateway meanwhile.
    """
    return deferToThread(function, *args, **kwargs)


def write_worker(testCase: TestCase, source: str, name: str = "worker.py") -> list[str]:
    """
    Write a Python worker script, runnable as it is (a C{#!} line naming
    this interpreter, mode 0755), in a fresh temporary directory.

    @param source: the body of the script (dedented).
    @return: the worker command, for L{start_gateway}.
    """
    directory = testCase.mktemp()
    os.makedirs(directory)
    path = os.path.abspath(os.path.join(directory, name))
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n")
        f.write(textwrap.dedent(source))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return [path]


def parse_sse(body: bytes) -> list[tuple[Optional[str], str]]:
    """
    Split a server-sent events body into C{(event, data)} pairs, C{event}
    being C{None} where the event has no C{event:} line.

    @raise AssertionError: if the body is not well-formed SSE (a line that
        is neither C{event:}, C{data:}, a comment, nor blank).
    """
    events = []
    text = body.decode("utf-8")
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = None
        data_lines = []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                event = value
            elif field == "data":
                data_lines.append(value)
            else:
                raise AssertionError(f"not an SSE line: {line!r} in {body!r}")
        events.append((event, "\n".join(data_lines)))
    if text and not text.endswith("\n\n"):
        raise AssertionError(f"SSE body does not end with a blank line: {body[-80:]!r}")
    return events


def png_size(data: bytes) -> tuple[int, int]:
    """
    The width and height in a PNG's IHDR chunk, after checking the
    signature and that IHDR comes first.
    """
    if data[:8] != PNG_SIGNATURE:
        raise AssertionError(f"not a PNG: {data[:16]!r}")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise AssertionError(f"PNG does not start with IHDR: {data[8:40]!r}")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """
    A valid all-black 8-bit RGB PNG, for image edits.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    scanlines = (b"\x00" + b"\x00\x00\x00" * width) * height
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


def as_float32(values: list[float]) -> list[float]:
    """
    Numbers rounded to float32, as the gateway sends embeddings: each
    JSON float is the exact value of a float32.
    """
    return array("f", values).tolist()


def decode_float32(text: str) -> list[float]:
    """
    A base64 embedding (little-endian float32) as floats.
    """
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise AssertionError(f"base64 embedding of {len(raw)} bytes is not float32")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# The demo worker's documented behaviour, computed independently of its
# code (see hfendpoint.workers.demo's docstring), as the oracle for what comes back
# through the gateway.

_DEMO_TOKEN = re.compile(r"\w+|[^\w\s]")


def demo_tokens(text: str) -> list[int]:
    """
    The demo's token ids: each word or punctuation sign hashed by CRC-32
    into 1000..50999.
    """
    return [zlib.crc32(piece.encode("utf-8")) % 50000 + 1000 for piece in _DEMO_TOKEN.findall(text)]


def demo_embedding(tokens: Sequence[int], size: int = 384) -> list[float]:
    """
    The demo's embedding: the sum of a vector per token, uniform in
    [-1, 1] from C{random.Random(token)}, normalised to unit length.
    """
    total = [0.0] * size
    for token in tokens:
        generator = random.Random(token)
        total = [t + generator.uniform(-1.0, 1.0) for t in total]
    length = math.sqrt(sum(x * x for x in total))
    return [x / length for x in total] if length else total
