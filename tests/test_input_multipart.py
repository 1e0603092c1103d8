"""
Multipart forms: read at C speed with a bound on their parts, giving what
the standard library's e-mail parser gave, and every refusal an OpenAI
error.
"""

from __future__ import annotations

import io
import json
from email import message_from_bytes
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.errors import OpenAIError
from hfendpoint.web._multipart import MAX_PARTS, parse_form

from .integration import GatewayTestCase

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class FakeRequest:
    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.content = io.BytesIO(body)
        self._type = content_type

    def getHeader(self, name: bytes) -> Any:
        return self._type if name.lower() == b"content-type" else None


def reference(body: bytes, content_type: bytes) -> dict:
    """
    What the e-mail parser the gateway used before makes of a form.
    """
    message = message_from_bytes(b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + body)
    form: dict = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name:
            data = part.get_payload(decode=True) or b""
            form.setdefault(name, []).append((data, part.get_filename(), part.get_content_type()))
    return form


def parsed(body: bytes, content_type: bytes) -> dict:
    form = parse_form(FakeRequest(body, content_type))
    return {name: [(p.data, p.filename, p.content_type) for p in parts] for name, parts in form.items()}


def form(parts: list[tuple[str, bytes]], boundary: str = "b0und", eol: str = "\r\n", preamble: str = "", epilogue: str = "") -> bytes:
    """
    A body of C{parts}, each given as its header lines and its data.
    """
    out = preamble.encode()
    for head, data in parts:
        out += f"--{boundary}{eol}{head}{eol}{eol}".encode() + data + eol.encode()
    return out + f"--{boundary}--{eol}{epilogue}".encode()


def field(name: str, extra: str = "") -> str:
    return f'Content-Disposition: form-data; name="{name}"{extra}'


FORMS: list[tuple[bytes, bytes]] = [
    (form([(field("prompt"), b"a cat"), (field("n"), b"2")]), b"multipart/form-data; boundary=b0und"),
    (form([(field("prompt"), b"a cat")], eol="\n"), b"multipart/form-data; boundary=b0und"),
    (
        form([(field("image", '; filename="a.png"') + "\r\nContent-Type: image/png", PNG + b"\r\n--b0un\r\n")]),
        b"multipart/form-data; boundary=b0und",
    ),
    (
        form([(field("prompt"), b"x"), ("Content-Type: text/plain", b"no name"), (field("prompt"), b"")]),
        b'multipart/form-data; boundary="b0und"',
    ),
    (
        form([(field("image[]", "; filename=b.png"), PNG), (field("image[]", "; filename=c.png"), PNG * 2)]),
        b"multipart/form-data; charset=utf-8; boundary=b0und",
    ),
    (
        form([(field("p") + "\r\nContent-Transfer-Encoding: base64", b"aGVsbG8=")]),
        b"multipart/form-data; boundary=b0und",
    ),
    (
        form([(field("p") + "\r\nContent-Transfer-Encoding: quoted-printable", b"caf=C3=A9")]),
        b"multipart/form-data; boundary=b0und",
    ),
    (
        form([('Content-Disposition: form-data;\r\n name="folded"', b"v")]),
        b"multipart/form-data; boundary=b0und",
    ),
    (
        form([(field("p"), b"text")], boundary="a'b(c)+_,-./:=? z", preamble="ignored\r\n", epilogue="ignored too"),
        b"multipart/form-data; boundary=\"a'b(c)+_,-./:=? z\"",
    ),
    (form([(field("i", "; filename*=utf-8''na%C3%AFve.png"), b"d")]), b"multipart/form-data; boundary=b0und"),
    (form([]), b"multipart/form-data; boundary=b0und"),
]


class ParserTests(SynchronousTestCase):
    def test_same_as_the_email_parser(self) -> None:
        for body, content_type in FORMS:
            self.assertEqual(parsed(body, content_type), reference(body, content_type), body[:80])

    def test_parts_bound(self) -> None:
        """
        C{MAX_PARTS} parts are read; one more is a 413, found without
        reading the rest of the body (here, no closing boundary at all).
        """
        parts = [(field(f"f{i}"), b"v") for i in range(MAX_PARTS)]
        body = form(parts)
        ctype = b"multipart/form-data; boundary=b0und"
        self.assertEqual(len(parsed(body, ctype)), MAX_PARTS)
        self.assertEqual(parsed(body, ctype), reference(body, ctype))
        over = form(parts + [(field("more"), b"v")] * 1000)
        over = over[: over.rfind(b"--b0und--")]
        with self.assertRaises(OpenAIError) as caught:
            parsed(over, ctype)
        self.assertEqual((caught.exception.status, caught.exception.code), (413, "too_many_parts"))

    def test_malformed(self) -> None:
        ctype = b"multipart/form-data; boundary=b0und"
        good = form([(field("p"), b"v")])
        for body, content_type in (
            (good, b"multipart/form-data"),
            (b"no boundary here", ctype),
            (good[: good.rfind(b"--b0und--")], ctype),
            (b"--b0und\r\n" + field("p").encode() + b"\r\nno empty line\r\n--b0und--\r\n", ctype),
            (b"--b0undtrailing\r\n\r\nv\r\n--b0und--\r\n", ctype),
            (b"--b0und\r\nno colon\r\n\r\nv\r\n--b0und--\r\n", ctype),
            (form([(field("p") + "\r\nContent-Transfer-Encoding: base64", b"a")]), ctype),
        ):
            with self.assertRaises(OpenAIError) as caught:
                parsed(body, content_type)
            self.assertEqual(caught.exception.status, 400, body[:60])

    def test_every_split_of_the_data(self) -> None:
        """
        Data holding line ends, dashes and most of the boundary is kept
        byte for byte.
        """
        ctype = b"multipart/form-data; boundary=b0und"
        for data in (b"\r\n", b"\n", b"--", b"\r\n--b0un", b"\n--b0unx", b"-\r-\n", b"\r"):
            body = form([(field("d"), data), (field("e"), data + data)])
            self.assertEqual(parsed(body, ctype), {"d": [(data, None, "text/plain")], "e": [(data * 2, None, "text/plain")]})


class GatewayFormTests(GatewayTestCase):
    gateway_options = {"max_body_size": 16 * 2**20}

    async def test_many_tiny_parts(self) -> None:
        """
        The form that held the event loop for seconds: 190,000 tiny parts
        in 9.9 MB, now a 413 at the bound.
        """
        chunk = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\ny\r\n'
        body = chunk * 190_000 + b"--b--\r\n"
        response, content = await self.post_raw("/v1/images/edits", body, b"multipart/form-data; boundary=b")
        error = self.assertError(response, content, 413, None)
        self.assertEqual(error["code"], "too_many_parts")
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_unparsable_form(self) -> None:
        response, content = await self.post_raw("/v1/images/edits", b"--b\r\n", b"multipart/form-data; boundary=b")
        self.assertError(response, content, 400, None)

    async def test_edit_through_the_parser(self) -> None:
        body = form(
            [
                (field("prompt"), b"a cat"),
                (field("n"), b"2"),
                (field("image[]", '; filename="a.png"') + "\r\nContent-Type: image/png", PNG),
            ]
        )
        response, content = await self.post_raw("/v1/images/edits", body, b"multipart/form-data; boundary=b0und")
        self.assertEqual(response.code, 200, content)
        self.assertEqual(len(json.loads(content)["data"]), 2)
