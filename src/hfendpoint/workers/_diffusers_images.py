"""
The pictures around a diffusion model: what a request asks for (prompt,
count, size), the input images and masks it sends, and the PNGs that go
back. Only Pillow here, no torch, so that it is quick to test.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Optional

from PIL import Image, UnidentifiedImageError

from hfendpoint import InvalidRequest

#: The gateway sends at most 10 images per request; a worker talking to
#: another gateway still bounds what one request may cost.
MAX_IMAGES = 10
DEFAULT_SIDE = 1024
#: Decoding an image of more pixels than this is refused rather than
#: trusted: a small PNG may claim an enormous size.
MAX_INPUT_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ImageRequest:
    """
    What one C{images_generations} or C{images_editions} call asks for.

    @ivar image: the image to edit, as RGB, for an edit.
    @ivar mask: where to repaint, in diffusers' convention (white repaints,
        black keeps), when the edit came with a mask.
    """

    prompt: str
    n: int
    width: int
    height: int
    image: Optional[Image.Image] = None
    mask: Optional[Image.Image] = None


def parse_request(data: Any, max_side: int, edit: bool) -> ImageRequest:
    """
    Check a request's fields and decode its images.

    @param max_side: the largest width or height this worker makes.
    @param edit: whether this is an edit, which needs an C{image}.
    @raise InvalidRequest: naming the field that is wrong.
    """
    if not isinstance(data, dict):
        raise InvalidRequest("the request must be a map")
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string")
    n = data.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"n must be an integer from 1 to {MAX_IMAGES}")
    width, height = parse_size(data.get("width", DEFAULT_SIDE), data.get("height", DEFAULT_SIDE), max_side)
    if not edit:
        return ImageRequest(prompt, n, width, height)
    image = decode_image(data.get("image"), "image")
    mask = None
    if data.get("mask") is not None:
        mask = repaint_mask(decode_image(data["mask"], "mask"))
    return ImageRequest(prompt, n, width, height, rgb(image), mask)


def parse_size(width: Any, height: Any, max_side: int) -> tuple[int, int]:
    """
    @raise InvalidRequest: unless both sides are integers from 1 to C{max_side}.
    """
    for value in (width, height):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_side:
            raise InvalidRequest(
                f"Invalid size {width!r}x{height!r}: width and height must be "
                f"integers from 1 to {max_side} for this model."
            )
    return width, height


def decode_image(data: Any, name: str) -> Image.Image:
    """
    Decode an image sent as bytes, fully, so that a truncated file fails
    here rather than inside the model.

    @raise InvalidRequest: if C{data} is no image Pillow can read.
    """
    if not isinstance(data, bytes) or not data:
        raise InvalidRequest(f"{name} must be the bytes of an image")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_INPUT_PIXELS:
                raise InvalidRequest(
                    f"{name} is too large ({opened.width}x{opened.height} pixels)"
                )
            opened.load()
            return opened.copy()
    except InvalidRequest:
        raise
    except UnidentifiedImageError:
        raise InvalidRequest(f"{name} could not be decoded: it is in no image format this worker reads") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InvalidRequest(f"{name} could not be decoded: {error}") from None


def rgb(image: Image.Image) -> Image.Image:
    """
    The colours of C{image}, without transparency, as the models take it.
    """
    return image if image.mode == "RGB" else image.convert("RGB")


def has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def repaint_mask(mask: Image.Image) -> Image.Image:
    """
    Turn an OpenAI mask into a diffusers one.

    OpenAI's edits take a PNG whose transparent pixels (alpha 0) mark where
    the image is to be edited, and whose opaque pixels are kept; diffusers'
    inpainting takes a greyscale image, white where it repaints and black
    where it keeps. So the result is the mask's alpha inverted: partly
    transparent pixels become grey, which the pipeline rounds either way.

    @raise InvalidRequest: for a mask without transparency, which marks
        nothing to edit in OpenAI's convention.
    """
    if not has_transparency(mask):
        raise InvalidRequest(
            "mask must have an alpha channel: its transparent pixels mark "
            "where the image is to be edited"
        )
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 - value)


def working_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """
    The size the model paints at: the requested one rounded up to a
    multiple of what the pipeline needs (its latents are smaller by the
    VAE's scale factor), the picture being resized to the exact request
    afterwards.
    """

    def up(value: int) -> int:
        return max(multiple, -(-value // multiple) * multiple)

    return up(width), up(height)


def fit(image: Image.Image, width: int, height: int, resample: Any = None) -> Image.Image:
    """
    C{image} at exactly C{width}x{height}.
    """
    if image.size == (width, height):
        return image
    if resample is None:
        resample = Image.Resampling.LANCZOS
    return image.resize((width, height), resample)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
