"""
A gateway out of file descriptors keeps answering its listening socket:
the clients it cannot accept are accepted with the descriptors of its
reserve and closed at once, rather than left waiting in the backlog while
Twisted logs every attempt; the shortage is said once, when it starts and
when it ends.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet import tcp, unix
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint import _twisted_private
from hfendpoint._refusing import REFUSE_PER_PASS
from hfendpoint._refusing import ReservePort, listen_tcp
from hfendpoint.backend._reserve import DescriptorReserve

from .gateway import start_gateway
from .test_tls import make_certificate

#: Run in a child process: a whole gateway (the demo worker behind it)
#: whose process is then left with one free descriptor; clients come one
#: at a time, each taking that descriptor, so that the gateway cannot
#: accept them; then a few descriptors are given back and clients are
#: served again. Prints what the clients saw and what was logged, as JSON.
CHILD = r"""
import errno, json, os, resource, socket, sys, time

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))

from twisted.internet import reactor, threads
from twisted.logger import formatEvent, globalLogBeginner

lines = []
globalLogBeginner.beginLoggingTo(
    [lambda event: lines.append((event.get("log_level").name, formatEvent(event)))],
    redirectStandardIO=False,
)

from hfendpoint.service._config import GatewayConfig
from hfendpoint.service._service import GatewayService

REQUEST = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n"
out = {}


def visit(address):
    # What a client sees: "served", "closed" or "hung" (no answer in 5 s),
    # and the connection when it is served (kept open: it holds the
    # gateway's descriptor).
    client = socket.create_connection(address, timeout=5)
    try:
        client.sendall(REQUEST)
        answer = client.recv(1024)
    except socket.timeout:
        client.close()
        return "hung", None
    except ConnectionError:
        answer = b""
    if answer.startswith(b"HTTP/1.1 200"):
        return "served", client
    client.close()
    return "closed" if not answer else "other: %r" % answer[:40], None


def clients(address, reserve):
    result = {}
    kept = []
    fillers = []
    while True:
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE, e
            break
    # One descriptor left: each client takes it, so the gateway cannot
    # accept it.
    os.close(fillers.pop())
    seen = []
    started = time.monotonic()
    for _ in range(30):
        what, client = visit(address)
        seen.append(what)
        if client is not None:
            kept.append(client)
    result["short"] = seen
    result["short_seconds"] = time.monotonic() - started
    # The last client was closed while the gateway's reserve was given
    # back; one coming before it is held again would be closed with it.
    while reserve.held < reserve.count:
        time.sleep(0.01)
    # Six more descriptors: three clients (two descriptors each, theirs
    # and the gateway's) are served, the next one is not.
    for _ in range(6):
        os.close(fillers.pop())
    seen = []
    for _ in range(4):
        what, client = visit(address)
        seen.append(what)
        if client is not None:
            kept.append(client)
    result["again"] = seen
    for fd in fillers:
        os.close(fd)
    for client in kept:
        client.close()
    return result


def main():
    gateway = GatewayService(
        reactor, GatewayConfig(listen=["tcp:0:interface=127.0.0.1"], stop_timeout=5.0)
    )
    gateway.startService()

    def ready(_):
        port = gateway.ports[0]
        out["port"] = type(port).__name__
        return threads.deferToThread(
            clients, ("127.0.0.1", port.getHost().port), gateway.descriptors
        )

    def done(result):
        out.update(result)
        out["lines"] = lines
        return gateway.stopService()

    def failed(failure):
        out["error"] = failure.getTraceback()

    d = gateway.whenReady().addCallback(ready).addCallback(done).addErrback(failed)
    d.addBoth(lambda _: reactor.stop())


