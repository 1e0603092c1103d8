"""
Integration tests, the whole gateway in memory: image generations, edits
and the image store.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any


from .gateway import PNG_SIGNATURE, png_size, tiny_png
from .integration import EDIT_SCHEMA, GatewayTestCase, IMAGES_SCHEMA, content_type
from .openapi import validate
from .test_integration_errors import _common_prefix


class ImagesTests(GatewayTestCase):
    async def generate(self, headers: Any = None, **body: Any) -> tuple[Any, dict]:
        response, result = await self.post_json(
            "/v1/images/generations", dict({"prompt": "a red square"}, **body), headers=headers
        )
        self.assertEqual(response.code, 200, result)
        validate(IMAGES_SCHEMA, result)
        self.assertIsInstance(result["created"], int)
        return response, result


    async def test_default_size(self) -> None:
        """
        Without C{size}, an image is 1024x1024.
        """
        _, result = await self.generate()
        png = base64.b64decode(result["data"][0]["b64_json"])
        self.assertEqual(png_size(png), (1024, 1024))

    async def test_bad_n(self) -> None:
        for n in (0, 11, "two"):
            response, body = await self.post_json(
                "/v1/images/generations", {"prompt": "p", "n": n, "size": "8x8"}
            )
            self.assertError(response, body, 400, param="n")

    async def test_b64_json(self) -> None:
        _, result = await self.generate(size="64x32", response_format="b64_json")
        [image] = result["data"]
        self.assertNotIn("url", image)
        png = base64.b64decode(image["b64_json"], validate=True)
        self.assertEqual(png[:8], PNG_SIGNATURE)
        self.assertEqual(png_size(png), (64, 32))

    async def test_b64_json_default(self) -> None:
        """
        C{b64_json} is the default format; C{n} images come back.
        """
        _, result = await self.generate(size="16x16", n=2)
        pngs = [base64.b64decode(i["b64_json"]) for i in result["data"]]
        self.assertEqual(len(pngs), 2)
        self.assertEqual([png_size(p) for p in pngs], [(16, 16), (16, 16)])
        self.assertNotEqual(pngs[0], pngs[1])

    async def test_url(self) -> None:
        """
        An image by URL can be fetched until it is deleted, once.
        """
        _, result = await self.generate(size="32x48", response_format="url")
        [image] = result["data"]
        self.assertNotIn("b64_json", image)
        url = image["url"]
        self.assertTrue(url.startswith(self.url + "/v1/images/"), url)
        path = url[len(self.url):]

        response, png = await self.get(path)
        self.assertEqual(response.code, 200, png)
        self.assertEqual(content_type(response), "image/png")
        self.assertWhole(response, png)
        self.assertEqual(png_size(png), (32, 48))

        response, body = await self.delete(path)
        self.assertEqual((response.code, body), (204, b""))
        response, body = await self.get(path)
        self.assertError(response, body, 404)
        response, body = await self.delete(path)
        self.assertError(response, body, 404)

    async def test_url_forwarded(self) -> None:
        """
        Behind a proxy, the URL is built from X-Forwarded-Proto and
        X-Forwarded-Host.
        """
        _, result = await self.generate(
            size="8x8",
            response_format="url",
            headers={b"x-forwarded-proto": [b"https"], b"x-forwarded-host": [b"api.example.com"]},
        )
        url = result["data"][0]["url"]
        self.assertTrue(url.startswith("https://api.example.com/v1/images/"), url)
        response, png = await self.get(url[len("https://api.example.com"):])
        self.assertEqual(response.code, 200)
        self.assertEqual(png_size(png), (8, 8))

    async def test_unguessable_ids(self) -> None:
        """
        An image's URL is the only credential for it: ids carry at least
        128 random bits (here: at least 22 base64url or 32 hex characters
        after any short alphabetic prefix), and differ every time.
        """
        _, result = await self.generate(size="4x4", n=4, response_format="url")
        ids = [i["url"].rsplit("/", 1)[1] for i in result["data"]]
        self.assertEqual(len(set(ids)), 4, ids)
        for image_id in ids:
            random_part = re.sub(r"^[A-Za-z]{1,8}[-_]", "", image_id)
            if re.fullmatch(r"[0-9a-f]+", random_part):
                bits = 4 * len(random_part)
            else:
                self.assertRegex(random_part, r"^[A-Za-z0-9_-]+$")
                bits = 6 * len(random_part)
            self.assertGreaterEqual(bits, 128, image_id)
        # Neither a counter nor a timestamp: no long common prefix.
        common = len(_common_prefix(ids))
        self.assertLess(common, len(ids[0]) - 20, ids)

    async def test_unknown_image(self) -> None:
        response, body = await self.get("/v1/images/img-" + uuid.uuid4().hex)
        self.assertError(response, body, 404)

    def multipart(self, fields: list[tuple[str, Any]]) -> tuple[bytes, bytes]:
        """
        Encode a multipart/form-data body: a field is C{(name, text)} or
        C{(name, (filename, bytes, content_type))}.

        @return: the body and the content type header value.
        """
        boundary = "----hfendpoint-test-" + uuid.uuid4().hex
        out = b""
        for name, value in fields:
            out += b"--" + boundary.encode() + b"\r\n"
            if isinstance(value, tuple):
                filename, data, ctype = value
                out += (
                    f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n"
                ).encode() + data + b"\r\n"
            else:
                out += (
                    f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                ).encode()
        out += b"--" + boundary.encode() + b"--\r\n"
        return out, f"multipart/form-data; boundary={boundary}".encode()

    async def edit(self, fields: list[tuple[str, Any]]) -> tuple[Any, bytes]:
        body, ctype = self.multipart(fields)
        return await self.post_raw("/v1/images/edits", body, ctype)

    async def test_edit(self) -> None:
        response, body = await self.edit(
            [
                ("prompt", "make it blue"),
                ("size", "24x12"),
                ("n", "2"),
                ("response_format", "b64_json"),
                ("image", ("in.png", tiny_png(), "image/png")),
            ]
        )
        self.assertEqual(response.code, 200, body)
        result = json.loads(body)
        validate(EDIT_SCHEMA, result)
        pngs = [base64.b64decode(i["b64_json"]) for i in result["data"]]
        self.assertEqual([png_size(p) for p in pngs], [(24, 12), (24, 12)])

    async def test_edit_with_mask_url(self) -> None:
        """
        A mask changes the picture (the demo tints by its inputs), and
        C{url} works for edits too.
        """
        base = [("prompt", "p"), ("size", "8x8"), ("response_format", "url"),
                ("image", ("in.png", tiny_png(), "image/png"))]
        response, body = await self.edit(base)
        self.assertEqual(response.code, 200, body)
        response, masked = await self.edit(base + [("mask", ("m.png", tiny_png(3, 3), "image/png"))])
        self.assertEqual(response.code, 200, masked)
        pngs = []
        for result in (json.loads(body), json.loads(masked)):
            validate(EDIT_SCHEMA, result)
            response, png = await self.get(result["data"][0]["url"][len(self.url):])
            self.assertEqual(response.code, 200)
            self.assertEqual(png_size(png), (8, 8))
            pngs.append(png)
        self.assertNotEqual(pngs[0], pngs[1])

    async def test_edit_with_treq_files(self) -> None:
        """
        treq's own multipart encoding works too.
        """
        response = await self.http.post(
            self.url + "/v1/images/edits",
            data={"prompt": "x", "size": "10x20"},
            files={"image": ("in.png", "image/png", tiny_png())},
        )
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        result = json.loads(body)
        validate(EDIT_SCHEMA, result)
        self.assertEqual(png_size(base64.b64decode(result["data"][0]["b64_json"])), (10, 20))

    async def test_edit_not_png(self) -> None:
        response, body = await self.edit(
            [("prompt", "p"), ("image", ("in.jpg", b"\xff\xd8\xff\xe0 not a png", "image/jpeg"))]
        )
        self.assertError(response, body, 400, param="image")

    async def test_edit_no_image(self) -> None:
        response, body = await self.edit([("prompt", "p")])
        self.assertError(response, body, 400, param="image")

    async def test_edit_not_multipart(self) -> None:
        response, body = await self.post_raw(
            "/v1/images/edits", json.dumps({"prompt": "p"}).encode()
        )
        self.assertError(response, body, 400)


class ImageCapacityTests(GatewayTestCase):
    """
    The store behind C{response_format: url} is bounded: the oldest image
    is dropped first.
    """

    # Room for one 64x64 demo image ("first" is 396 bytes, "second" 289),
    # not for two.
    gateway_options = {"max_image_capacity": 500}

    async def url_for(self, prompt: str) -> str:
        response, result = await self.post_json(
            "/v1/images/generations", {"prompt": prompt, "size": "64x64", "response_format": "url"}
        )
        self.assertEqual(response.code, 200, result)
        return result["data"][0]["url"][len(self.url):]

    async def test_oldest_dropped(self) -> None:
        # The images' bytes, by b64_json (which the store does not keep):
        # the demo paints the same bytes for the same prompt every time.
        expected = {}
        for prompt in ("first", "second"):
            response, result = await self.post_json(
                "/v1/images/generations", {"prompt": prompt, "size": "64x64"}
            )
            self.assertEqual(response.code, 200, result)
            expected[prompt] = base64.b64decode(result["data"][0]["b64_json"])
        self.assertLess(max(map(len, expected.values())), 500)
        self.assertGreater(sum(map(len, expected.values())), 500)

        first = await self.url_for("first")
        response, png = await self.get(first)
        self.assertEqual((response.code, png), (200, expected["first"]))
        second = await self.url_for("second")
        response, body = await self.get(first)
        self.assertError(response, body, 404)
        response, png = await self.get(second)
        self.assertEqual((response.code, png), (200, expected["second"]))
