"""
Every implementation of every interface of ours, fakes included, checked
against its interface, and the public names of L{hfendpoint.testing}.
"""

import socket
from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface.verify import verifyObject

import hfendpoint.testing
from hfendpoint.api import MemoryImageStore
from hfendpoint.backend import WorkerClient, WorkerPool, WorkerProtocol, WorkerProcess
from hfendpoint.backend._process import ProcessSpawner, WorkerProcessProtocol
from hfendpoint.backend._protocol import IMessageReceiver, WorkerProtocolFactory
from hfendpoint.interfaces import IImageStore, IWorkerClient, IWorkerProcess, IWorkerSpawner
from hfendpoint.testing import FakeWorkerClient, MemoryAgent, MemoryGateway, MemoryWorkerSpawner


class WorkerSideTests(SynchronousTestCase):
    def test_worker_client(self):
        client = WorkerClient(Clock())
        verifyObject(IWorkerClient, client)
        verifyObject(IMessageReceiver, client)

    def test_pool(self):
        client = WorkerClient(Clock())
        verifyObject(IWorkerClient, WorkerPool([(SimpleNamespace(ready=True), client)]))

    def test_fake_worker_client(self):
        verifyObject(IWorkerClient, FakeWorkerClient())

    def test_image_store(self):
        verifyObject(IImageStore, MemoryImageStore(1024))

    def test_process_spawner(self):
        verifyObject(IWorkerSpawner, ProcessSpawner(MemoryReactorClock()))

    def test_worker_process(self):
        protocol = WorkerProtocol(WorkerClient(Clock()))
        process = WorkerProcess(SimpleNamespace(pid=42), WorkerProcessProtocol(), SimpleNamespace(protocol=protocol))
        verifyObject(IWorkerProcess, process)

    def test_memory_spawner_and_process(self):
        clock = MemoryReactorClock()
        spawner = MemoryWorkerSpawner(clock, lambda argv, env: {"handlers": {}})
        verifyObject(IWorkerSpawner, spawner)
        process = spawner.spawn(["w"], {"A": "1"}, WorkerProtocolFactory(WorkerClient(clock)))
        verifyObject(IWorkerProcess, process)
        self.assertEqual((process.argv, process.env), (["w"], {"A": "1"}))


class UnreadBytesTests(SynchronousTestCase):
    """
    What the gateway wrote and the worker has not read yet, as the
    supervisor asks it of a real worker's socket.
    """

    def test_unread_until_read(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        protocol = WorkerProtocol(WorkerClient(Clock()))
        connection = SimpleNamespace(protocol=protocol, getHandle=lambda: ours)
        process = WorkerProcess(SimpleNamespace(pid=42), WorkerProcessProtocol(), connection)
        self.assertEqual(process.unread_bytes(), 0)
        ours.send(b"x" * 100)
        self.assertGreater(process.unread_bytes(), 0)
        theirs.recv(1000)
        self.assertEqual(process.unread_bytes(), 0)

    def test_cannot_tell(self):
        protocol = WorkerProtocol(WorkerClient(Clock()))
        process = WorkerProcess(SimpleNamespace(pid=42), WorkerProcessProtocol(), SimpleNamespace(protocol=protocol))
        self.assertIsNone(process.unread_bytes())


class MemoryHTTPTests(SynchronousTestCase):
    def test_agent_and_its_parts(self):
        memory = MemoryGateway()
        agent = MemoryAgent(memory)
        verifyObject(IAgent, agent)
        endpoint = hfendpoint.testing._SiteEndpoint(memory)
        verifyObject(IStreamClientEndpoint, endpoint)
        verifyObject(IAgentEndpointFactory, endpoint)
        verifyObject(IBodyProducer, hfendpoint.testing._BytesProducer(b"x"))


class ExportTests(SynchronousTestCase):
    def test_testing_exports(self):
        for name in hfendpoint.testing.__all__:
            self.assertTrue(hasattr(hfendpoint.testing, name), name)
