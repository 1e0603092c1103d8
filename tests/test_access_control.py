"""
API keys, cross-site safety and request ids, through real HTTP on a real
gateway with the demo worker.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.web._auth import ApiKeys, matches, presented_key
from hfendpoint.web._cors import is_json

from .gateway import http_client, in_thread, openai_client, start_gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}
JSON = {"Content-Type": ["application/json"]}


async def answer(response):
    body = await response.content()
    return response.code, body


def error_of(body):
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


class ApiKeyTests(TestCase):
    async def setUp(self):
        self.keys = self.mktemp()
        with open(self.keys, "w") as f:
            f.write("# the team's keys\nfrom-file\n\n")
        self.url, self.gateway = await start_gateway(
            self, api_keys=["sk-given"], api_key_file=self.keys
        )
        self.http = http_client(self)

    async def post(self, headers):
        response = await self.http.post(
            self.url + "/v1/chat/completions", json.dumps(CHAT).encode(), headers={**JSON, **headers}
        )
        return await answer(response)

    async def test_no_key(self):
        code, body = await self.post({})
        self.assertEqual(code, 401)
        error = error_of(body)
        self.assertTrue(error["message"].startswith("You didn't provide an API key."))
        self.assertEqual(error["type"], "invalid_request_error")

    async def test_wrong_key(self):
        code, body = await self.post({"Authorization": ["Bearer sk-wrong"]})
        self.assertEqual(code, 401)
        self.assertEqual(error_of(body)["code"], "invalid_api_key")
        self.assertNotIn(b"sk-wrong", body)

    async def test_bearer_and_x_api_key(self):
        for headers in (
            {"Authorization": ["Bearer sk-given"]},
            {"Authorization": ["bearer from-file"]},
            {"X-Api-Key": ["sk-given"]},
        ):
            code, body = await self.post(headers)
            self.assertEqual(code, 200, (headers, body))

    async def test_open_routes(self):
        for path in ("/health", "/ready"):
            response = await self.http.get(self.url + path)
            self.assertEqual(response.code, 200, path)
            await response.content()
        for path in ("/", "/openapi.json", "/v1/models"):
            response = await self.http.get(self.url + path)
            self.assertEqual(response.code, 401, path)
            await response.content()

    async def test_image_url_is_a_capability(self):
        """
        An image is fetched by its URL without a key; deleting it needs one.
        """
        key = {"Authorization": ["Bearer sk-given"]}
        response = await self.http.post(
            self.url + "/v1/images/generations",
            json.dumps({"prompt": "a cat", "size": "256x256", "response_format": "url"}).encode(),
            headers={**JSON, **key},
        )
        code, body = await answer(response)
        self.assertEqual(code, 200, body)
        url = json.loads(body)["data"][0]["url"]
        response = await self.http.get(url)
        self.assertEqual(response.code, 200)
        await response.content()
        response = await self.http.delete(url)
        self.assertEqual(response.code, 401)
        await response.content()
        response = await self.http.delete(url, headers=key)
        self.assertEqual(response.code, 204)
        await response.content()

    async def test_key_file_read_again(self):
        code, _ = await self.post({"Authorization": ["Bearer rotated"]})
        self.assertEqual(code, 401)
        with open(self.keys, "w") as f:
            f.write("rotated\n")
        self.gateway.reload_api_keys()
        code, _ = await self.post({"Authorization": ["Bearer rotated"]})
        self.assertEqual(code, 200)
        code, _ = await self.post({"Authorization": ["Bearer from-file"]})
        self.assertEqual(code, 401)

    async def test_unreadable_key_file_keeps_the_keys(self):
        import os

        os.remove(self.keys)
        self.gateway.reload_api_keys()
        self.flushLoggedErrors()
        code, _ = await self.post({"Authorization": ["Bearer from-file"]})
        self.assertEqual(code, 200)

    async def test_official_client(self):
        import openai

        client = openai_client(self, self.url)
        with self.assertRaises(openai.AuthenticationError):
            await in_thread(client.chat.completions.create, **CHAT)
        good = openai.OpenAI(base_url=self.url + "/v1", api_key="sk-given", max_retries=0)
        self.addCleanup(good.close)
        reply = await in_thread(good.chat.completions.create, **CHAT)
        self.assertTrue(reply.choices[0].message.content)


class OpenGatewayTests(TestCase):
    async def test_any_key_or_none_without_keys(self):
        url, _ = await start_gateway(self)
        http = http_client(self)
        for headers in ({}, {"Authorization": ["Bearer anything"]}):
            response = await http.post(
                url + "/v1/chat/completions", json.dumps(CHAT).encode(), headers={**JSON, **headers}
            )
            code, body = await answer(response)
            self.assertEqual(code, 200, body)


class CrossSiteTests(TestCase):
    async def setUp(self):
        self.url, _ = await start_gateway(self, cors_origins=["https://app.example.com"])
        self.http = http_client(self)

    async def post(self, content_type, origin=None, path="/v1/chat/completions"):
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = [content_type]
        if origin is not None:
            headers["Origin"] = [origin]
        response = await self.http.post(self.url + path, json.dumps(CHAT).encode(), headers=headers)
        code, body = await answer(response)
        return code, body, response.headers

    async def test_simple_cross_site_post_refused(self):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            code, body, _ = await self.post(content_type, origin="https://evil.example")
            self.assertEqual(code, 415, content_type)
            self.assertEqual(error_of(body)["code"], "unsupported_media_type")

    async def test_json_and_no_content_type_accepted(self):
        for content_type in ("application/json", "application/json; charset=utf-8", None):
            code, body, _ = await self.post(content_type)
            self.assertEqual(code, 200, (content_type, body))

    async def test_allowed_origin(self):
        code, body, headers = await self.post("text/plain", origin="https://app.example.com")
        self.assertEqual(code, 200, body)
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example.com"])

    async def test_preflight(self):
        response = await self.http.request(
            "OPTIONS",
            self.url + "/v1/chat/completions",
            headers={
                "Origin": ["https://app.example.com"],
                "Access-Control-Request-Method": ["POST"],
                "Access-Control-Request-Headers": ["authorization, content-type"],
            },
        )
        await response.content()
        self.assertEqual(response.code, 204)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example.com"])
        self.assertIn(b"POST", headers.getRawHeaders(b"access-control-allow-methods")[0])
        self.assertIn(b"authorization", headers.getRawHeaders(b"access-control-allow-headers")[0].lower())
        self.assertTrue(int(headers.getRawHeaders(b"access-control-max-age")[0]) > 0)

    async def test_other_origin_gets_no_cors_headers(self):
        code, _, headers = await self.post("application/json", origin="https://evil.example")
        self.assertEqual(code, 200)
        self.assertIsNone(headers.getRawHeaders(b"access-control-allow-origin"))

    async def test_streams_carry_the_headers(self):
        response = await self.http.post(
            self.url + "/v1/chat/completions",
            json.dumps({**CHAT, "stream": True}).encode(),
            headers={**JSON, "Origin": ["https://app.example.com"]},
        )
        body = await response.content()
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example.com"]
        )


class RequestIdTests(TestCase):
    async def setUp(self):
        self.url, _ = await start_gateway(self, api_keys=["k"])
        self.http = http_client(self)

    async def test_client_id_returned(self):
        response = await self.http.get(self.url + "/health", headers={"X-Request-Id": ["abc-123"]})
        await response.content()
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"abc-123"])

    async def test_the_last_one_sent_counts(self):
        """
        A header sent twice is read as Twisted's C{getHeader} reads it:
        its last value.
        """
        response = await self.http.get(self.url + "/health", headers={"X-Request-Id": ["first", "second"]})
        await response.content()
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"second"])

    async def test_generated_when_absent_or_unusable(self):
        seen = set()
        for given in (None, "x" * 200, "bad id\x01", "<script>"):
            headers = {"X-Request-Id": [given]} if given else {}
            response = await self.http.get(self.url + "/health", headers=headers)
            await response.content()
            [ident] = response.headers.getRawHeaders(b"x-request-id")
            self.assertRegex(ident.decode(), r"\A[0-9a-f]{32}\Z")
            seen.add(ident)
        self.assertEqual(len(seen), 4)

    async def test_in_the_access_log(self):
        """
        The text access log's line ends with the request's id, after the
        Combined Log Format's fields.
        """
        import io

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        log = io.StringIO()
        url, _ = await start_gateway(self, access_log=log)
        http = http_client(self)
        response = await http.get(url + "/health", headers={"X-Request-Id": ["abc-9"]})
        await response.content()
        for _ in range(100):
            if log.getvalue():
                break
            await deferLater(reactor, 0, lambda: None)
        [line] = log.getvalue().splitlines()
        self.assertRegex(line, r'^"127\.0\.0\.1" - - \[.*\] "GET /health HTTP/1\.1" 200 (\d+|-) "-" "[^"]*" "abc-9"$')

    async def test_on_errors_too(self):
        response = await self.http.get(self.url + "/v1/models", headers={"X-Request-Id": ["r1"]})
        await response.content()
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"r1"])


ECHO_ID_WORKER = """
import asyncio
import hfendpoint


