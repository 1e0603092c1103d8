"""
Work done once at the end of the reactor's turn for everything that asked
for it during the turn: the writes of event streams, HTTP channels and
worker sockets, gathered so that each socket gets one send per turn, and
the work that can wait for the end of the turn.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger

#: Seconds of after-work (L{TurnFlusher.after}) run in one turn at most;
#: the rest waits for the next turns, so that the reactor reads what came
#: in the meantime first. When a model's step ends a thousand streams at
#: once, their ends (a final chunk, C{[DONE]}, the request's end, its log
#: line) cost some 30 ms together, and the tokens of the streams still
#: running, read behind them, should not wait for all of it.
AFTER_SLICE = 0.002
#: Calls of after-work in one unit of the Cooperator's work: a unit costs
#: it about half a microsecond, as much as the cheapest after-work, and a
#: few calls more past the end of a slice cost it little (the costliest,
#: a response's end, takes some 30 microseconds).
AFTER_UNIT = 8


class TurnFlusher:
    """
    Flushes, at the end of the reactor's turn, everything that asked for
    it during the turn, with one timed call for all of them.

    Event streams flush into their channels and channels to their sockets;
    a channel that an event stream's flush adds is flushed in the same
    call, after it.

    The gateway's service makes one and hands it to its site, its worker
    clients and their sockets, so that all their writes of a turn leave
    together.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: list[Any] = []
        self._call: Any = None
        self._running = False
        self._last = False
        # After-work runs as one cooperative task, in slices of
        # AFTER_SLICE, each slice at the end of a turn just before the
        # flush: the Cooperator's ticks are scheduled through _tick_at_end.
        self._after: deque[Callable[[], object]] = deque()
        self._tick: Optional[Callable[[], None]] = None
        self._draining = False
        self._cooperator = Cooperator(
            terminationPredicateFactory=self._slice, scheduler=self._tick_at_end
        )

    def alone(self, item: Any) -> bool:
        """
        Whether C{item} may flush now rather than at the end of the turn:
        it is the only one waiting and nothing more is known to be coming
        in this turn (L{run_last}), so waiting would gather nothing and only
        delay it.
        """
        return self._last and len(self._pending) == 1 and self._pending[0] is item

    def run_last(self, function: Callable[..., object], *args: Any) -> None:
        """
        Call C{function(*args)} as the last work known to come in this turn
        (the worker client handling the last reply read from its socket):
        while it runs, a write left L{alone} may leave at once.
        """
        last, self._last = self._last, True
        try:
            function(*args)
        finally:
            self._last = last

    def add(self, item: Any) -> None:
        """
        Call C{item.flush_now()} at the end of this turn.
        """
        self._pending.append(item)
        if self._call is None and not self._running:
            self._call = self._clock.callLater(0, self._run)

    def after(self, function: Callable[[], object]) -> None:
        """
        Call C{function} at the end of this turn, just before what is held
        is flushed, so that what it writes leaves with the rest; or, when
        the turn has more than L{AFTER_SLICE} of such work, at the end of
        one of the next turns, in order. An early L{flush} (in the middle
        of a long read) does not call it: work that can wait does not delay
        the writes such a flush is for.
        """
        self._after.append(function)
        if not self._draining:
            self._draining = True
            self._cooperator.cooperate(self._drain())

    def flush(self) -> None:
        """
        Flush now what was added so far, rather than at the end of the
        turn: for a turn long enough that the first of its writes should
        not wait for the last.
        """
        if self._running or not self._pending:
            return
        if self._call is not None and self._tick is None:
            # Nothing else wants the end of the turn.
            self._call.cancel()
            self._call = None
        self._running = True
        try:
            self._flush_pending()
        finally:
            self._running = False

    def _flush_pending(self) -> None:
        while self._pending:
            items, self._pending = self._pending, []
            for item in items:
                item.flush_now()

    def _run(self) -> None:
        self._call = None
        self._running = True
        try:
            tick, self._tick = self._tick, None
            if tick is not None:
                tick()
            self._flush_pending()
        finally:
            self._running = False
            if (self._pending or self._tick is not None) and self._call is None:
                self._call = self._clock.callLater(0, self._run)

    # The after-work, on the Cooperator.

    def _drain(self) -> Iterator[None]:
        """
        Call the after-work in order, up to L{AFTER_UNIT} calls per unit of
        work; ends, and lets L{after} start another, once none is left.
        """
        functions = self._after
        while True:
            for _ in range(AFTER_UNIT):
                function = functions.popleft()
                try:
                    function()
                except Exception:
                    self._log.failure("Work left for the end of the turn failed")
                if not functions:
                    self._draining = False
                    return
            yield None

    def _slice(self) -> Callable[[], bool]:
        deadline = self._clock.seconds() + AFTER_SLICE
        seconds = self._clock.seconds
        return lambda: seconds() >= deadline

    def _tick_at_end(self, tick: Callable[[], None]) -> "_EndOfTurn":
        self._tick = tick
        if self._call is None and not self._running:
            self._call = self._clock.callLater(0, self._run)
        return _EndOfTurn(self, tick)


class _EndOfTurn:
    """
    A tick of the L{Cooperator} waiting for the end of the turn; the
    Cooperator cancels it when it has no task left.
    """

    __slots__ = ("_flusher", "_tick")

    def __init__(self, flusher: TurnFlusher, tick: Callable[[], None]) -> None:
        self._flusher = flusher
        self._tick = tick

    def cancel(self) -> None:
        if self._flusher._tick is self._tick:
            self._flusher._tick = None
