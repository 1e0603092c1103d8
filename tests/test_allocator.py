"""
Tests for L{hfendpoint.allocator}.
"""

import platform
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.service import _allocator as allocator


class FakeLibc:
    def __init__(self, answer=1):
        self.answer = answer
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


class TuneTests(SynchronousTestCase):
    def test_sets_thresholds(self):
        libc = FakeLibc()
        self.assertTrue(allocator.tune({}, libc))
        self.assertEqual(
            libc.calls,
            [
                (allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD),
                (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD),
            ],
        )

    def test_operator_settings_win(self):
        for name in allocator.OPERATOR_SETTINGS:
            libc = FakeLibc()
            self.assertFalse(allocator.tune({name: "1"}, libc))
            self.assertEqual(libc.calls, [])

    def test_refused(self):
        self.assertFalse(allocator.tune({}, FakeLibc(answer=0)))

    def test_no_mallopt(self):
        self.assertFalse(allocator.tune({}, object()))


# Holds eight 4 MiB buffers at a time (eight images in flight), frees
# them, twenty times over, and prints the page faults this took, after one
# round that may map the memory for the first time.
FAULTS = """
import resource, sys
from hfendpoint.service import _allocator as allocator
if sys.argv[1] == "tuned":
    assert allocator.tune({})
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
            self.assertFalse(allocator.tune({}))
            return
        untuned, tuned = self.faults("untuned"), self.faults("tuned")
        # 160 blocks of 1024 pages each, nearly all mapped again.
        self.assertGreater(untuned, 100_000)
        self.assertLess(tuned, 1000)
