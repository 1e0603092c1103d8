"""
An image the store behind C{response_format: url} cannot keep is refused
with a 400 naming C{response_format}, rather than answered with a URL that
is already a 404; the images stored before it stay.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.api._imagestore import ImageTooLarge, MemoryImageStore

from .integration import GatewayTestCase


class StoreTests(SynchronousTestCase):
    def test_larger_than_capacity(self) -> None:
        store = MemoryImageStore(10)
        kept = store.add(b"x" * 10)
        with self.assertRaises(ImageTooLarge) as caught:
            store.add(b"y" * 11)
        self.assertEqual((caught.exception.size, caught.exception.capacity), (11, 10))
        self.assertEqual((store.get(kept), len(store), store.size), (b"x" * 10, 1, 10))


class ImageTooLargeTests(GatewayTestCase):
    # A 16x16 demo image is about 160 bytes, a 64x64 one about 400, a
    # 256x256 one about 1,500.
    gateway_options = {"max_image_capacity": 600}

    async def generate(self, size: str, n: int = 1, response_format: str = "url") -> tuple:
        body = {"prompt": "a cat", "size": size, "n": n, "response_format": response_format}
        return await self.post_json("/v1/images/generations", body)

    async def test_one_image_larger_than_the_store(self) -> None:
        response, result = await self.generate("16x16")
        self.assertEqual(response.code, 200, result)
        small = result["data"][0]["url"][len(self.url):]
        response, result = await self.generate("256x256")
        error = self.assertError(response, result, 400, "response_format")
        self.assertEqual(error["code"], "image_too_large")
        self.assertIn("--max-image-capacity", error["message"])
        response, png = await self.get(small)
        self.assertEqual(response.code, 200, png)
        self.assertEqual(len(self.gateway.store), 1)

    async def test_images_that_together_do_not_fit(self) -> None:
        """
        Two images that each fit but not together: the second would push
        the first out before the client has its URL.
        """
        response, result = await self.generate("64x64", n=2)
        self.assertError(response, result, 400, "response_format")
        self.assertEqual(len(self.gateway.store), 0)
        response, result = await self.generate("64x64", n=1)
        self.assertEqual(response.code, 200, result)
        response, png = await self.get(result["data"][0]["url"][len(self.url):])
        self.assertEqual(response.code, 200)

    async def test_b64_json_is_not_stored(self) -> None:
        response, result = await self.generate("256x256", n=2, response_format="b64_json")
        self.assertEqual(response.code, 200, result)
        self.assertEqual(len(result["data"]), 2)


class Base64InAThreadTests(TestCase):
    """
    The base64 of big images is made off the event loop, so that other
    clients are served meanwhile; small ones stay on it.
    """

    async def test_big_images_in_a_thread(self):
        import os

        from pybase64 import b64encode

        from hfendpoint.api import _images

        threads = []
        real = _images.deferToThread

        def recorded(function):
            threads.append(function)
            return real(function)

        self.patch(_images, "deferToThread", recorded)
        big = [os.urandom(5 * 1024 * 1024), os.urandom(4 * 1024 * 1024)]
        self.assertEqual(await _images.base64_of(big), [b64encode(png) for png in big])
        self.assertEqual(len(threads), 1)
        self.assertEqual(await _images.base64_of([b"small"]), [b64encode(b"small")])
        self.assertEqual(len(threads), 1)
