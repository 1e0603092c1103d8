"""
C{multipart/form-data} bodies, read into OpenAI-style 400s.

The body is cut at its boundaries with C{bytes.find}, which scans in C,
and no more than L{MAX_PARTS} parts are read: the standard library's
e-mail parser, used before, took 4.5 s of the event loop (every client
waiting) over a 9.9 MB form of 190,000 tiny parts. An image edit has a
handful of fields; a form with more parts than any endpoint reads is
refused as soon as the part past the bound is found.
"""

from __future__ import annotations

import binascii
import quopri
from email.message import Message
from typing import Any, Optional

from hfendpoint.errors import OpenAIError, invalid_request

#: The most parts a form may have: an edit's fields and sixteen images,
#: with room to spare.
MAX_PARTS = 64

#: The most bytes of headers one part may have.
MAX_PART_HEAD = 16 * 1024


class FormPart:
    """
    One field of a multipart form.
    """

    def __init__(self, name: str, data: bytes, filename: Optional[str], content_type: str) -> None:
        self.name = name
        self.data = data
        self.filename = filename
        self.content_type = content_type

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_request(f"Field '{self.name}' is not UTF-8 text.", param=self.name)


def _unparsable(why: str) -> OpenAIError:
    return invalid_request(f"The multipart/form-data body could not be parsed: {why}.", code="invalid_multipart")


def _too_many_parts() -> OpenAIError:
    return OpenAIError(
        413,
        f"The multipart/form-data body has more than {MAX_PARTS} parts.",
        "invalid_request_error",
        None,
        "too_many_parts",
    )


def _boundary(content_type: bytes) -> bytes:
    header = Message()
    header["content-type"] = content_type.decode("latin-1")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200:
        raise _unparsable("no boundary in its Content-Type")
    return boundary.encode("latin-1")


def _headers(raw: bytes) -> Message:
    """
    A part's header lines (CRLF or LF), read by the e-mail package's
    header parsing: quoted names, RFC 2231 file names.
    """
    headers = Message()
    lines: list[bytes] = []
    for line in raw.split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += line  # a folded header goes on
        elif line:
            lines.append(line)
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise _unparsable("a part header without a colon")
        headers[name.strip().decode("latin-1")] = value.strip().decode("utf-8", "replace")
    return headers


def _decoded(headers: Message, data: bytes) -> bytes:
    """
    The part's bytes, undoing a C{Content-Transfer-Encoding} if it has one
    (RFC 7578 deprecates them, but the parser used before undid them).
    """
    encoding = (headers.get("content-transfer-encoding") or "").strip().lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            raise _unparsable("a part's base64 is broken")
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


def split_form(body: bytes, boundary: bytes) -> list[tuple[Message, bytes]]:
    """
    The parts of a multipart body: each one's headers and bytes, in order.
    A preamble before the first boundary and an epilogue after the last
    are ignored, as RFC 2046 says; line ends may be CRLF or LF.

    @raise OpenAIError: a 400 for a body that is not such a form, a 413
        past L{MAX_PARTS} parts.
    """
    dash = b"--" + boundary
    delimiter = b"\n" + dash
    if body.startswith(dash):
        position = len(dash)
    else:
        found = body.find(delimiter)
        if found < 0:
            raise _unparsable("no boundary in the body")
        position = found + len(delimiter)
    parts: list[tuple[Message, bytes]] = []
    while True:
        # Just after a boundary: "--" ends the form, else a line end.
        if body.startswith(b"--", position):
            return parts
        line_end = body.find(b"\n", position)
        if line_end < 0:
            raise _unparsable("the form does not end with its closing boundary")
        if body[position:line_end].strip(b" \t\r"):
            raise _unparsable("text after a boundary")
        start = line_end + 1
        end = body.find(delimiter, start)
        if end < 0:
            raise _unparsable("the form does not end with its closing boundary")
        if len(parts) == MAX_PARTS:
            raise _too_many_parts()
        data_end = end - 1 if end > start and body[end - 1] == 13 else end
        head_end, data_start = _head_end(body, start, data_end)
        if head_end - start > MAX_PART_HEAD:
            raise _unparsable("a part's headers are too long")
        headers = _headers(body[start:head_end])
        parts.append((headers, body[data_start:data_end]))
        position = end + len(delimiter)


def _head_end(body: bytes, start: int, end: int) -> tuple[int, int]:
    """
    Where a part's headers end and its data starts: at the first empty
    line (CRLF CRLF or LF LF) before C{end}, or at once for a part with
    no headers.
    """
    if body.startswith(b"\r\n", start):
        return start, start + 2
    if body.startswith(b"\n", start):
        return start, start + 1
    crlf = body.find(b"\r\n\r\n", start, end)
    lf = body.find(b"\n\n", start, end)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    raise _unparsable("a part without the empty line after its headers")


def parse_form(request: Any) -> dict[str, list[FormPart]]:
    """
    A C{multipart/form-data} body, by field name.

    @raise OpenAIError: a 400 if the body is not such a form, a 413 if it
        has more than L{MAX_PARTS} parts.
    """
    content_type = request.getHeader(b"content-type") or b""
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise invalid_request(
            "This endpoint takes a multipart/form-data body.", code="invalid_content_type"
        )
    raw = request.content.read() if request.content is not None else b""
    form: dict[str, list[FormPart]] = {}
    for headers, data in split_form(raw, _boundary(content_type)):
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        form.setdefault(name, []).append(
            FormPart(name, _decoded(headers, data), headers.get_filename(), headers.get_content_type())
        )
    return form
