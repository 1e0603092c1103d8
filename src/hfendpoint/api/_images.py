"""
Images: generations (JSON) and edits (multipart) to C{images_generations}
and C{images_editions} worker calls, each answered with C{n} PNG replies.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from pybase64 import b64encode

from hfendpoint.api import _fields as fields
from hfendpoint.errors import invalid_request, worker_failed
from hfendpoint.interfaces import IImageStore, IWorkerClient
from hfendpoint.web._json import dumps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_N = 10
MAX_SIDE = 4096
DEFAULT_SIZE = "1024x1024"
_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
FORMATS = ("b64_json", "url")


def parse_size(value: Optional[str]) -> tuple[int, int]:
    """
    C{WIDTHxHEIGHT}, or C{auto} for the default.
    """
    if value is None or value == "auto":
        value = DEFAULT_SIZE
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise invalid_request(
            f"Invalid 'size': {value!r}. Expected 'auto' or WIDTHxHEIGHT, for "
            "example '1024x1024'.",
            param="size",
            code="invalid_value",
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width > MAX_SIDE or height > MAX_SIDE:
        raise invalid_request(
            f"Invalid 'size': {value}. Width and height must be at most {MAX_SIDE}.",
            param="size",
            code="invalid_value",
        )
    return width, height


def validate_common(values: dict) -> dict:
    """
    The fields that generations and edits share, from a JSON body or from
    form fields already converted to JSON types.
    """
    prompt = fields.get_string(values, "prompt", required=True, non_empty=True)
    n = fields.get_int(values, "n", default=1, minimum=1, maximum=MAX_N)
    size = fields.get_string(values, "size")
    width, height = parse_size(size)
    response_format = fields.get_enum(values, "response_format", FORMATS, "b64_json")
    fields.get_string(values, "model")
    fields.get_string(values, "user")
    return {
        "prompt": prompt,
        "n": n,
        "width": width,
        "height": height,
        "response_format": response_format,
    }


def validate_generation(body: dict) -> dict:
    return validate_common(body)


def validate_edit(form: dict) -> dict:
    """
    Check an edit's form: text fields become JSON values, and the image
    comes from C{image} or C{image[]} (the official client's name for a list).
    """
    values: dict[str, Any] = {}
    for name in ("prompt", "size", "response_format", "model", "user"):
        if name in form:
            values[name] = form[name][0].text
    if "n" in form:
        text = form["n"][0].text.strip()
        values["n"] = int(text) if text.lstrip("-").isdigit() else text
    request = validate_common(values)
    images = form.get("image") or form.get("image[]")
    if not images:
        raise fields.missing("image")
    request["image"] = _png(images[0], "image")
    if "mask" in form:
        request["mask"] = _png(form["mask"][0], "mask")
    return request


def _png(part: Any, name: str) -> bytes:
    if not part.data.startswith(PNG_SIGNATURE):
        raise invalid_request(
            f"Invalid '{name}': the file must be a PNG image.", param=name, code="invalid_image_format"
        )
    return part.data


def worker_data(request: dict) -> dict:
    """
    What the worker receives: the original's fields exactly.
    """
    data = {k: request[k] for k in ("prompt", "n", "width", "height")}
    for optional in ("image", "mask"):
        if optional in request:
            data[optional] = request[optional]
    return data


async def generate(
    client: IWorkerClient,
    call: str,
    request: dict,
    store: IImageStore,
    url_for: Callable[[str], str],
    created: int,
) -> list[bytes]:
    """
    @return: the response body, in parts.
    """
    n = request["n"]
    pngs: list[bytes] = []

    def on_reply(reply: Any) -> bool:
        png = reply.get("png") if isinstance(reply, dict) else None
        if not isinstance(png, bytes):
            raise worker_failed(f"The worker's image {len(pngs)} is not PNG bytes.")
        pngs.append(png)
        return len(pngs) == n

    await client.request(call, worker_data(request), on_reply)
    parts = [b'{"created":%d,"data":[' % created]
    for i, png in enumerate(pngs):
        if i:
            parts.append(b",")
        if request["response_format"] == "url":
            parts += [b'{"url":', dumps(url_for(store.add(png))), b"}"]
        else:
            # Written as bytes rather than through the JSON encoder, which
            # would scan megabytes of base64 for characters base64 never has.
            parts += [b'{"b64_json":"', b64encode(png), b'"}']
    parts.append(b"]}")
    # Megabytes of base64 go out as they are, not copied into one body.
    return parts
