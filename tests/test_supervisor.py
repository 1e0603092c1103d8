"""
Supervision of the worker: start-up, handshake, restarts with back-off,
and the stop sequence, with a fake spawner and a fake clock.
"""

import msgpack
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from hfendpoint.backend._client import WorkerClient
from hfendpoint.wire import DESCRIBE
from hfendpoint.backend._supervisor import WorkerService, WorkerStartupError
from hfendpoint.interfaces import IWorkerProcess, IWorkerSpawner


@implementer(IWorkerProcess)
class FakeWorker:
    """
    A worker process as the supervisor sees it: a socket, signals, an end.
    """

    def __init__(self, protocol_factory, pid):
        self.pid = pid
        self.signals = []
        self.socket_closed = False
        self.protocol = protocol_factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.how = None
        self._waiters = []
        self.unread = 0

    def unread_bytes(self):
        return self.unread

    def requests(self):
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(self.transport.value())
        return list(unpacker)

    def answer_handshake(self, reply):
        [describe] = [r for r in self.requests() if r["name"] == DESCRIBE]
        self.protocol.dataReceived(msgpack.packb({"id": describe["id"], "data": reply}))

    def when_disconnected(self):
        return self.protocol.when_closed()

    def when_ended(self):
        if self.how is not None:
            return succeed(self.how)
        d = Deferred()
        self._waiters.append(d)
        return d

    def close_socket(self):
        self.socket_closed = True

    def signal(self, name):
        self.signals.append(name)

    def exit(self, how="exited with status 1"):
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.how = how
        for d in self._waiters:
            d.callback(how)


@implementer(IWorkerSpawner)
class Harness:
    """
    The spawner of L{FakeWorker}s, and the supervisor it serves.
    """

    def __init__(self, **kwargs):
        self.clock = Clock()
        self.client = WorkerClient(self.clock)
        self.workers = []
        self.service = WorkerService(self.clock, ["worker", "--flag"], self.client, spawner=self, **kwargs)

    def spawn(self, argv, env, protocol_factory):
        self.argv = argv
        self.env = env
        worker = FakeWorker(protocol_factory, pid=100 + len(self.workers))
        self.workers.append(worker)
        return worker

    @property
    def worker(self):
        return self.workers[-1]


