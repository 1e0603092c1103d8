"""
The liveness probe (C{hfendpoint.ping}): a worker that speaks our
handshake is probed; one that misses a probe (its event loop blocked) is
reported on C{/ready} and restarted; an older worker is never probed.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.library import modern_calls
from hfendpoint.wire import PING

from .gateway import start_memory_gateway
from .gateway_end import Peer, serve_scenario


class MemoryLivenessTests(SynchronousTestCase):
    def start(self, **kwargs: Any) -> Any:
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_level") is not None and event["log_level"].name == "warn":
                warnings.append(event.get("log_format", ""))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.warnings = warnings
        return start_memory_gateway(
            self, {"chat_completions": lambda data: None}, **kwargs
        )

    def ready_status(self, memory: Any) -> int:
        response = self.successResultOf(memory.http.get(memory.url + "/ready"))
        self.successResultOf(response.content())
        return response.code

    def test_answering_worker_stays_ready(self) -> None:
        memory = self.start()
        for _ in range(10):
            memory.advance(10)
        self.assertEqual(memory.worker.pings, 10)
        self.assertEqual(self.ready_status(memory), 200)
        self.assertEqual(len(memory.spawner.processes), 1)

    def test_hung_worker_is_not_ready_within_30s_and_is_restarted(self) -> None:
        """
        A worker whose event loop is blocked reads nothing more (as the
        in-memory worker does while C{loading}): by default it is reported
        on C{/ready} within 30 s, a warning is logged, what it was serving
        fails at once, and a new worker replaces it.
        """
        memory = self.start()
        answer = memory.http.post(
            memory.url + "/v1/chat/completions",
            data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode(),
        )
        self.assertNoResult(answer)
        hung = memory.spawner.processes[0]
        hung.worker.loading = True
        hung.stubborn = True
        elapsed = 0
        while self.ready_status(memory) == 200:
            self.assertLess(elapsed, 30, "still ready after 30 s")
            memory.advance(1)
            elapsed += 1
        self.assertIn("The worker is hung ({why}); restarting it", self.warnings)
        response = self.successResultOf(answer)
        self.assertEqual(response.code, 502)
        self.successResultOf(response.content())
        # It ignores the EOF (its loop is blocked): TERM comes after the
        # stop timeout, then the restart's back-off.
        memory.advance(memory.service.config.stop_timeout)
        self.assertEqual(hung.signals, ["TERM"])
        memory.advance(memory.service.worker.min_delay)
        self.assertEqual(len(memory.spawner.processes), 2)
        self.assertEqual(self.ready_status(memory), 200)
        self.assertIn("stopped answering", memory.service.worker.last_exit)

    def test_options(self) -> None:
        memory = self.start(ping_interval=1, ping_timeout=2)
        memory.worker.loading = True
        memory.advance(1)
        memory.advance(1.9)
        self.assertEqual(self.ready_status(memory), 200)
        memory.advance(0.1)
        self.assertEqual(self.ready_status(memory), 503)

    def test_zero_interval_turns_it_off(self) -> None:
        memory = self.start(ping_interval=0)
        memory.worker.loading = True
        memory.advance(600)
        self.assertEqual(self.ready_status(memory), 200)

    def test_older_workers_are_never_probed(self) -> None:
        for handshake in ("error", "ignore"):
            memory = self.start(worker={"handshake": handshake}, wait_ready=False)
            memory.advance(2)
            self.assertTrue(memory.service.worker.ready)
            memory.advance(120)
            self.assertEqual([m for m in memory.worker.received if m.get("name") == PING], [])
            self.assertTrue(memory.service.worker.ready)


class LibraryPingTests(SynchronousTestCase):
    def test_ping_is_answered_while_a_thread_handler_runs(self) -> None:
        """
        A plain handler runs in a thread and leaves the loop free: the
        probe is answered while it works.
        """
        release = threading.Event()

        def slow(data: Any) -> Any:
            release.wait()
            return data

        async def scenario(peer: Peer) -> Any:
            await peer.send(1, "slow", {"a": 1})
            await peer.send(2, PING, {})
            pong = await peer.receive()
            release.set()
            return [pong, await peer.receive()]

        self.assertEqual(
            serve_scenario(modern_calls({"slow": slow}), scenario),
            [{"id": 2, "data": {}}, {"id": 1, "data": {"a": 1}}],
        )