reactor.callWhenRunning(main)
reactor.run()
sys.stdout.write(json.dumps(out))
"""


class OutOfDescriptorsTests(TestCase):
    """
    The real thing, in a child process whose descriptors run out (on the
    private path even when this process is told to take the public one).
    """

    timeout = 120
    skip = (
        f"this Twisted has no {', '.join(_twisted_private.missing_names())}"
        if _twisted_private.missing_names()
        else None
    )

    async def test_clients_beyond_the_limit_are_closed_and_the_shortage_said_once(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        env.pop(_twisted_private.PUBLIC_ONLY_VARIABLE, None)
        output, errors, status = await getProcessOutputAndValue(
            sys.executable, ["-c", CHILD], env=env, reactor=_global_reactor
        )
        self.assertEqual(status, 0, errors.decode(errors="replace")[-3000:])
        out = json.loads(output)
        self.assertNotIn("error", out, out.get("error"))
        lines = [tuple(line) for line in out["lines"]]
        self.assertEqual(out["port"], "ReservePort")
        # (a) Every client the gateway could not accept was closed at once,
        # none left waiting.
        self.assertEqual(out["short"], ["closed"] * 30, lines[-20:])
        self.assertLess(out["short_seconds"], 20)
        # (c) With descriptors given back, clients are served again (until
        # they run out once more).
        self.assertEqual(out["again"], ["served"] * 3 + ["closed"])
        # (b) Each shortage said once, its end once; nothing per client or
        # per pass of the reactor.
        starts = [text for level, text in lines if text.startswith("Out of file descriptors")]
        ends = [text for level, text in lines if text == "File descriptors are available again"]
        self.assertEqual(len(starts), 2, lines)
        self.assertIn("close the new connections it cannot accept", starts[0])
        self.assertEqual(len(ends), 1, lines)
        noisy = [text for level, text in lines if "EMFILE" in text or "Could not accept" in text]
        self.assertEqual(noisy, [])


class FakeClient:
    closed = False

    def close(self) -> None:
        self.closed = True


class RefuseTests(SynchronousTestCase):
    """
    L{ReservePort.refuse}, with a listening socket made up.
    """

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.reactor = MemoryReactorClock()
        self.reserve = DescriptorReserve(count=3)
        self.addCleanup(self.reserve.close)
        self.reserve.hold()
        self.port = ReservePort(0, Factory(), reactor=self.reactor, reserve=self.reserve)
        self.port.connected = True
        self.port.startReading()

    def warnings(self) -> list[str]:
        return [
            e["log_format"]
            for e in self.events
            if e.get("log_format", "").startswith("Out of file descriptors")
        ]

    def test_clients_are_accepted_with_the_reserve_and_closed(self) -> None:
        waiting = [FakeClient() for _ in range(5)]
        held_while_accepting = []

        def accept() -> Any:
            held_while_accepting.append(self.reserve.held)
            if not waiting:
                raise BlockingIOError(errno.EAGAIN, "none")
            return waiting.pop(), ("127.0.0.1", 1234)

        closed = list(waiting)
        for _ in range(3):
            self.port.refuse(OSError(errno.EMFILE, "Too many open files"), accept)
        self.assertTrue(all(client.closed for client in closed))
        self.assertEqual(self.port.refused, 5)
        # The reserve was given back while accepting, taken again after.
        self.assertEqual(set(held_while_accepting), {0})
        self.assertEqual(self.reserve.held, 3)
        self.assertTrue(self.reserve.short)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn(self.port, self.reactor.readers)

    def test_at_most_so_many_clients_a_pass(self) -> None:
        def accept() -> Any:
            return FakeClient(), ("127.0.0.1", 1234)

        self.port.refuse(OSError(errno.ENFILE, "Too many open files in system"), accept)
        self.assertEqual(self.port.refused, REFUSE_PER_PASS)

    def test_a_reserve_that_gives_nothing_pauses_the_port(self) -> None:
        """
        When even the reserve does not let a client be accepted, the port
        stops reading for a moment rather than be woken at once, again
        and again, by a socket it cannot accept from.
        """

        def accept() -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        self.port.refuse(OSError(errno.EMFILE, "Too many open files"), accept)
        self.assertNotIn(self.port, self.reactor.readers)
        self.reactor.advance(ReservePort.pause)
        self.assertIn(self.port, self.reactor.readers)
        self.assertEqual(self.reserve.held, 3)

    def test_a_port_closed_while_paused_stays_closed(self) -> None:
        def accept() -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        self.port.refuse(OSError(errno.EMFILE, "Too many open files"), accept)
        self.port.connected = False
        self.reactor.advance(ReservePort.pause)
        self.assertNotIn(self.port, self.reactor.readers)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ListeningTests(TestCase):
    """
    Which ports the gateway's listeners get.
    """

    async def test_tcp_tls_and_unix_listeners(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key, certificate = make_certificate(directory)
        # A UNIX socket's path has a short limit.
        short = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, short, True)
        listen = [
            "tcp:0:interface=127.0.0.1",
            f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}",
            f"unix:{short}/gateway.sock",
        ]
        _, gateway = await start_gateway(self, listen=listen, wait_ready=False)
        plain, tls, local = gateway.ports
        self.assertIs(type(local), unix.Port)
        if not _twisted_private.DIRECT:
            # Twisted's own ports, TLS over TCP as Twisted does it.
            self.assertIs(type(plain), tcp.Port)
            self.assertIs(type(tls), tcp.Port)
            self.assertEqual(tls._type, "TLS")
            return
        self.assertIsInstance(plain, ReservePort)
        self.assertIsInstance(tls, ReservePort)
        self.assertEqual(tls._type, "TLS")
        self.assertIs(plain.descriptor_reserve, gateway.descriptors)
        self.assertIs(tls.descriptor_reserve, gateway.descriptors)
        self.assertEqual(gateway.descriptors.held, gateway.descriptors.count)

    def test_public_path_is_twisteds_own_port(self) -> None:
        self.patch(_twisted_private, "DIRECT", False)
        reserve = DescriptorReserve(count=1)
        self.addCleanup(reserve.close)
        port = listen_tcp(_global_reactor, 0, Factory(), interface="127.0.0.1", reserve=reserve)
        self.addCleanup(port.stopListening)
        self.assertIs(type(port), tcp.Port)
        self.assertEqual(reserve.held, 0)

    def test_without_a_reserve_twisteds_own_port(self) -> None:
        port = listen_tcp(_global_reactor, 0, Factory(), interface="127.0.0.1", reserve=None)
        self.addCleanup(port.stopListening)
        self.assertIs(type(port), tcp.Port)


class CheckTests(SynchronousTestCase):
    def test_a_port_that_accepts_otherwise_is_found(self) -> None:
        self.patch(tcp.Port, "doRead", lambda self: None)
        self.assertEqual(_twisted_private.missing_names(), ["Port.doRead(socket.accept)"])

    def test_a_port_without_its_log_label_is_found(self) -> None:
        self.patch(tcp.Port, "_type", None)
        self.assertEqual(_twisted_private.missing_names(), ["Port._type"])
