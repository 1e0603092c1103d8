"""
The HTTP fuzzer: odd methods, paths and queries on every route (the GET
and DELETE ones included), odd headers on valid requests (with API keys
and CORS on), and bytes that are barely an HTTP request, to the whole
gateway in memory, with the same properties as the API fuzzer.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from hypothesis import given
from hypothesis import strategies as st

from . import fuzzing
from .fuzzing import Exchange, encode, fuzz_settings, http_request
from .test_fuzz_api import CHAT_BASES, JSON_ENDPOINTS, GatewayFuzzCase

ROUTES = [
    b"/", b"/health", b"/ready", b"/openapi.json", b"/metrics", b"/v1/models", b"/v1/models/hfendpoint-demo",
    b"/v1/models/other", b"/v1/images/IMAGE", b"/v1/images/unknown", b"/v1/chat/completions", b"/v1/completions",
    b"/v1/responses", b"/v1/embeddings", b"/v1/images/generations", b"/v1/images/edits", b"/v1", b"/v2/models",
]
METHODS = [b"GET", b"GET", b"DELETE", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"PATCH", b"TRACE", b"get", b"FOO",
           b"CONNECT", b"PROPFIND", b"G-ET"]
SEGMENTS = [
    b"", b".", b"..", b"%2e%2e", b"%2F", b"%00", b"%20", b"%", b"%g1", b"%C3%A9", b"\xc3\xa9", b"%E2%80%AE",
    b"a" * 300, b"x" * 8000, b"hfendpoint-demo", b"HFENDPOINT-DEMO", b"hfendpoint-demo%2F..", b";a=b", b"~", b"*",
    b"%25ff", b"+", b"a%2Fb", b"\x7f", b"[::1]", b"@", b":",
]
QUERIES = [b"", b"?", b"?a=b", b"?a=b&&=&", b"?%", b"?x=%C3", b"?model=1", b"#frag", b"?" + b"q" * 4000, b"?a=\xc3\xa9"]


@st.composite
def targets(draw: Any) -> bytes:
    """
    A request target: a route, perhaps with segments changed, added or
    doubled slashes, and a query; sometimes absolute-form or C{*}.
    """
    route = draw(st.sampled_from(ROUTES))
    segments = route.split(b"/")
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(1, len(segments)))
        segment = draw(st.sampled_from(SEGMENTS) | st.binary(max_size=6).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"").replace(b"?", b"").replace(b"#", b"")) | st.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")).filter(lambda b: not any(c in b for c in b" \r\n?#")))
        if draw(st.booleans()):
            segments.insert(where, segment)
        else:
            segments[min(where, len(segments) - 1)] = segment
    target = b"/".join(segments) or b"/"
    if not target.startswith(b"/"):
        target = b"/" + target
    kind = draw(st.sampled_from(["path", "path", "path", "absolute", "asterisk"]))
    if kind == "absolute":
        target = b"http://gateway.test" + target
    elif kind == "asterisk":
        target = b"*"
    return target + draw(st.sampled_from(QUERIES))


def known_http_defect(target: bytes, raw: bytes = b"") -> Any:
    def classify(result: Exchange) -> Optional[str]:
        if fuzzing.asterisk_target(raw) or target.startswith(b"*"):
            return "not in issue 14: a request for *"
        return None

    return classify


class PathFuzzTests(GatewayFuzzCase):
    """
    Every route, with every method, its path bent and a query added.
    """

    def setUp(self) -> None:
        super().setUp()
        # An image that exists, for GET and DELETE /v1/images/{id}.
        body = encode({"prompt": "p", "response_format": "url", "n": 2, "size": "2x2"})
        result = self.send(http_request(b"POST", b"/v1/images/generations", body))
        import json

        urls = [item["url"] for item in json.loads(result.responses[0].body)["data"]]
        self.image_ids = [url.rsplit("/", 1)[1].encode() for url in urls]

    @fuzz_settings(900)
    @given(
        method=st.sampled_from(METHODS),
        target=targets(),
        body=st.none() | st.sampled_from([b"", b"{}", b"x", encode(CHAT_BASES[0])]),
        version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
        image=st.integers(0, 1),
    )
    def test_paths(self, method: bytes, target: bytes, body: Optional[bytes], version: bytes, image: int) -> None:
        target = target.replace(b"IMAGE", self.image_ids[image])
        raw = http_request(method, target, body, version=version)
        self.send(
            raw,
            method=method,
            bare_400=True,
            known=known_http_defect(target, raw),
            what=(method, target),
        )


HEADER_NAMES = [
    b"Content-Type", b"Accept", b"Authorization", b"X-Api-Key", b"X-Request-Id", b"X-Forwarded-Proto",
    b"X-Forwarded-Host", b"Origin", b"Access-Control-Request-Method", b"Access-Control-Request-Headers", b"Host",
    b"Expect", b"Connection", b"Content-Encoding", b"Accept-Encoding", b"Range", b"If-None-Match", b"Cookie",
    b"User-Agent", b"OpenAI-Organization", b"OpenAI-Project", b"X-Stainless-Retry-Count", b"Upgrade", b"TE",
    b"Forwarded", b"X-Forwarded-For", b"Accept-Charset", b"Prefer", b"x", b"X-\xffName",
]
HEADER_VALUES = [
    b"", b" ", b"application/json", b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data",
    b"multipart/form-data; boundary=b", b"application/json; charset=latin-1", b"application/json;;;", b"*/*",
    b"text/event-stream", b"Bearer sk-fuzz", b"Bearer", b"Bearer ", b"Basic Zm9vOmJhcg==", b"Bearer sk-fuzz extra",
    b"bearer sk-fuzz", b"sk-fuzz", b"Bearer \xff", b"https", b"javascript", b"evil.example", b"a b",
    b"gateway.test:99999", b"[::1]", b"https://ok.example", b"https://ok.example/", b"null", b"https://evil.example",
    b"POST", b"DELETE", b"100-continue", b"close", b"keep-alive", b"upgrade", b"gzip", b"bytes=0-1", b"h2c",
    b"\xff\xfe", b"\xc3\xa9", b"a" * 8000, b"x\x00y", b"1", b"-1", b"id-1", b"id with space", b"r" * 129,
]


class HeaderFuzzTests(GatewayFuzzCase):
    """
    Valid requests with odd headers added, to a gateway that checks API
    keys and answers CORS.
    """

    options = {"api_keys": ["sk-fuzz"], "cors_origins": ["https://ok.example"]}

    def good_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", b"Bearer sk-fuzz")]

    @fuzz_settings(700)
    @given(
        route=st.sampled_from(sorted(JSON_ENDPOINTS) + ["GET /v1/models", "GET /health", "GET /ready",
                                                        "GET /metrics", "OPTIONS /v1/chat/completions",
                                                        "DELETE /v1/images/x"]),
        keyed=st.booleans(),
        headers=st.lists(
            st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES) | st.binary(max_size=20).map(
                lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip())),
            max_size=5,
        ),
        content_type=st.sampled_from([b"application/json", None, b"text/plain", b"application/x-www-form-urlencoded"]),
    )
    def test_headers(self, route: str, keyed: bool, headers: list, content_type: Optional[bytes]) -> None:
        extra = list(headers) + (self.good_headers() if keyed else [])
        if route.startswith("/"):
            method = b"POST"
            raw = http_request(method, route.encode(), encode(JSON_ENDPOINTS[route][0]), extra, content_type)
        else:
            method, path = route.encode().split(b" ")
            raw = http_request(method, path, None, extra)
        self.send(raw, method=method, what=headers, bare_400=True, known=known_http_defect(b"/", raw))


VALID = [
    http_request(b"POST", b"/v1/chat/completions", encode(CHAT_BASES[0])),
    http_request(b"POST", b"/v1/embeddings", encode({"input": "a"})),
    http_request(b"GET", b"/v1/models"),
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n" % len(encode(CHAT_BASES[0])) + encode(CHAT_BASES[0]) + b"\r\n0\r\n\r\n",
]
JUNK = [
    b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b" ", b":", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999999999999\r\n", b"Content-Length: 1, 1\r\n", b"Content-Length: +5\r\n",
    b" folded\r\n", b"X: a\x00b\r\n", b"HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", b"0\r\n\r\n", b"ffffffffffffffffff\r\n",
    b"Host: a\r\nHost: b\r\n", b"Content-Type: multipart/form-data\r\n",
]


@st.composite
def damaged(draw: Any) -> bytes:
    """
    A valid request (or two, pipelined) with bytes changed, inserted,
    removed or cut off, or random bytes.
    """
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    raw = draw(st.sampled_from(VALID))
    if draw(st.booleans()):
        raw += draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["insert", "insert", "replace", "delete", "cut", "version"]))
        if action == "insert":
            raw = raw[:at] + draw(st.sampled_from(JUNK) | st.binary(min_size=1, max_size=4)) + raw[at:]
        elif action == "replace":
            raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
        elif action == "delete":
            raw = raw[:at] + raw[at + draw(st.integers(1, 8)) :]
        elif action == "cut":
            raw = raw[:at]
        else:
            raw = raw.replace(b"HTTP/1.1", draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1", b"HTTP/1", b""])), 1)
    return raw


class RawHTTPFuzzTests(GatewayFuzzCase):
    """
    Bytes that are barely HTTP: never a 5xx, never a traceback; a bare
    400 from the HTTP parser (no body, connection closed) is allowed for
    what is not a request at all.
    """

    @fuzz_settings(700)
    @given(raw=damaged())
    def test_damaged_requests(self, raw: bytes) -> None:
        self.send(
            raw,
            requests=0,
            bare_400=True,
            method=b"POST" if raw.startswith(b"POST") else b"GET",
            known=known_in_request_lines(raw),
        )


def known_in_request_lines(raw: bytes) -> Any:
    """
    The known defects of the paths of every request line in C{raw}.
    """
    targets = [b"/"] + [m.group(1) for m in re.finditer(rb"(?:^|\n)[^ \r\n]* ([^ \r\n]+) HTTP", raw)]

    def classify(result: Exchange) -> Optional[str]:
        for target in targets:
            name = known_http_defect(target, raw)(result)
            if name is not None:
                return name
        return None

    return classify
