"""
Tests for L{hfendpoint.service._tuning}: the settings the gateway's own
entry points make to their process.
"""

import gc
import platform
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.service import _tuning as tuning


class FakeLibc:
    def __init__(self, answer=1):
        self.answer = answer
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


class AllocatorTests(SynchronousTestCase):
    def test_sets_thresholds(self):
        libc = FakeLibc()
        self.assertTrue(tuning.tune_allocator({}, libc))
        self.assertEqual(
            libc.calls,
            [
                (tuning.M_MMAP_THRESHOLD, tuning.MMAP_THRESHOLD),
                (tuning.M_TRIM_THRESHOLD, tuning.TRIM_THRESHOLD),
            ],
        )

    def test_operator_settings_win(self):
        for name in tuning.OPERATOR_SETTINGS:
            libc = FakeLibc()
            self.assertFalse(tuning.tune_allocator({name: "1"}, libc))
            self.assertEqual(libc.calls, [])

    def test_refused(self):
        self.assertFalse(tuning.tune_allocator({}, FakeLibc(answer=0)))

    def test_no_mallopt(self):
        self.assertFalse(tuning.tune_allocator({}, object()))


class Reactor:
    def __init__(self):
        self.when_running = []

    def callWhenRunning(self, f, *args, **kwargs):
        self.when_running.append((f, args, kwargs))


class CollectorTests(SynchronousTestCase):
    def setUp(self):
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_young_threshold_raised_older_kept(self):
        _, middle, old = gc.get_threshold()
        tuning.tune_collector(Reactor())
        self.assertEqual(gc.get_threshold(), (tuning.YOUNG_THRESHOLD, middle, old))

    def test_freezes_once_running(self):
        gc.unfreeze()
        reactor = Reactor()
        tuning.tune_collector(reactor)
        self.assertEqual(gc.get_freeze_count(), 0)
        [(f, args, kwargs)] = reactor.when_running
        f(*args, **kwargs)
        self.assertGreater(gc.get_freeze_count(), 1000)


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == self.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class DescriptorLimitTests(SynchronousTestCase):
    def test_soft_raised_to_hard(self):
        resource = FakeResource(1024, 524288)
        self.assertEqual(tuning.raise_descriptor_limit(resource), 524288)
        self.assertEqual(resource.limits, (524288, 524288))

    def test_already_at_hard(self):
        resource = FakeResource(4096, 4096)
        self.assertEqual(tuning.raise_descriptor_limit(resource), 4096)
        self.assertEqual(resource.limits, (4096, 4096))

    def test_infinite_hard_limit(self):
        resource = FakeResource(1024, FakeResource.RLIM_INFINITY)
        self.assertEqual(tuning.raise_descriptor_limit(resource), 1024 * 1024)
        self.assertEqual(resource.limits, (1024 * 1024, 1024 * 1024))

    def test_refused(self):
        resource = FakeResource(1024, 2048, refuse=True)
        self.assertIsNone(tuning.raise_descriptor_limit(resource))
        self.assertEqual(resource.limits, (1024, 2048))

    def test_real_limit(self):
        """
        On this system's own limits, the soft limit ends at the hard one.
        """
        import resource

        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, limits)
        raised = tuning.raise_descriptor_limit()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(raised, soft)
        if hard != resource.RLIM_INFINITY:
            self.assertEqual(soft, hard)


# Holds eight 4 MiB buffers at a time (eight images in flight), frees
# them, twenty times over, and prints the page faults this took, after one
# round that may map the memory for the first time.
FAULTS = """
import resource, sys
from hfendpoint.service import _tuning as tuning
if sys.argv[1] == "tuned":
    assert tuning.tune_allocator({})
def churn():
    for i in range(20):
        held = [b"x" * (4 * 1024 * 1024) for _ in range(8)]
        del held
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


class RealLibcTests(SynchronousTestCase):
    def faults(self, mode):
        out = subprocess.run(
            [sys.executable, "-c", FAULTS, mode], env={}, capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    def test_freed_blocks_reused_without_faults(self):
        """
        With glibc, big blocks freed are reused with no page faults, where
        by default each one is mapped again; elsewhere nothing is set.
        """
        if platform.libc_ver()[0] != "glibc":
            self.assertFalse(tuning.tune_allocator({}))
            return
        untuned, tuned = self.faults("untuned"), self.faults("tuned")
        # 160 blocks of 1024 pages each, nearly all mapped again.
        self.assertGreater(untuned, 100_000)
        self.assertLess(tuned, 1000)
