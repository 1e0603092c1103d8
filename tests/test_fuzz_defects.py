"""
The defects of issue 14 that the fuzzer met, each reproduced exactly: a
regression test for each fix.
"""

from __future__ import annotations


from .fuzzing import check_exchange, check_error_body, exchange, http_request
from .test_fuzz_api import GatewayFuzzCase

CHAT = b"/v1/chat/completions"
USER = b'[{"role":"user","content":"hi"}]'
DEFECT_3 = "issue 14 defect 3: client input that gives a 500"


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def form(fields: dict) -> tuple[bytes, bytes]:
    from .gateway import tiny_png

    parts = [b'--b\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n'
             b"Content-Type: image/png\r\n\r\n" + tiny_png() + b"\r\n"]
    for name, value in fields.items():
        parts.append(b'--b\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n")
    return b"".join(parts) + b"--b--\r\n", b"multipart/form-data; boundary=b"


class KnownDefectTests(GatewayFuzzCase):
    def assertNothingLogged(self) -> None:
        """
        Nothing logged as an error; what was is flushed first, so that a
        test marked todo fails only as itself.
        """
        logged, flushed = self.log.take(), self.flushLoggedErrors()
        self.assertEqual((logged, flushed), ([], []))

    def refused(self, path: bytes, body: bytes, param: str, content_type: bytes = b"application/json") -> None:
        """
        A 400 naming C{param}, nothing logged.
        """
        result = exchange(self.memory, http_request(b"POST", path, body, content_type=content_type))
        self.assertNothingLogged()
        self.assertEqual([r.status for r in result.responses], [400], result)
        self.assertEqual(check_error_body(result.responses[0])["param"], param, result)

    def served(self, path: bytes, body: bytes) -> None:
        result = exchange(self.memory, http_request(b"POST", path, body))
        self.assertNothingLogged()
        self.assertEqual([r.status for r in result.responses], [200], result)

    def test_max_tokens_whole_float(self) -> None:
        self.served(CHAT, b'{"messages":' + USER + b',"max_tokens":2.0}')

    def test_max_completion_tokens_exponent(self) -> None:
        self.served(CHAT, b'{"messages":' + USER + b',"max_completion_tokens":1e2}')

    def test_responses_metadata_deep(self) -> None:
        self.refused(b"/v1/responses", b'{"input":"x","metadata":' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}", "metadata.a")

    def test_responses_metadata_deep_streamed(self) -> None:
        self.refused(
            b"/v1/responses",
            b'{"input":"x","stream":true,"metadata":' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}",
            "metadata.a",
        )

    def test_chat_role_deep(self) -> None:
        self.refused(CHAT, b'{"messages":[{"role":' + deep(1000) + b',"content":"x"}]}', "messages[0].role")

    def test_responses_role_deep(self) -> None:
        self.refused(b"/v1/responses", b'{"input":[{"role":' + deep(1000) + b',"content":"x"}]}', "input[0].role")

    def test_responses_type_deep(self) -> None:
        self.refused(
            b"/v1/responses", b'{"input":[{"type":' + deep(1000) + b',"role":"user","content":"x"}]}', "input[0].type"
        )

    def test_edits_n(self) -> None:
        for n in ["\u00b2".encode(), b"--5", b"9" * 5000]:
            body, ctype = form({b"prompt": b"p", b"n": n})
            self.refused(b"/v1/images/edits", body, "n", ctype)

    def test_invalid_utf8_paths(self) -> None:
        for path in (b"/v1/models/%ff", b"/v1/images/%ff"):
            for method in (b"GET", b"DELETE"):
                result = exchange(self.memory, http_request(method, path))
                self.assertNothingLogged()
                check_exchange(result)
                # Refused for its path before its method is looked at.
                self.assertEqual(result.responses[0].status, 400)

    def test_empty_segment_redirect(self) -> None:
        result = exchange(self.memory, http_request(b"GET", b"/v1//models"))
        check_exchange(result)

    def test_two_transfer_encodings(self) -> None:
        body = b'{"messages":' + USER + b"}"
        chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        for first, second in ((b"chunked", b"identity"), (b"identity", b"chunked")):
            raw = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: " + first + b"\r\nTransfer-Encoding: " + second + b"\r\n\r\n"
                + chunked + b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n"
            )
            result = exchange(self.memory, raw, close=False)
            self.assertEqual([r.status for r in result.responses], [400], result)
            self.assertTrue(result.closed, result)

    def test_identity_with_length(self) -> None:
        raw = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: identity\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        result = exchange(self.memory, raw, close=False)
        self.assertEqual([r.status for r in result.responses], [400], result)
        self.assertTrue(result.closed, result)

    def test_long_request_line(self) -> None:
        result = exchange(self.memory, http_request(b"GET", b"/v1/models/" + b"a" * 16384))
        self.assertEqual([r.status for r in result.responses], [414], result)

    def test_long_header(self) -> None:
        result = exchange(self.memory, http_request(b"GET", b"/health", headers=[(b"X-Big", b"a" * 16384)]))
        self.assertEqual([r.status for r in result.responses], [431], result)

