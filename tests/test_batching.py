"""
Dynamic batching of embeddings: every caller gets its own rows, in order,
and concurrent callers share worker calls within the budget.
"""

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.backend._batching import EmbeddingBatcher
from hfendpoint.errors import OpenAIError
from hfendpoint.testing import FakeWorkerClient


def vector_of(row):
    return [float(sum(row)), float(len(row))]


class BatcherTests(SynchronousTestCase):
    def setUp(self):
        self.worker = FakeWorkerClient({"embeddings": lambda data: None})
        self.batcher = EmbeddingBatcher(self.worker, max_tokens=10, max_inputs=4)

    def answer(self):
        """
        Answer the oldest pending worker call, each row with its own vector.
        """
        call = min(self.worker.pending.values(), key=lambda c: c.ident)
        call.reply({"embeddings": [vector_of(row) for row in call.data["input"]]})
        return call.data["input"]

    def test_idle_request_goes_at_once(self):
        d = self.batcher.embed([[1, 2]])
        self.assertEqual(len(self.worker.pending), 1)
        self.answer()
        self.assertEqual(self.successResultOf(d), [[3.0, 2.0]])

    def test_concurrent_requests_share_a_call_and_get_their_own_rows(self):
        first = self.batcher.embed([[1]])
        waiting = [self.batcher.embed([[i, i], [i]]) for i in range(2, 4)]
        self.assertEqual(len(self.worker.pending), 1)
        self.answer()
        self.assertEqual(len(self.worker.pending), 1)
        rows = self.answer()
        self.assertEqual(rows, [[2, 2], [2], [3, 3], [3]])
        self.assertEqual(self.successResultOf(first), [[1.0, 1.0]])
        self.assertEqual(self.successResultOf(waiting[0]), [[4.0, 2.0], [2.0, 1.0]])
        self.assertEqual(self.successResultOf(waiting[1]), [[6.0, 2.0], [3.0, 1.0]])
        self.assertEqual(self.batcher.batches, 2)

    def test_budget_splits_batches_in_order(self):
        self.batcher.embed([[0]])
        results = [self.batcher.embed([[i] * 4]) for i in range(1, 6)]
        self.answer()
        batches = []
        while self.worker.pending:
            batches.append(self.answer())
        # At most 10 tokens a call: two callers of 4 tokens each, in order.
        self.assertEqual(batches, [[[1] * 4, [2] * 4], [[3] * 4, [4] * 4], [[5] * 4]])
        self.assertEqual([self.successResultOf(d) for d in results], [[[4.0 * i, 4.0]] for i in range(1, 6)])

    def test_one_caller_over_budget_goes_alone(self):
        self.batcher.embed([[0]])
        big = self.batcher.embed([[1] * 50])
        self.answer()
        self.assertEqual(self.answer(), [[1] * 50])
        self.assertEqual(self.successResultOf(big), [[50.0, 50.0]])

    def test_error_fails_the_whole_batch_only(self):
        self.batcher.embed([[0]])
        a, b = self.batcher.embed([[1]]), self.batcher.embed([[2]])
        self.answer()
        [call] = self.worker.pending.values()
        call.error("boom")
        for d in (a, b):
            self.assertEqual(self.failureResultOf(d, OpenAIError).value.message, "boom")
        later = self.batcher.embed([[3]])
        self.answer()
        self.assertEqual(self.successResultOf(later), [[3.0, 1.0]])

    def test_wrong_row_count(self):
        d = self.batcher.embed([[1], [2]])
        [call] = self.worker.pending.values()
        call.reply({"embeddings": [[1.0]]})
        self.assertEqual(self.failureResultOf(d, OpenAIError).value.status, 500)

    def test_cancelled_caller_leaves_the_queue(self):
        self.batcher.embed([[0]])
        gone, kept = self.batcher.embed([[1]]), self.batcher.embed([[2]])
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.answer()
        self.assertEqual(self.answer(), [[2]])
        self.assertEqual(self.successResultOf(kept), [[2.0, 1.0]])


class HoldTests(SynchronousTestCase):
    """
    After a call of several callers returns, the next call is held for a
    moment, or until as many callers wait, so that batches do not fall
    into lock-step.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.worker = FakeWorkerClient({"embeddings": lambda data: None})
        self.batcher = EmbeddingBatcher(self.worker, max_tokens=100, clock=self.clock, hold=0.002)

    def answer(self):
        call = min(self.worker.pending.values(), key=lambda c: c.ident)
        call.reply({"embeddings": [vector_of(row) for row in call.data["input"]]})
        return call.data["input"]

    def batch_of_three(self):
        """
        A call of one caller, then one of three callers that queued
        behind it, answered.
        """
        self.batcher.embed([[0]])
        waiting = [self.batcher.embed([[i]]) for i in range(1, 4)]
        self.answer()
        self.assertEqual(self.answer(), [[1], [2], [3]])
        for d in waiting:
            self.successResultOf(d)

    def test_lone_caller_held_until_the_deadline(self):
        self.batch_of_three()
        d = self.batcher.embed([[9]])
        self.assertEqual(self.worker.pending, {})
        self.clock.advance(0.0019)
        self.assertEqual(self.worker.pending, {})
        self.clock.advance(0.0001)
        self.assertEqual(self.answer(), [[9]])
        self.successResultOf(d)

    def test_released_when_as_many_wait(self):
        self.batch_of_three()
        self.batcher.embed([[7]])
        self.batcher.embed([[8]])
        self.assertEqual(self.worker.pending, {})
        self.batcher.embed([[9]])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.answer(), [[7], [8], [9]])

    def test_nothing_held_after_a_lone_caller(self):
        self.batcher.embed([[1]])
        self.answer()
        self.batcher.embed([[2]])
        self.assertEqual(len(self.worker.pending), 1)

    def test_nothing_held_when_enough_wait(self):
        """
        Callers that queued while the call ran go at once when it returns.
        """
        self.batcher.embed([[0]])
        for i in range(1, 4):
            self.batcher.embed([[i]])
        self.answer()
        self.assertEqual(len(self.worker.pending), 1)
        for i in range(4, 8):
            self.batcher.embed([[i]])
        self.answer()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.answer(), [[4], [5], [6], [7]])

    def test_cancelled_while_held(self):
        self.batch_of_three()
        d = self.batcher.embed([[9]])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(0.002)
        self.assertEqual(self.worker.pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_a_clock_nothing_is_held(self):
        batcher = EmbeddingBatcher(self.worker, max_tokens=100)
        batcher.embed([[0]])
        for i in range(1, 4):
            batcher.embed([[i]])
        self.answer()
        self.answer()
        batcher.embed([[9]])
        self.assertEqual(len(self.worker.pending), 1)
