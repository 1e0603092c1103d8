"""
How the sentence-transformers worker keeps its model busy: every row to
embed, from whichever call, goes into one queue; one loop takes what is
queued, sorts it by length, cuts it into forward passes (L{plan}) and
runs them one at a time on the model's thread, while the event loop
keeps reading calls, which queue up for the next round. No call waits
for a batch to fill: a lone row runs at once when the model is idle, and
rows that come while it is busy share the next round.

Texts are embedded ahead: the gateway tokenizes text through the worker
before it asks for its vectors, and its embeddings batcher sends one call
at a time, the next only when the previous returns (a lone request, then
all that queued behind it, in lock-step). When C{tokenize} hands rows to
L{Engine.ahead}, they are queued at once with everything else that came
meanwhile, and the C{embeddings} call that follows finds them computed
or under way. A computed row waits for its call in a bounded store (the
oldest dropped first), for a text tokenized and never embedded.

A row is known by its token ids (and whether it starts with the model's
prompt, which the pooling may leave out): two calls for the same row
share one computation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Optional

from ._st_batches import plan

#: Computed rows kept for an C{embeddings} call that has not come yet.
KEEP_AHEAD = 8192


class _Row:
    __slots__ = ("key", "ids", "prompted", "future", "ahead", "waiters")

    def __init__(self, key: tuple, ids: Sequence[int], prompted: bool, future: asyncio.Future) -> None:
        self.key = key
        self.ids = ids
        self.prompted = prompted
        self.future = future
        # Calls to come for this row (tokenized ahead), and calls waiting.
        self.ahead = 0
        self.waiters = 0


class Engine:
    """
    @ivar forwards: forward passes run (for tests and figures).
    """

    def __init__(
        self,
        embedder: Any,
        batch_tokens: int,
        overhead: Optional[float],
        thread: concurrent.futures.Executor,
        keep_ahead: int = KEEP_AHEAD,
    ) -> None:
        self.embedder = embedder
        self.batch_tokens = batch_tokens
        self.overhead = overhead
        self.thread = thread
        self.keep_ahead = keep_ahead
        self.forwards = 0
        #: Called before each round, to wait (briefly) for rows on their
        #: way: the tokenizer's current batch, when texts are embedded ahead.
        self.settle: Optional[Any] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._rows: dict[tuple, _Row] = {}
        self._queue: list[_Row] = []
        self._unclaimed: OrderedDict[tuple, _Row] = OrderedDict()
        self._task: Optional[asyncio.Task] = None

    def _row(self, ids: Sequence[int]) -> _Row:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests run several): what belonged to the
            # old one cannot be awaited here.
            self._loop, self._task = loop, None
            self._rows, self._queue, self._unclaimed = {}, [], OrderedDict()
        prompted = bool(self.embedder.has_prompt(ids))
        key = (prompted, *ids)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = _Row(key, ids, prompted, loop.create_future())
            self._queue.append(row)
            if self._task is None:
                self._task = loop.create_task(self._run())
        return row

    def ahead(self, rows: Sequence[Sequence[int]]) -> None:
        """
        Start embedding C{rows}, for an C{embeddings} call expected soon.
        """
        for ids in rows:
            self._row(ids).ahead += 1

    async def embed(self, rows: Sequence[Sequence[int]]) -> list[Any]:
        """
        The vectors of C{rows} (float32 arrays), in order.
        """
        wanted = []
        for ids in rows:
            row = self._row(ids)
            if row.ahead:
                row.ahead -= 1
                self._unclaimed.pop(row.key, None)
            row.waiters += 1
            wanted.append(row)
        try:
            pending = {row.future for row in wanted if not row.future.done()}
            if pending:
                # Shared with other calls: a cancel of this one must not
                # cancel them.
                await asyncio.wait(pending)
            return [row.future.result() for row in wanted]
        finally:
            for row in wanted:
                row.waiters -= 1
                self._release(row)

    def _release(self, row: _Row) -> None:
        """
        Forget a computed row nobody waits for, unless a call is still to
        come for it.
        """
        if row.waiters or not row.future.done() or self._rows.get(row.key) is not row:
            return
        if row.ahead:
            self._unclaimed[row.key] = row
            while len(self._unclaimed) > self.keep_ahead:
                _, old = self._unclaimed.popitem(last=False)
                if self._rows.get(old.key) is old and not old.waiters:
                    del self._rows[old.key]
        else:
            del self._rows[row.key]

    def _take(self) -> list[_Row]:
        """
        The rows of the next round, in the order they came, up to
        C{batch_tokens} real tokens (one row at least); rows that no call
        wants anymore (all cancelled) are dropped.
        """
        taken: list[_Row] = []
        tokens = 0
        position = 0
        queue = self._queue
        while position < len(queue):
            row = queue[position]
            if taken and tokens + len(row.ids) > self.batch_tokens:
                break
            position += 1
            if not row.waiters and not row.ahead:
                if self._rows.get(row.key) is row:
                    del self._rows[row.key]
                row.future.cancel()
                continue
            taken.append(row)
            tokens += len(row.ids)
        del queue[:position]
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if self.settle is not None:
                    await self.settle()
                taken = self._take()
                for prompted in (True, False):
                    group = [row for row in taken if row.prompted is prompted]
                    if not group:
                        continue
                    for batch in plan([len(row.ids) for row in group], self.batch_tokens, self.overhead):
                        chosen = [group[i] for i in batch]
                        await self._forward(loop, chosen, prompted)
        finally:
            if self._loop is loop:
                self._task = None

    async def _forward(self, loop: asyncio.AbstractEventLoop, rows: list[_Row], prompted: bool) -> None:
        self.forwards += 1
        try:
            vectors = await loop.run_in_executor(self.thread, self.embedder.embed, [row.ids for row in rows], prompted)
        except asyncio.CancelledError:
            for row in rows:
                row.future.cancel()
            raise
        except Exception as error:
            for row in rows:
                if not row.future.done():
                    row.future.set_exception(error)
                    # Retrieved here, so that a row tokenized and never
                    # embedded does not log it again when dropped.
                    row.future.exception()
                self._forget(row)
            return
        for row, vector in zip(rows, vectors):
            if not row.future.done():
                row.future.set_result(vector)
            self._release(row)

    def _forget(self, row: _Row) -> None:
        """
        Drop a failed row: its waiters get the error, a later call tries
        again.
        """
        if self._rows.get(row.key) is row:
            del self._rows[row.key]
        self._unclaimed.pop(row.key, None)


class Tokenizer:
    """
    C{tokenize} calls that come together, tokenized together: one call
    into the model's tokenizer, on its own thread, for all the texts
    queued while the previous one ran (32 clients sending one sentence
    each make 32 calls, and a call costs more than a sentence).
    """

    def __init__(self, embedder: Any, thread: concurrent.futures.Executor, most: int = 4096) -> None:
        self.embedder = embedder
        self.thread = thread
        self.most = most
        self._queue: list[tuple[Sequence[str], asyncio.Future]] = []
        self._task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def settled(self, longest: float = 0.005) -> None:
        """
        Return once no text is being tokenized, or after C{longest}
        seconds: a round of the model that starts while 31 texts are being
        tokenized runs without them, alone, and they wait for the next.
        """
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + longest
        while self._task is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.0005)

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._task, self._queue = loop, None, []
        future = loop.create_future()
        self._queue.append((texts, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # After a failure, how many calls go one by one, to find whose
        # texts failed without failing the others.
        alone = 0
        try:
            while self._queue:
                taken: list[tuple[Sequence[str], asyncio.Future]] = []
                count = 0
                while self._queue and not (taken and (alone or count + len(self._queue[0][0]) > self.most)):
                    item = self._queue.pop(0)
                    if not item[1].cancelled():
                        taken.append(item)
                        count += len(item[0])
                if not taken:
                    continue
                alone = max(0, alone - 1)
                flat = [text for texts, _ in taken for text in texts]
                try:
                    rows = await loop.run_in_executor(self.thread, self.embedder.tokenize, flat)
                except asyncio.CancelledError:
                    for _, future in taken:
                        future.cancel()
                    raise
                except Exception as error:
                    if len(taken) > 1:
                        self._queue[:0] = taken
                        alone = len(taken)
                        continue
                    if not taken[0][1].done():
                        taken[0][1].set_exception(error)
                    continue
                start = 0
                for texts, future in taken:
                    end = start + len(texts)
                    if not future.done():
                        future.set_result(rows[start:end])
                    start = end
        finally:
            if self._loop is loop:
                self._task = None
