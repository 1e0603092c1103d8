"""
The gateway as a program of its own (the hfendpoint command and the twistd
plugin): it serves, and on SIGTERM it stops accepting, lets requests in
flight finish, stops the worker and exits 0.
"""

import json
import os
import signal
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from .gateway import http_client, write_worker

SLOW_WORKER = """
import asyncio, sys
import hfendpoint

@hfendpoint.handler("chat_completions")
async def chat(data):
    print("started", flush=True, file=sys.stderr)
    yield {"content": "part one,", "finish_reason": None}
    await asyncio.sleep(float(data["messages"][-1]["content"]))
    yield {"content": " part two", "finish_reason": "stop"}

asyncio.run(hfendpoint.run())
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Program(ProcessProtocol):
    """
    A gateway process whose log lines can be waited for.
    """

    def __init__(self):
        self.output = b""
        self.ended = Deferred()
        self._waiters = []

    def errReceived(self, data):
        self.output += data
        self._check()

    outReceived = errReceived

    def _check(self):
        for text, d in list(self._waiters):
            if text in self.output:
                self._waiters.remove((text, d))
                d.callback(None)

    def wait_for(self, text):
        d = Deferred()
        self._waiters.append((text, d))
        self._check()
        return d

    def processEnded(self, reason):
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(reason.value.exitCode)


def start(testcase, argv):
    program = Program()
    transport = reactor.spawnProcess(program, sys.executable, [sys.executable, *argv], env=dict(os.environ))

    def kill_if_running():
        if not program.ended.called:
            transport.signalProcess("KILL")
            return program.ended

    testcase.addCleanup(kill_if_running)
    return program, transport


def chat(seconds):
    return json.dumps({"messages": [{"role": "user", "content": str(seconds)}]}).encode()


class SigtermTests(TestCase):
    async def test_requests_in_flight_finish_then_exit_0(self):
        port = free_port()
        worker = write_worker(self, SLOW_WORKER)[0]
        program, transport = start(self, ["-m", "hfendpoint", "--host", "127.0.0.1", "--port", str(port), worker])
        await program.wait_for(b"The worker is ready")
        await program.wait_for(b"Listening on")
        http = http_client(self)
        response = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=chat(0.5))
        await program.wait_for(b"worker: started")
        transport.signalProcess("TERM")
        response = await response
        self.assertEqual(response.code, 200)
        body = json.loads(await response.content())
        self.assertEqual(body["choices"][0]["message"]["content"], "part one, part two")
        self.assertEqual(await program.ended, 0)
        self.assertNotIn(b"Traceback", program.output)
        self.assertIn(b"Waiting up to", program.output)

    async def test_drain_timeout_then_exit_0(self):
        port = free_port()
        worker = write_worker(self, SLOW_WORKER)[0]
        program, transport = start(
            self,
            ["-m", "hfendpoint", "--host", "127.0.0.1", "--port", str(port), "--drain-timeout", "0.2", worker],
        )
        await program.wait_for(b"Listening on")
        await program.wait_for(b"The worker is ready")
        http = http_client(self)
        response = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=chat(600))
        await program.wait_for(b"worker: started")
        transport.signalProcess("TERM")
        response = await response
        self.assertEqual(response.code, 502)
        await response.content()
        self.assertEqual(await program.ended, 0)
        self.assertIn(b"still in flight", program.output)


class TwistdTests(TestCase):
    async def test_twistd_plugin_serves_and_stops(self):
        port = free_port()
        program, transport = start(
            self,
            ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-", "hfendpoint", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        )
        await program.wait_for(b"Worker serves")
        response = await http_client(self).post(
            f"http://127.0.0.1:{port}/v1/embeddings", data=json.dumps({"input": "hello"}).encode()
        )
        self.assertEqual(response.code, 200)
        body = json.loads(await response.content())
        self.assertEqual(len(body["data"][0]["embedding"]), 384)
        transport.signalProcess("TERM")
        code = await program.ended
        # twistd ends itself with the signal that stopped it, as Unix
        # programs do, once its services (the worker included) stopped.
        self.assertTrue(code == 0 or program.signal == signal.SIGTERM, (code, program.signal))
        self.assertIn(b"Main loop terminated", program.output)
        self.assertNotIn(b"Traceback", program.output)
