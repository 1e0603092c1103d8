"""
Tests for the worker library's public API, L{hfendpoint}: the names workers
written for the original library use, and both generations' entry points
run as the gateway runs them, in a process of their own.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import hfendpoint
import hfendpoint.library
from hfendpoint.library import _run

from .gateway_end import TIMEOUT, WorkerProcess, write_script


class PublicAPITests(SynchronousTestCase):
    """
    The names workers written for the original library use.
    """

    def test_exports(self) -> None:
        self.assertEqual(
            set(hfendpoint.__all__),
            {"Cancelled", "InvalidRequest", "WorkerError", "__version__", "handler", "request_id", "run"},
        )
        for name in hfendpoint.__all__:
            self.assertTrue(hasattr(hfendpoint, name), name)
        self.assertEqual(hfendpoint.__version__, "0.4.0")
        self.assertIs(hfendpoint.run, _run.run)

    def test_library_exports(self) -> None:
        """
        The library's package names what its private modules hold, and
        C{hfendpoint} hands out the same objects.
        """
        self.assertEqual(
            set(hfendpoint.library.__all__),
            {
                "Cancelled",
                "Connection",
                "InvalidRequest",
                "WorkerError",
                "handler",
                "legacy_calls",
                "modern_calls",
                "request_id",
                "run",
                "serve",
            },
        )
        for name in hfendpoint.library.__all__:
            self.assertTrue(hasattr(hfendpoint.library, name), name)
        for name in ("Cancelled", "InvalidRequest", "WorkerError", "handler", "request_id", "run"):
            self.assertIs(getattr(hfendpoint, name), getattr(hfendpoint.library, name))

    def test_no_twisted(self) -> None:
        """
        A worker importing the library does not load Twisted.
        """
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import hfendpoint, sys; assert 'twisted' not in sys.modules, "
                "sorted(m for m in sys.modules if m.startswith('twisted'))",
            ],
            capture_output=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())

    def test_reserved_names(self) -> None:
        self.assertRaises(ValueError, hfendpoint.handler, "hfendpoint.describe")
        self.assertRaises(ValueError, hfendpoint.handler, "")

    def test_handler_returns_function(self) -> None:
        """
        The decorator leaves the function usable as it was.
        """
        self.patch(_run, "_registry", {})

        def tokenize(data: Any) -> Any:
            return data

        self.assertIs(hfendpoint.handler("tokenize")(tokenize), tokenize)
        self.assertEqual(_run._registry, {"tokenize": tokenize})


LEGACY_WORKER = """
    import sys
    import hfendpoint

    def single(data, send_chunk):
        send_chunk({"echo": data})

    def multi(data, send_chunk):
        for n in range(data["n"]):
            send_chunk({"n": n})

    def refuse(data, send_chunk):
        raise hfendpoint.WorkerError("cannot do " + data["what"])

    hfendpoint.run({"single": single, "multi": multi, "refuse": refuse})
    print("run returned", file=sys.stderr)
"""

MODERN_WORKER = """
    import asyncio
    import sys
    import hfendpoint

    @hfendpoint.handler("tokenize")
    def tokenize(data):
        return {"tokens": [[len(text)] for text in data["input"]]}

    @hfendpoint.handler("chat_completions")
    async def chat(data):
        yield {"content": "Hi", "finish_reason": None}
        yield {"content": "", "finish_reason": "stop"}

    asyncio.run(hfendpoint.run())
    print("run returned", file=sys.stderr)
"""


LOADING_WORKER = """
    import asyncio
    import sys
    import hfendpoint

    @hfendpoint.handler("tokenize")
    def tokenize(data):
        return {"tokens": [[len(text)] for text in data["input"]]}

    # Loading the model: until the test closes our stdin.
    print("loading", flush=True)
    sys.stdin.read()
    asyncio.run(hfendpoint.run(model="loaded"))
