"""
Dynamic batching of concurrent embeddings calls, as
text-embeddings-inference does it, so that a simple worker gets batched
throughput under load without adding latency when idle.

While fewer than C{max_concurrent} batches are at the worker, a request is
sent at once. Otherwise requests wait and are sent together in one
C{embeddings} call when a batch comes back, up to C{max_tokens} tokens
(and C{max_inputs} inputs) per call. Each caller gets its own rows, in
its own order.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hfendpoint.errors import worker_failed
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.wire import EMBEDDINGS


class _Waiter:
    __slots__ = ("tokens", "count", "deferred")

    def __init__(self, tokens: list[list[int]], deferred: Deferred) -> None:
        self.tokens = tokens
        self.count = sum(map(len, tokens))
        self.deferred = deferred


class EmbeddingBatcher:
    """
    @ivar batches: how many worker calls were made (for tests and figures).

    @param on_batch: told the number of inputs of each call it sends (the
        metrics' histogram of batch sizes).
    """

    def __init__(
        self,
        client: IWorkerClient,
        max_tokens: int = 16384,
        max_inputs: int = 2048,
        max_concurrent: int = 1,
        on_batch: Optional[Callable[[int], object]] = None,
    ) -> None:
        self._client = client
        self._on_batch = on_batch
        self.max_tokens = max_tokens
        self.max_inputs = max_inputs
        self.max_concurrent = max_concurrent
        self._queue: list[_Waiter] = []
        self._in_flight = 0
        self.batches = 0

    def embed(self, tokens: list[list[int]]) -> Deferred:
        """
        @return: a Deferred firing with one vector (as the worker sent it)
            per token list.
        """
        waiter = _Waiter(tokens, Deferred(lambda d: self._withdraw(waiter)))
        self._queue.append(waiter)
        if self._in_flight < self.max_concurrent:
            self._send()
        return waiter.deferred

    def _withdraw(self, waiter: _Waiter) -> None:
        if waiter in self._queue:
            self._queue.remove(waiter)

    def _take(self) -> list[_Waiter]:
        """
        The next batch: callers in order, within the budget (a single
        caller over the budget goes alone).
        """
        batch: list[_Waiter] = []
        tokens = inputs = 0
        while self._queue:
            waiter = self._queue[0]
            if batch and (
                tokens + waiter.count > self.max_tokens
                or inputs + len(waiter.tokens) > self.max_inputs
            ):
                break
            batch.append(self._queue.pop(0))
            tokens += waiter.count
            inputs += len(waiter.tokens)
        return batch

    def _send(self) -> None:
        batch = self._take()
        if not batch:
            return
        self._in_flight += 1
        self.batches += 1
        rows = [row for waiter in batch for row in waiter.tokens]
        if self._on_batch is not None:
            self._on_batch(len(rows))
        call = self._client.call(EMBEDDINGS, {"input": rows})
        call.addCallbacks(self._deliver, self._fail, callbackArgs=(batch,), errbackArgs=(batch,))
        call.addBoth(self._next)

    def _deliver(self, reply: Any, batch: list[_Waiter]) -> None:
        vectors: Optional[list] = reply.get("embeddings") if isinstance(reply, dict) else None
        total = sum(len(w.tokens) for w in batch)
        if not isinstance(vectors, list) or len(vectors) != total:
            self._fail(
                Failure(worker_failed("The worker's embeddings reply does not have one vector per input.")),
                batch,
            )
            return
        start = 0
        for waiter in batch:
            end = start + len(waiter.tokens)
            if not waiter.deferred.called:
                waiter.deferred.callback(vectors[start:end])
            start = end

    def _fail(self, failure: Failure, batch: list[_Waiter]) -> None:
        for waiter in batch:
            if not waiter.deferred.called:
                waiter.deferred.errback(failure)

    def _next(self, result: Any) -> None:
        self._in_flight -= 1
        while self._queue and self._in_flight < self.max_concurrent:
            self._send()
