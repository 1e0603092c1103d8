"""
Tests for L{hfendpoint.collector}.
"""

import gc

from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.service import _collector as collector


class Reactor:
    def __init__(self):
        self.when_running = []

    def callWhenRunning(self, f, *args, **kwargs):
        self.when_running.append((f, args, kwargs))


class TuneTests(SynchronousTestCase):
    def setUp(self):
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_young_threshold_raised_older_kept(self):
        _, middle, old = gc.get_threshold()
        collector.tune(Reactor())
        self.assertEqual(gc.get_threshold(), (collector.YOUNG_THRESHOLD, middle, old))

    def test_freezes_once_running(self):
        gc.unfreeze()
        reactor = Reactor()
        collector.tune(reactor)
        self.assertEqual(gc.get_freeze_count(), 0)
        [(f, args, kwargs)] = reactor.when_running
        f(*args, **kwargs)
        self.assertGreater(gc.get_freeze_count(), 1000)