"""


class ProcessTests(SynchronousTestCase):
    """
    Worker scripts written for the original library, run as the gateway
    runs them.
    """

    def test_legacy_worker(self) -> None:
        worker = WorkerProcess(self, [write_script(self, LEGACY_WORKER)])
        self.assertEqual(worker.data("single", {"x": "é"}), [{"echo": {"x": "é"}}])
        self.assertEqual(worker.data("multi", {"n": 3}, 3), [{"n": 0}, {"n": 1}, {"n": 2}])
        self.assertEqual(
            worker.call("refuse", {"what": "that"})[0]["error"], "cannot do that"
        )
        self.assertEqual(
            worker.call("hfendpoint.describe", {"protocol": 2})[0]["data"],
            {
                "protocol": 2,
                "calls": ["multi", "refuse", "single"],
                "model": None,
                "cancel": True,
                "ping": True,
                "features": [],
            },
        )
        self.assertEqual(worker.finish(), 0, worker.log())
        self.assertIn("run returned", worker.log())
        self.assertNotIn("Traceback", worker.log())

    def test_modern_worker(self) -> None:
        worker = WorkerProcess(
            self,
            [write_script(self, MODERN_WORKER)],
            env={"HFENDPOINT_MODEL_NAME": "org/model"},
        )
        self.assertEqual(
            worker.data("tokenize", {"input": ["abc", ""]}), [{"tokens": [[3], [0]]}]
        )
        self.assertEqual(
            worker.data("chat_completions", {"messages": []}, 2),
            [
                {"content": "Hi", "finish_reason": None},
                {"content": "", "finish_reason": "stop"},
            ],
        )
        self.assertEqual(
            worker.call("embeddings", {"input": []})[0]["error"],
            "No handler implemented for 'embeddings'",
        )
        self.assertEqual(
            worker.data("hfendpoint.describe", {"protocol": 2}),
            [
                {
                    "protocol": 2,
                    "calls": ["chat_completions", "tokenize"],
                    "model": "org/model",
                    "cancel": True,
                    "ping": True,
                    "features": [],
                }
            ],
        )
        self.assertEqual(worker.finish(), 0, worker.log())
        self.assertIn("run returned", worker.log())
        self.assertNotIn("Traceback", worker.log())

    def test_handshake_after_loading(self) -> None:
        """
        A worker that loads its model before calling C{run} leaves the
        handshake unanswered while it loads, and answers it, with its
        calls, once it serves: the answer means "ready".
        """
        worker = WorkerProcess(self, [write_script(self, LOADING_WORKER)], piped=True)
        worker.send({"id": 1, "name": "hfendpoint.describe", "data": {"protocol": 2}})
        assert worker.process.stdout is not None and worker.process.stdin is not None
        readable, _, _ = select.select([worker.process.stdout], [], [], TIMEOUT)
        self.assertEqual(readable, [worker.process.stdout], worker.log())
        self.assertEqual(worker.process.stdout.readline(), b"loading\n")
        worker.sock.setblocking(False)
        self.assertRaises(BlockingIOError, worker.sock.recv, 1, socket.MSG_PEEK)
        worker.sock.settimeout(TIMEOUT)
        worker.process.stdin.close()
        self.assertEqual(
            worker.receive(),
            {
                "id": 1,
                "data": {"protocol": 2, "calls": ["tokenize"], "model": "loaded", "cancel": True, "ping": True, "features": []},
            },
        )
        self.assertEqual(worker.data("tokenize", {"input": ["abc"]}), [{"tokens": [[3]]}])
        self.assertEqual(worker.finish(), 0, worker.log())

    def test_not_started_by_gateway(self) -> None:
        """
        Started by hand, a worker explains itself instead of a traceback.
        """
        environment = {
            key: value for key, value in os.environ.items() if key != "HFENDPOINT_FD"
        }
        result = subprocess.run(
            [sys.executable, write_script(self, MODERN_WORKER)],
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            b"this program is an hfendpoint worker; start it through the "
            b"hfendpoint gateway",
            result.stderr,
        )
        self.assertNotIn(b"Traceback", result.stderr)
