"""
Trusted proxies: the forwarded headers believed from the proxies named,
removed from anyone else, through real HTTP.
"""

from __future__ import annotations

import io
import json

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.web._forwarded import ForwardedResource, TrustedProxies, parse_networks

from .gateway import http_client, start_gateway

IMAGE = {"prompt": "p", "size": "256x256", "response_format": "url"}


class ForwardedTests(TestCase):
    async def image_url(self, url, headers):
        http = http_client(self)
        response = await http.post(
            url + "/v1/images/generations",
            json.dumps(IMAGE).encode(),
            headers={"Content-Type": ["application/json"], **headers},
        )
        body = json.loads(await response.content())
        return body["data"][0]["url"]

    async def test_trusted_proxy(self):
        """
        From loopback, trusted by default, the proxy's scheme and host make
        the URL, and its client's address is the one logged.
        """
        log = io.StringIO()
        url, _ = await start_gateway(self, access_log=log, log_format="json")
        image = await self.image_url(
            url,
            {
                "X-Forwarded-Proto": ["https"],
                "X-Forwarded-Host": ["api.example.com"],
                "X-Forwarded-For": ["203.0.113.7, 127.0.0.1"],
            },
        )
        self.assertTrue(image.startswith("https://api.example.com/v1/images/"), image)
        for _ in range(100):
            if log.getvalue():
                break
            await deferLater(reactor, 0, lambda: None)
        [line] = [json.loads(text) for text in log.getvalue().splitlines()]
        self.assertEqual(line["client"], "203.0.113.7")

    async def test_untrusted_peer(self):
        url, _ = await start_gateway(self, forwarded_allow_ips=["10.0.0.1"])
        image = await self.image_url(
            url, {"X-Forwarded-Proto": ["https"], "X-Forwarded-Host": ["evil.example"]}
        )
        self.assertTrue(image.startswith(url + "/v1/images/"), image)

    async def test_only_http_and_plain_hosts(self):
        url, _ = await start_gateway(self)
        image = await self.image_url(
            url, {"X-Forwarded-Proto": ["javascript"], "X-Forwarded-Host": ["evil.example/x?"]}
        )
        self.assertTrue(image.startswith(url + "/v1/images/"), image)


class ChainTests(SynchronousTestCase):
    def client(self, allowed, chain):
        resource = ForwardedResource(None, TrustedProxies(allowed))
        return resource._client([value.encode() for value in chain])

    def test_nearest_untrusted_hop(self):
        self.assertEqual(self.client(["127.0.0.1"], ["203.0.113.7, 127.0.0.1"]), "203.0.113.7")
        self.assertEqual(self.client(["127.0.0.1"], ["1.1.1.1, 203.0.113.7"]), "203.0.113.7")
        self.assertEqual(self.client(["10.0.0.0/8"], ["198.51.100.2", "10.1.2.3"]), "198.51.100.2")
        self.assertEqual(self.client(["*"], ["198.51.100.2, 10.1.2.3"]), "198.51.100.2")
        self.assertEqual(self.client(["127.0.0.1"], ["127.0.0.1"]), "127.0.0.1")
        self.assertIsNone(self.client(["127.0.0.1"], ["not-an-address"]))

    def test_networks(self):
        self.assertIsNone(parse_networks(["10.0.0.0/8", "*"]))
        self.assertEqual(len(parse_networks(["127.0.0.1,::1", "10.0.0.0/8"])), 3)
        self.assertRaises(ValueError, parse_networks, ["example.com"])
        proxies = TrustedProxies(["10.0.0.0/8", "::1"])
        self.assertTrue(proxies.trusts("10.9.8.7"))
        self.assertTrue(proxies.trusts("::1"))
        self.assertFalse(proxies.trusts("11.0.0.1"))
        self.assertFalse(proxies.trusts("nonsense"))