class StartupTests(SynchronousTestCase):
    def test_spawns_the_command(self):
        h = Harness()
        h.service.startService()
        self.assertEqual(h.argv, ["worker", "--flag"])
        self.assertEqual(h.service.state, "starting")

    def test_ready_on_handshake(self):
        h = Harness()
        h.service.startService()
        ready = h.service.whenReady()
        self.assertNoResult(ready)
        h.worker.answer_handshake({"protocol": 2, "calls": ["tokenize"], "model": "m", "cancel": True})
        self.successResultOf(ready)
        self.assertTrue(h.service.ready)
        self.assertEqual(h.client.info.model, "m")
        self.assertTrue(h.client.info.cancel)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_older_worker_refusing_the_handshake_is_ready(self):
        h = Harness()
        h.service.startService()
        [describe] = h.worker.requests()
        h.worker.protocol.dataReceived(
            msgpack.packb({"id": describe["id"], "error": "No handler implemented for 'hfendpoint.describe'"})
        )
        self.successResultOf(h.service.whenReady())
        self.assertIsNone(h.client.info.calls)

    def test_silent_older_worker_is_ready_after_grace(self):
        h = Harness(startup_grace=2.0)
        h.service.startService()
        ready = h.service.whenReady()
        h.clock.advance(1.9)
        self.assertNoResult(ready)
        h.clock.advance(0.2)
        self.successResultOf(ready)
        # A late answer still teaches us what the worker serves.
        h.worker.answer_handshake({"calls": ["embeddings"], "model": "late"})
        self.assertEqual(h.client.info.model, "late")

    def test_worker_that_has_not_read_the_handshake_is_not_ready(self):
        """
        A worker still loading its model when the grace is over has not
        read its socket: it is not taken for an older worker, and is ready
        when it answers.
        """
        h = Harness(startup_grace=2.0)
        h.service.startService()
        h.worker.unread = 60
        ready = h.service.whenReady()
        h.clock.advance(5.9)
        self.assertNoResult(ready)
        self.assertEqual(h.service.state, "starting")
        h.worker.unread = 0
        h.worker.answer_handshake({"protocol": 2, "calls": ["tokenize"], "model": "slow"})
        self.successResultOf(ready)
        self.assertEqual(h.client.info.model, "slow")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_older_worker_that_reads_late_is_ready_once_it_has_read(self):
        """
        An older worker that reads the handshake after the grace, and never
        answers it, is ready once it has read it.
        """
        h = Harness(startup_grace=2.0)
        h.service.startService()
        h.worker.unread = 60
        ready = h.service.whenReady()
        h.clock.advance(4.0)
        self.assertNoResult(ready)
        h.worker.unread = 0
        h.clock.advance(0.1)
        self.successResultOf(ready)
        self.assertIsNone(h.client.info.calls)
        # Only the handshake's own reply timeout is left: no more looks.
        [timeout] = h.clock.getDelayedCalls()
        self.assertGreater(timeout.getTime(), 200)

    def test_worker_that_cannot_tell_is_ready_after_grace(self):
        """
        A worker whose unread bytes cannot be told is taken as an older
        worker after the grace, as before.
        """
        h = Harness(startup_grace=2.0)
        h.service.startService()
        h.worker.unread = None
        ready = h.service.whenReady()
        h.clock.advance(2.0)
        self.successResultOf(ready)

    def test_stop_while_waiting_for_a_loading_worker(self):
        h = Harness(startup_grace=2.0)
        h.service.startService()
        h.worker.unread = 60
        h.clock.advance(3.0)
        d = h.service.stopService()
        h.worker.exit("exited with status 0")
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_exit_during_startup_is_fatal(self):
        h = Harness()
        h.service.startService()
        ready = h.service.whenReady()
        failed = h.service.whenFailed()
        h.worker.exit("exited with status 3")
        error = self.failureResultOf(ready, WorkerStartupError).value
        self.assertIn("exited with status 3 during start-up", str(error))
        self.assertIsInstance(self.successResultOf(failed), WorkerStartupError)
        self.assertEqual(h.service.state, "failed")
        self.assertEqual(len(h.workers), 1)
        self.failureResultOf(h.service.whenReady(), WorkerStartupError)

    def test_spawn_failure_is_fatal(self):
        h = Harness()

        def broken(*args, **kwargs):
            raise OSError("no such file")

        h.spawn = broken
        h.service.startService()
        self.failureResultOf(h.service.whenReady(), WorkerStartupError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class RestartTests(SynchronousTestCase):
    def ready_harness(self, **kwargs):
        h = Harness(**kwargs)
        h.service.startService()
        h.worker.answer_handshake({"calls": ["a"], "cancel": True})
        return h

    def test_restart_after_crash(self):
        h = self.ready_harness()
        pending = h.client.call("a", {})
        h.worker.exit("was killed by SIGKILL")
        self.assertEqual(self.failureResultOf(pending).value.status, 502)
        self.assertEqual(h.service.state, "restarting")
        self.assertEqual(h.service.describe(), "The worker is restarting; it last was killed by SIGKILL.")
        h.clock.advance(h.service.min_delay)
        self.assertEqual(len(h.workers), 2)
        self.assertEqual(h.service.state, "starting")
        h.worker.answer_handshake({"calls": ["a"]})
        self.assertTrue(h.service.ready)
        self.assertEqual(h.service.restarts, 1)
        self.assertEqual(h.service.describe(), "The worker is ready (1 restart(s) so far).")
        # Ids keep increasing across workers.
        d = h.client.call("a", {})
        request = h.worker.requests()[-1]
        self.assertGreater(request["id"], 2)
        h.worker.protocol.dataReceived(msgpack.packb({"id": request["id"], "data": 1}))
        self.assertEqual(self.successResultOf(d), 1)

    def test_backoff_grows_while_the_worker_keeps_dying(self):
        h = self.ready_harness()
        delays = []
        for _ in range(8):
            h.worker.exit()
            [restart] = h.clock.getDelayedCalls()
            delays.append(restart.getTime() - h.clock.seconds())
            h.clock.advance(delays[-1])
        self.assertEqual(delays[:4], [0.5, 1.0, 2.0, 4.0])
        self.assertEqual(max(delays), h.service.max_delay)
        self.assertEqual(len(h.workers), 9)

    def test_backoff_resets_after_a_stable_run(self):
        h = self.ready_harness()
        h.worker.exit()
        h.clock.advance(0.5)
        h.worker.exit()
        h.clock.advance(1.0)
        h.worker.answer_handshake({})
        h.clock.advance(h.service.stable_after)
        h.worker.exit()
        [restart] = h.clock.getDelayedCalls()
        self.assertEqual(restart.getTime() - h.clock.seconds(), h.service.min_delay)

    def test_max_restarts(self):
        h = self.ready_harness(max_restarts=2)
        failed = h.service.whenFailed()
        h.worker.exit()
        h.clock.advance(10)
        h.worker.exit()
        h.clock.advance(10)
        self.assertNoResult(failed)
        h.worker.exit()
        self.assertIn("--max-restarts 2", str(self.successResultOf(failed)))
        self.assertEqual(h.service.state, "failed")
        self.assertEqual(len(h.workers), 3)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_max_restarts_zero_exits_with_the_worker(self):
        h = self.ready_harness(max_restarts=0)
        failed = h.service.whenFailed()
        h.worker.exit()
        self.successResultOf(failed)
        self.assertEqual(len(h.workers), 1)


class BrokenSocketTests(SynchronousTestCase):
    def test_worker_is_stopped_when_its_socket_closes(self):
        h = Harness(stop_timeout=5)
        h.service.startService()
        h.worker.answer_handshake({})
        h.worker.protocol.dataReceived(b"\xc1")
        h.worker.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(h.worker.socket_closed)
        h.clock.advance(5)
        self.assertEqual(h.worker.signals, ["TERM"])
        h.worker.how = "was killed by SIGTERM"
        for d in h.worker._waiters:
            d.callback(h.worker.how)
        self.assertEqual(h.service.state, "restarting")
        h.clock.advance(h.service.min_delay)
        self.assertEqual(len(h.workers), 2)
        h.clock.advance(10)
        self.assertEqual(h.workers[0].signals, ["TERM"])


class StopTests(SynchronousTestCase):
    def started(self, **kwargs):
        h = Harness(**kwargs)
        h.service.startService()
        h.worker.answer_handshake({})
        return h

    def test_worker_exits_on_eof(self):
        h = self.started()
        d = h.service.stopService()
        self.assertTrue(h.worker.socket_closed)
        self.assertNoResult(d)
        h.worker.exit("exited with status 0")
        self.successResultOf(d)
        self.assertEqual(h.worker.signals, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(h.workers), 1)

    def test_term_then_kill(self):
        h = self.started(stop_timeout=5)
        d = h.service.stopService()
        h.clock.advance(4.9)
        self.assertEqual(h.worker.signals, [])
        h.clock.advance(0.1)
        self.assertEqual(h.worker.signals, ["TERM"])
        h.clock.advance(5)
        self.assertEqual(h.worker.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        h.worker.exit("was killed by SIGKILL")
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(h.workers), 1)

    def test_stop_while_waiting_to_restart(self):
        h = self.started()
        h.worker.exit()
        self.assertEqual(h.service.state, "restarting")
        self.successResultOf(h.service.stopService())
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(h.workers), 1)

    def test_stop_during_startup(self):
        h = Harness()
        h.service.startService()
        d = h.service.stopService()
        h.worker.exit("exited with status 0")
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class InterfaceTests(SynchronousTestCase):
    def test_fake_worker_and_spawner(self):
        h = Harness()
        h.service.startService()
        verifyObject(IWorkerSpawner, h)
        verifyObject(IWorkerProcess, h.worker)

    def test_env_is_passed(self):
        h = Harness(env={"A": "1"})
        h.service.startService()
        self.assertEqual(h.env, {"A": "1"})