@hfendpoint.handler("chat_completions")
async def chat(data):
    return {"content": "id " + str(hfendpoint.request_id()), "finish_reason": "stop"}


asyncio.run(hfendpoint.run())
"""


class RequestIdToWorkerTests(TestCase):
    async def test_the_worker_knows_the_request_id(self):
        from .gateway import write_worker

        url, _ = await start_gateway(self, write_worker(self, ECHO_ID_WORKER))
        http = http_client(self)
        for given, expected in ((["req-51"], "id req-51"), (None, None)):
            headers = {**JSON, "X-Request-Id": given} if given else JSON
            response = await http.post(url + "/v1/chat/completions", json.dumps(CHAT).encode(), headers=headers)
            body = json.loads(await response.content())
            [ident] = response.headers.getRawHeaders(b"x-request-id")
            self.assertEqual(body["choices"][0]["message"]["content"], expected or "id " + ident.decode())


class Request:
    def __init__(self, headers):
        self.headers = {k.lower(): v for k, v in headers.items()}

    def getHeader(self, name):
        return self.headers.get(name)


class UnitTests(SynchronousTestCase):
    def test_presented_key(self):
        self.assertEqual(presented_key(Request({b"authorization": b"Bearer  k1 "})), b"k1")
        self.assertEqual(presented_key(Request({b"x-api-key": b"k2"})), b"k2")
        self.assertIsNone(presented_key(Request({b"authorization": b"Basic abc"})))
        self.assertIsNone(presented_key(Request({b"authorization": b"Bearer "})))

    def test_matches(self):
        self.assertTrue(matches(b"b", [b"a", b"b"]))
        self.assertFalse(matches(b"c", [b"a", b"b"]))
        self.assertFalse(matches(b"a", []))

    def test_api_keys(self):
        self.assertFalse(ApiKeys())
        self.assertEqual(ApiKeys(["a", ""])(), (b"a",))

    def test_is_json(self):
        self.assertTrue(is_json(b"application/json"))
        self.assertTrue(is_json(b"Application/JSON; charset=utf-8"))
        self.assertTrue(is_json(b"application/merge-patch+json"))
        self.assertFalse(is_json(b"text/plain"))
        self.assertFalse(is_json(b"text/json+x"))


class KeySourcesTests(SynchronousTestCase):
    """
    Where keys come from besides C{--api-key}: C{HFENDPOINT_API_KEY}, and
    the key file read again on SIGHUP, for the command and twistd alike.
    """

    def configs(self, argv):
        from hfendpoint.service._cli import build_parser, listen_descriptions
        from hfendpoint.service._options import build_config
        from hfendpoint.service._tap import Options

        args = build_parser().parse_args(argv)
        options = Options()
        options.parseOptions(argv)
        return build_config(vars(args), None, listen_descriptions(args), True), options["config"]

    def test_environment_variable(self):
        import os

        self.patch(os, "environ", {**os.environ, "HFENDPOINT_API_KEY": "sk-env"})
        for config in self.configs(["--api-key", "sk-flag"]):
            self.assertEqual(config.api_keys, ("sk-flag", "sk-env"))

    def test_no_environment_variable(self):
        import os

        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "HFENDPOINT_API_KEY"})
        for config in self.configs([]):
            self.assertEqual(config.api_keys, ())

    def test_sighup_reads_the_file_again(self):
        import signal

        from hfendpoint.service import _cli

        installed = {}
        self.patch(signal, "signal", lambda number, handler: installed.__setitem__(number, handler))

        class Reactor:
            def callFromThread(self, f, *args):
                f(*args)

        class Gateway:
            reloads = 0

            class api_keys:
                path = "keys.txt"

            def reload_api_keys(self):
                self.reloads += 1

        gateway = Gateway()
        _cli.reload_keys_on_hangup(Reactor(), gateway)
        installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(gateway.reloads, 1)

    def test_no_file_no_handler(self):
        import signal

        from hfendpoint.service import _cli

        installed = {}
        self.patch(signal, "signal", lambda number, handler: installed.__setitem__(number, handler))

        class Gateway:
            class api_keys:
                path = None

        _cli.reload_keys_on_hangup(object(), Gateway())
        self.assertEqual(installed, {})


class KeysNotLoggedTests(TestCase):
    async def test_keys_in_no_log(self):
        """
        Neither the access log nor any log event shows a key, right or
        wrong, whichever header carried it.
        """
        import io

        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        log = io.StringIO()
        url, _ = await start_gateway(self, api_keys=["sk-right-key-123"], access_log=log)
        http = http_client(self)
        for headers in (
            {"Authorization": ["Bearer sk-right-key-123"]},
            {"Authorization": ["Bearer sk-wrong-key-456"]},
            {"X-Api-Key": ["sk-right-key-123"]},
            {"X-Api-Key": ["sk-wrong-key-456"]},
        ):
            response = await http.post(url + "/v1/chat/completions", json.dumps(CHAT).encode(), headers={**JSON, **headers})
            await response.content()
        for _ in range(100):
            if len(log.getvalue().splitlines()) >= 4:
                break
            await deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(log.getvalue().splitlines()), 4)
        from twisted.logger import formatEvent

        written = log.getvalue() + "\n".join(formatEvent(event) + repr(event) for event in events)
        for key in ("sk-right-key-123", "sk-wrong-key-456"):
            self.assertNotIn(key, written)
