"""
The API fuzzer: thousands of malformed requests to every POST endpoint of
the whole gateway in memory (its site, resources, admission, app, worker
client and a worker speaking the real protocol), each one checked for the
properties of issue 14: never a 5xx, every error an OpenAI error object,
nothing logged as an error (no traceback).

Each body is a valid request with one to four things wrong with it (a
value anywhere replaced by a hostile one: wrong types, extreme numbers as
JSON text, bad UTF-8, deep nesting; a member removed; a field added), so
that most requests get past the first check and reach the deeper ones and
the worker; some are not JSON at all.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from . import fuzzing
from .fuzzing import (
    RAW_NUMBERS,
    RAW_SYNTAX,
    RAW_TEXTS,
    Exchange,
    LogWatch,
    Raw,
    check_exchange,
    declared_fields,
    describe,
    encode,
    exchange,
    fast_image_handlers,
    fuzz_settings,
    hostile,
    http_request,
    known_api_defect,
    mutated,
)
from .gateway import start_memory_gateway, tiny_png

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
RESPONSES_PATH = "/v1/responses"
EMBEDDINGS_PATH = "/v1/embeddings"
GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"

SAMPLING = {"temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 7}

CHAT_BASES = [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "42"},
        ],
        "n": 2,
        "max_tokens": 5,
        "max_completion_tokens": 4,
        "stop": ["x", "y"],
        "logit_bias": {"50256": -100, "7": 3.5},
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "user": "u",
        "metadata": {"k": "v"},
        **SAMPLING,
    },
    {
        "model": "m",
        "messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "tell me"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "response_format": {"type": "json_object"},
        "stop": "\n",
        "max_tokens": 3,
    },
]

COMPLETIONS_BASES = [
    {"model": "m", "prompt": "Say this"},
    {
        "model": "m",
        "prompt": ["one", "two"],
        "n": 2,
        "best_of": 2,
        "max_tokens": 0,
        "echo": True,
        "logprobs": 2,
        "suffix": "end",
        "stop": ["."],
        "logit_bias": {"1": 1},
        "user": "u",
        **SAMPLING,
    },
    {"model": "m", "prompt": "stream it", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 4},
]

RESPONSES_BASES = [
    {"model": "m", "input": "hello"},
    {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": "a"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "c"}, {"type": "input_image", "image_url": "data:,"}]},
        ],
        "max_output_tokens": 16,
        "metadata": {"k": "v", "n": [1, {"x": None}]},
        "store": False,
        "user": "u",
        **SAMPLING,
    },
    {"model": "m", "input": [{"role": "developer", "content": "x"}], "stream": True, "max_output_tokens": 20},
]

EMBEDDINGS_BASES = [
    {"model": "m", "input": "hello world"},
    {"model": "m", "input": ["a b", "c"], "encoding_format": "base64", "dimensions": 4, "user": "u"},
    {"model": "m", "input": [1, 2, 3], "encoding_format": "float"},
    {"model": "m", "input": [[1, 2], [4294967295]], "dimensions": 1},
]

GENERATIONS_BASES = [
    {"prompt": "a cat"},
    {"model": "m", "prompt": "a dog", "n": 2, "size": "16x8", "response_format": "url", "user": "u", "quality": "hd"},
    {"prompt": "auto", "size": "auto", "response_format": "b64_json", "n": 1},
]

JSON_ENDPOINTS: dict[str, list[Any]] = {
    CHAT_PATH: CHAT_BASES,
    COMPLETIONS_PATH: COMPLETIONS_BASES,
    RESPONSES_PATH: RESPONSES_BASES,
    EMBEDDINGS_PATH: EMBEDDINGS_BASES,
    GENERATIONS_PATH: GENERATIONS_BASES,
}

UNDECLARED = ["parallel_tool_calls", "reasoning_effort", "store", "service_tier", "modalities", "previous_response_id",
              "text", "tools", "tool_choice", "quality", "style", "background", "", "__proto__", "constructor"]


def fields_of(path: str) -> list[str]:
    return declared_fields(path) + UNDECLARED


class GatewayFuzzCase(SynchronousTestCase):
    """
    One gateway in memory per test, shared by the test's examples; after
    the examples it must still serve a request.
    """

    options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.memory = start_memory_gateway(
            self, fast_image_handlers(), worker={"model": "hfendpoint-demo"}, **self.options
        )
        self.log = LogWatch()
        self.log.install(self)
        self.addCleanup(self.still_serves)

    def still_serves(self) -> None:
        body = encode(CHAT_BASES[0])
        result = exchange(self.memory, http_request(b"POST", CHAT_PATH.encode(), body, self.good_headers()))
        self.assertEqual([r.status for r in result.responses], [200], result)
        result = exchange(self.memory, http_request(b"GET", b"/health", headers=self.good_headers()))
        self.assertEqual([r.status for r in result.responses], [200], result)

    def good_headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def send(
        self,
        raw: bytes,
        *,
        requests: int = 1,
        method: bytes = b"POST",
        bare_400: bool = False,
        known: Optional[Callable[[Exchange], Optional[str]]] = None,
        what: Any = None,
    ) -> Exchange:
        """
        Write C{raw} to the gateway and check the properties; if they do
        not hold, fail with the request, the answer and what was logged,
        unless C{known} names the known defect (issue 14) it is.
        """
        fuzzing.SENT[self.id()] = fuzzing.SENT.get(self.id(), 0) + 1
        result = exchange(self.memory, raw, head=method == b"HEAD")
        problem = None
        try:
            check_exchange(result, requests, method, bare_400)
        except AssertionError as e:
            problem = str(e)
        logged = [describe(event) for event in self.log.take()]
        flushed = self.flushLoggedErrors()
        if problem is None and not logged and not flushed:
            return result
        defect = known(result) if known is not None else None
        if defect is not None:
            fuzzing.KNOWN_SEEN[defect] = fuzzing.KNOWN_SEEN.get(defect, 0) + 1
            return result
        report = [f"request: {raw[:3000]!r}"]
        if what is not None:
            report.append(f"generated: {what!r}"[:3000])
        report.append(f"answer: {result!r}")
        if problem:
            report.append(f"property: {problem}")
        report.extend(f"logged: {text}" for text in logged)
        report.extend(f"logged error: {failure.getTraceback()}" for failure in flushed)
        self.fail("\n".join(report))


def _post_json(path: str, examples: int) -> Callable[..., None]:
    @fuzz_settings(examples)
    @given(body=mutated(JSON_ENDPOINTS[path], fields_of(path)))
    def test(self: GatewayFuzzCase, body: Any) -> None:
        raw = encode(body)
        self.send(http_request(b"POST", path.encode(), raw), what=body, known=known_api_defect(path, raw))

    return test


class JSONEndpointFuzzTests(GatewayFuzzCase):
    """
    Valid requests made wrong in one to four places, to each JSON endpoint.
    """

    test_chat_completions = _post_json(CHAT_PATH, 800)
    test_completions = _post_json(COMPLETIONS_PATH, 500)
    test_responses = _post_json(RESPONSES_PATH, 600)
    test_embeddings = _post_json(EMBEDDINGS_PATH, 500)
    test_images_generations = _post_json(GENERATIONS_PATH, 400)

    @fuzz_settings(500)
    @given(
        path=st.sampled_from(sorted(JSON_ENDPOINTS) + [EDITS_PATH]),
        body=st.one_of(
            st.sampled_from(RAW_NUMBERS + RAW_TEXTS + RAW_SYNTAX),
            st.binary(max_size=80),
            st.builds(lambda b, cut: encode(b)[:cut], st.sampled_from([b for bs in JSON_ENDPOINTS.values() for b in bs]), st.integers(0, 200)),
            st.builds(
                lambda b, at, junk: (lambda t: t[:at] + junk + t[at:])(encode(b)),
                st.sampled_from([b for bs in JSON_ENDPOINTS.values() for b in bs]),
                st.integers(0, 200),
                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\", b'"', b",", b"}", b"\xef\xbb\xbf"]),
            ),
            hostile.map(encode),
        ),
        content_type=st.sampled_from(
            [b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON", b"application/vnd.x+json", None]
        ),
    )
    def test_not_json(self, path: str, body: bytes, content_type: Optional[bytes]) -> None:
        """
        Bodies that are not a JSON object: bad syntax, bad UTF-8, a cut-off
        request, a bare value, raw bytes.
        """
        self.send(http_request(b"POST", path.encode(), bytes(body), content_type=content_type))


# Multipart forms for /v1/images/edits

PNG = tiny_png(2, 2)
FORM_NAMES = ["image", "image[]", "mask", "prompt", "n", "size", "response_format", "model", "user", "quality",
              "", "IMAGE", "image\x00", "é", "a\"b"]
FORM_TEXTS = [b"a cat", b"", b"1", b"2", b"10", b"11", b"0", b"-1", b"1.0", b"1e1", b" 1", b"1 ", b"0x1", b"+1",
              b"256x256", b"auto", b"0x0", b"9999x9999", b"1x", b"url", b"b64_json", b"bogus", b"\xff\xfe", b"\xc3",
              b"\x00", b"null", b"true", b"[1]", b"\xe2\x81\xb5"]


@st.composite
def form_parts(draw: Any) -> list[tuple[str, Optional[str], Optional[bytes], bytes]]:
    """
    The parts of a form: a name, a file name or none, a content type or
    none, and the data.
    """
    parts = []
    if draw(st.booleans()):
        parts.append(("image", "i.png", b"image/png", PNG))
        parts.append(("prompt", None, None, b"edit it"))
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(FORM_NAMES) | st.text(max_size=6))
        filename = draw(st.none() | st.sampled_from(["i.png", "", "x.jpg", "../../etc/passwd", "é.png", "a\"b"]))
        ctype = draw(st.none() | st.sampled_from([b"image/png", b"text/plain", b"application/octet-stream", b"image/png; charset=\xff", b"garbage"]))
        data = draw(
            st.sampled_from(FORM_TEXTS)
            | st.just(PNG)
            | st.builds(lambda n: PNG[:n], st.integers(0, len(PNG)))
            | st.just(b"\x89PNG\r\n\x1a\n")
            | st.binary(max_size=40)
        )
        parts.append((name, filename, ctype, data))
    return parts


def form_body(parts: list, boundary: bytes, newline: bytes, close: bool) -> bytes:
    out = []
    for name, filename, ctype, data in parts:
        disposition = b'Content-Disposition: form-data; name="' + name.encode("utf-8", "surrogatepass") + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename.encode("utf-8", "surrogatepass") + b'"'
        head = [b"--" + boundary, disposition]
        if ctype is not None:
            head.append(b"Content-Type: " + ctype)
        out.append(newline.join(head) + newline + newline + data + newline)
    body = b"".join(out)
    if close:
        body += b"--" + boundary + b"--" + newline
    return body


class EditsFuzzTests(GatewayFuzzCase):
    """
    Multipart forms to C{/v1/images/edits}: fields of every kind and
    value, files that are not PNGs, broken framing, wrong content types.
    """

    @fuzz_settings(700)
    @given(
        parts=form_parts(),
        boundary=st.sampled_from([b"b0undary", b"x" * 70, b"a b", b"\xff", b"-", b""]),
        newline=st.sampled_from([b"\r\n", b"\r\n", b"\n"]),
        close=st.booleans(),
        content_type=st.sampled_from(
            [
                "multipart/form-data; boundary={b}",
                'multipart/form-data; boundary="{b}"',
                "MULTIPART/FORM-DATA; BOUNDARY={b}",
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "multipart/form-data; boundary=other",
                "multipart/mixed; boundary={b}",
                "multipart/form-data; boundary={b}; boundary=again",
                "application/json",
                "application/x-www-form-urlencoded",
                "text/plain",
                None,
            ]
        ),
        cut=st.none() | st.integers(0, 300),
        garbage=st.none() | st.binary(min_size=1, max_size=30),
    )
    def test_forms(self, parts, boundary, newline, close, content_type, cut, garbage) -> None:
        body = form_body(parts, boundary, newline, close)
        if cut is not None:
            body = body[:cut]
        if garbage is not None:
            body = garbage + body
        ctype = None
        if content_type is not None:
            ctype = content_type.encode("ascii").replace(b"{b}", boundary)
        self.send(
            http_request(b"POST", EDITS_PATH.encode(), body, content_type=ctype),
            what=(parts, content_type),
        )


# Every field, every kind of wrong value: a sweep, not a sample

SWEEP_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2, 16, 129, 2**31, 2**63 - 1, 2**64, -(2**63) - 1, 10**30,
    0.5, 2.5, -0.0, 1e308, 5e-324, "", "x", "auto", "²", "--5", "1e2", "\U0001f600", [], [1], [""], ["x"],
    [[1]], [None], {}, {"a": 1}, {"type": "text"}, {"role": "user"}, [{"role": "user", "content": "x"}],
    Raw(b"-0"), Raw(b"2.0"), Raw(b"1e2"), Raw(b"16.0"), Raw(b"2755930.0"), Raw(b"1e309"), Raw(b"NaN"),
    Raw(b"9223372036854775808"), Raw(b"18446744073709551616"), Raw(b'"\\ud800"'), Raw(b'"\xff"'),
    Raw(b"[" * 100 + b"]" * 100), Raw(b'{"a":' * 100 + b"1" + b"}" * 100),
    Raw(b"[" * 300 + b"]" * 300), Raw(b'{"a":' * 300 + b"1" + b"}" * 300), Raw(b"[" * 1000 + b"]" * 1000),
]


def sweep_places(bases: list[Any], fields: list[str]) -> list[tuple[Any, tuple]]:
    """
    Each declared field on the smallest body, and every place in the
    fullest one.
    """
    places = [(bases[0], (name,)) for name in fields]
    full = max(bases, key=lambda b: len(fuzzing.paths_of(b)))
    places += [(full, place) for place in fuzzing.paths_of(full)[1:]]
    return places


class FieldSweepTests(GatewayFuzzCase):
    """
    Every declared field of every JSON endpoint, and every member of a
    full request, given each of a list of wrong values in turn.
    """

    def sweep(self, path: str) -> None:
        for base, place in sweep_places(JSON_ENDPOINTS[path], declared_fields(path)):
            for value in SWEEP_VALUES:
                if len(place) == 1:
                    body = {**base, place[0]: value}
                else:
                    body = fuzzing.replaced(base, place, value)
                raw = encode(body)
                self.send(
                    http_request(b"POST", path.encode(), raw), what=(place, value), known=known_api_defect(path, raw)
                )

    def test_chat_completions(self) -> None:
        self.sweep(CHAT_PATH)

    def test_completions(self) -> None:
        self.sweep(COMPLETIONS_PATH)

    def test_responses(self) -> None:
        self.sweep(RESPONSES_PATH)

    def test_embeddings(self) -> None:
        self.sweep(EMBEDDINGS_PATH)

    def test_images_generations(self) -> None:
        self.sweep(GENERATIONS_PATH)
