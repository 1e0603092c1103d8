"""
Work done once at the end of the reactor's turn for everything that asked
for it during the turn: the writes of event streams and HTTP channels,
gathered so that each socket gets one send per turn, the work that can
wait for the end of the turn, and a brief wait for a lone call's reply.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable, Optional
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorTime

#: Seconds of after-work (L{TurnFlusher.after}) run in one turn at most;
#: the rest waits for the next turns, so that the reactor reads what came
#: in the meantime first. When a model's step ends a thousand streams at
#: once, their ends (a final chunk, C{[DONE]}, the request's end, its log
#: line) cost some 30 ms together, and the tokens of the streams still
#: running, read behind them, should not wait for all of it.
AFTER_SLICE = 0.002

#: Seconds the reactor polls, busy, for what comes next after a turn that
#: sent a lone worker call, before it sleeps (see L{TurnFlusher.busy_poll}).
DEFAULT_BUSY_POLL = 0.0002


class TurnFlusher:
    """
    Flushes, at the end of the reactor's turn, everything that asked for
    it during the turn, with one timed call for all of them.

    Event streams flush into their channels and channels to their sockets;
    a channel that an event stream's flush adds is flushed in the same
    call, after it.
    """

    #: Set while the gateway handles the last reply of what it has read
    #: from a worker: nothing more is known to be coming this turn.
    last_reply = False

    #: After a turn that sent a call while no other was in flight, seconds
    #: to poll the reactor's epoll (busy, yielding the CPU between polls)
    #: before sleeping in it; 0 never does. A process asleep in epoll takes
    #: some 20 us to wake on a VM, about what a fast worker (a tokenizer,
    #: a small embedding model) takes to answer: waiting awake for such a
    #: reply cut the gateway's added latency by 15-25 us. Any event ends
    #: the wait (the reply, a new request), so it costs nothing under load;
    #: a slow worker costs this much CPU per lone call.
    busy_poll = DEFAULT_BUSY_POLL

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._poller = _epoll_of(clock)
        self._expecting = False
        self._pending: list[Any] = []
        self._after: list[Callable[[], object]] = []
        self._call: Any = None
        self._running = False

    def alone(self, item: Any) -> bool:
        """
        Whether C{item} may flush now rather than at the end of the turn:
        it is the only one waiting and no other reply is known to be coming
        in this turn, so waiting would gather nothing and only delay it.
        """
        return self.last_reply and len(self._pending) == 1 and self._pending[0] is item

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
        if self._call is None and not self._running:
            self._call = self._clock.callLater(0, self._run)

    def expect_reply(self) -> None:
        """
        A call was sent while no other was in flight: once this turn's
        writes are out, wait up to L{busy_poll} seconds, awake, for the next
        event rather than sleep.
        """
        self._expecting = True
        if self._call is None and not self._running:
            self._call = self._clock.callLater(0, self._run)

    def flush(self) -> None:
        """
        Flush now what was added so far, rather than at the end of the
        turn: for a turn long enough that the first of its writes should
        not wait for the last.
        """
        if self._running or not self._pending:
            return
        if self._call is not None and not (self._after or self._expecting):
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
            self._run_after()
            self._flush_pending()
            self._await_reply()
        finally:
            self._running = False
            if (self._pending or self._after) and self._call is None:
                self._call = self._clock.callLater(0, self._run)

    def _await_reply(self) -> None:
        """
        After a turn that sent a lone call (L{expect_reply}), poll for what
        comes next, unless there is work left for the next turn.
        """
        expecting, self._expecting = self._expecting, False
        if expecting and not self._after and self.busy_poll > 0 and self._poller is not None:
            wait_for_event(self._poller, self.busy_poll)

    def _run_after(self) -> None:
        """
        Run the after-work for up to L{AFTER_SLICE} seconds; what is left
        stays first in line for the next turn.
        """
        seconds = self._clock.seconds
        deadline = seconds() + AFTER_SLICE
        while self._after:
            functions, self._after = self._after, []
            for done, function in enumerate(functions, 1):
                function()
                if seconds() >= deadline:
                    self._after[:0] = functions[done:]
                    return


def _epoll_of(reactor: Any) -> Optional[Any]:
    """
    The epoll object of an epoll reactor, or C{None} for any other.
    """
    poller = getattr(reactor, "_poller", None)
    return poller if isinstance(poller, select.epoll) else None


def wait_for_event(
    poller: Any,
    seconds: float,
    now: Callable[[], float] = time.perf_counter,
    pause: Callable[[], object] = os.sched_yield,
) -> bool:
    """
    Poll C{poller} (level-triggered: an event seen here is still there for
    the reactor) until it has an event or C{seconds} have passed, giving
    the CPU to whoever wants it between two polls: the worker itself, when
    the scheduler put it on this CPU.

    @return: whether an event came.
    """
    deadline = now() + seconds
    while not poller.poll(0, 1):
        if now() >= deadline:
            return False
        pause()
    return True


_flushers: "WeakKeyDictionary[Any, TurnFlusher]" = WeakKeyDictionary()


def flusher_for(clock: IReactorTime) -> TurnFlusher:
    """
    The one L{TurnFlusher} of C{clock}.
    """
    flusher = _flushers.get(clock)
    if flusher is None:
        flusher = _flushers[clock] = TurnFlusher(clock)
    return flusher
