"""
Images: generations (JSON) and edits (multipart) to C{images_generations}
and C{images_editions} worker calls, each answered with C{n} PNG replies.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from attrs import frozen
from pybase64 import b64encode
from twisted.internet.threads import deferToThread

from hfendpoint.api._contract import (
    Body,
    Components,
    Field,
    Integer,
    OneOf,
    Schema,
    String,
    at_most,
    nullable,
    ref,
)
from hfendpoint.api._endpoint import Context, Endpoint, Reply
from hfendpoint.api._wording import shown
from hfendpoint.api._imagestore import ImageTooLarge
from hfendpoint.errors import OpenAIError, invalid_request, worker_failed
from hfendpoint.interfaces import IImageStore, IWorkerClient
from hfendpoint.web import dumps, parse_form

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
            f"Invalid 'size': {shown(value)}. Expected 'auto' or WIDTHxHEIGHT, for "
            "example '1024x1024'.",
            param="size",
            code="invalid_value",
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width > MAX_SIDE or height > MAX_SIDE:
        raise invalid_request(
            f"Invalid 'size': {shown(value)}. Width and height must be at most {MAX_SIDE}.",
            param="size",
            code="invalid_value",
        )
    return width, height


@frozen(kw_only=True)
class Size(Field):
    """
    C{WIDTHxHEIGHT} or C{auto}, as C{(width, height)} once checked.
    """

    default: Any = parse_size(DEFAULT_SIZE)

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        return parse_size(_TEXT.check_value(value, label, checked))

    def schema(self, components: Components, with_null: bool = True) -> Schema:
        side = at_most(MAX_SIDE)
        components["ImageSize"] = {"type": "string", "pattern": f"^(?:auto|{side}x{side})$", "default": DEFAULT_SIZE}
        return nullable(ref("ImageSize")) if with_null else ref("ImageSize")


_TEXT = String()


@frozen(kw_only=True)
class Png(Field):
    """
    An uploaded file that must be a PNG image.
    """

    def check_value(self, value: Any, label: str, checked: dict) -> Any:
        if not value.data.startswith(PNG_SIGNATURE):
            raise invalid_request(
                f"Invalid '{label}': the file must be a PNG image.", param=label, code="invalid_image_format"
            )
        return value.data

    def type_schema(self, components: Components) -> Schema:
        return {"type": "string", "contentMediaType": "image/png"}


#: What generations and edits share, from a JSON body or from form fields.
_COMMON = {
    "prompt": String(required=True, non_empty=True),
    "n": Integer(default=1, minimum=1, maximum=MAX_N),
    "size": Size(),
    "response_format": OneOf(choices=FORMATS, default="b64_json"),
    "model": String(),
    "user": String(),
}

GENERATION_REQUEST = Body("CreateImageRequest", _COMMON)

EDIT_REQUEST = Body(
    "CreateImageEditRequest",
    {**_COMMON, "image": Png(required=True), "mask": Png()},
    form=True,
    description="The image may also be sent as `image[]`, as the official client does.",
)


def read_edit_form(request: Any) -> dict:
    """
    An edit's form as the values L{EDIT_REQUEST} checks: text fields
    become JSON values, and the image comes from C{image} or C{image[]}
    (the official client's name for a list).
    """
    form = parse_form(request)
    values: dict[str, Any] = {}
    for name in ("prompt", "size", "response_format", "model", "user"):
        if name in form:
            values[name] = form[name][0].text
    if "n" in form:
        values["n"] = form_integer(form["n"][0].text, "n")
    images = form.get("image") or form.get("image[]")
    if images:
        values["image"] = images[0]
    if "mask" in form:
        values["mask"] = form["mask"][0]
    return values


_FORM_INTEGER = re.compile(r"[-+]?[0-9]+")
#: Digits past which a form's integer is out of any range declared here,
#: and short of Python's limit on converting text to an integer.
_FORM_DIGITS = 20


def form_integer(text: str, label: str) -> Any:
    """
    A form field's text as the JSON value it stands for: an integer if it
    is one in ASCII digits, else the text, which the field's check refuses
    as a string. C{str.isdigit} would take C{"²"}, which C{int} refuses;
    thousands of digits are out of range, said without converting them.
    """
    text = text.strip()
    if _FORM_INTEGER.fullmatch(text) is None:
        return text
    digits = len(text.lstrip("+-"))
    if digits > _FORM_DIGITS:
        side = "below minimum" if text.startswith("-") else "above maximum"
        raise invalid_request(
            f"Invalid '{label}': integer {side} value. Expected an integer of at most "
            f"{_FORM_DIGITS} digits, but got {digits} digits instead.",
            param=label,
            code="invalid_value",
        )
    return int(text)


def image_request(checked: dict) -> dict:
    width, height = checked["size"]
    request = {
        "prompt": checked["prompt"],
        "n": checked["n"],
        "width": width,
        "height": height,
        "response_format": checked["response_format"],
    }
    for optional in ("image", "mask"):
        if checked.get(optional) is not None:
            request[optional] = checked[optional]
    return request


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
    ids = store_all(store, pngs) if request["response_format"] == "url" else []
    encoded = [] if ids else await base64_of(pngs)
    parts = [b'{"created":%d,"data":[' % created]
    for i, png in enumerate(pngs):
        if i:
            parts.append(b",")
        if ids:
            parts += [b'{"url":', dumps(url_for(ids[i])), b"}"]
        else:
            # Written as bytes rather than through the JSON encoder, which
            # would scan megabytes of base64 for characters base64 never has.
            parts += [b'{"b64_json":"', encoded[i], b'"}']
    parts.append(b"]}")
    # Megabytes of base64 go out as they are, not copied into one body.
    return parts


#: Bytes of PNG from which base64 is written in a thread: hundreds of
#: megabytes take the event loop a second, while every other client waits.
IN_A_THREAD = 8 * 1024 * 1024


async def base64_of(pngs: list[bytes]) -> list[bytes]:
    """
    The base64 of each PNG, made in a thread when they are big.
    """
    if sum(map(len, pngs)) < IN_A_THREAD:
        return [b64encode(png) for png in pngs]
    return await deferToThread(lambda: [b64encode(png) for png in pngs])


def _not_kept(detail: str) -> OpenAIError:
    return invalid_request(
        f"The generated images cannot be served by URL: {detail}. Ask for response_format "
        "'b64_json', or for fewer or smaller images.",
        param="response_format",
        code="image_too_large",
    )


def store_all(store: IImageStore, pngs: list[bytes]) -> list[str]:
    """
    Store a response's images and return their ids, or none of them: a URL
    handed out must work when the client gets it. An image larger than
    the store, or images that together push the first ones out (each
    stored image makes room by dropping the oldest), would leave the
    client with URLs already dead.

    @raise OpenAIError: a 400 naming C{response_format} when they cannot
        all be kept.
    """
    ids: list[str] = []
    try:
        for png in pngs:
            ids.append(store.add(png))
    except ImageTooLarge as e:
        for image_id in ids:
            store.delete(image_id)
        raise _not_kept(
            f"an image of {e.size} bytes is larger than the {e.capacity} bytes this server keeps "
            "for URLs (--max-image-capacity)"
        )
    if any(store.get(image_id) is None for image_id in ids):
        for image_id in ids:
            store.delete(image_id)
        raise _not_kept(
            f"together ({sum(map(len, pngs))} bytes) they are more than this server keeps for URLs "
            "(--max-image-capacity)"
        )
    return ids


def _server(call: str) -> Any:
    async def serve(context: Context, body: dict, checked: dict) -> Reply:
        context.require(call)
        return await generate(
            context.client, call, image_request(checked), context.store, context.url_for, context.created
        )

    return serve


SCHEMAS: dict[str, Schema] = {
    "ImagesResponse": {
        "type": "object",
        "required": ["created", "data"],
        "properties": {
            "created": {"type": "integer"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"b64_json": {"type": "string"}, "url": {"type": "string"}},
                    "oneOf": [{"required": ["b64_json"]}, {"required": ["url"]}],
                },
            },
        },
    },
}

ENDPOINTS = (
    Endpoint(
        path="/v1/images/generations",
        operation_id="createImage",
        summary="Generate images",
        body=GENERATION_REQUEST,
        serve=_server("images_generations"),
        response="ImagesResponse",
    ),
    Endpoint(
        path="/v1/images/edits",
        operation_id="createImageEdit",
        summary="Edit an image",
        body=EDIT_REQUEST,
        serve=_server("images_editions"),
        response="ImagesResponse",
        read=read_edit_form,
        content_type="multipart/form-data",
    ),
)
