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
