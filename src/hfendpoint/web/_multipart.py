"""
C{multipart/form-data} bodies, read into OpenAI-style 400s.
"""

from __future__ import annotations

from email import message_from_bytes
from typing import Any, Optional

from hfendpoint.errors import invalid_request


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


def parse_form(request: Any) -> dict[str, list[FormPart]]:
    """
    A C{multipart/form-data} body, by field name.

    @raise OpenAIError: a 400 if the body is not such a form.
    """
    content_type = request.getHeader(b"content-type") or b""
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise invalid_request(
            "This endpoint takes a multipart/form-data body.", code="invalid_content_type"
        )
    raw = request.content.read() if request.content is not None else b""
    message = message_from_bytes(
        b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise invalid_request("The multipart/form-data body could not be parsed.")
    form: dict[str, list[FormPart]] = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        data = part.get_payload(decode=True) or b""
        form.setdefault(name, []).append(
            FormPart(name, data, part.get_filename(), part.get_content_type())
        )
    return form
