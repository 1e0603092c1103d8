"""
The worker client: request ids, pending calls, replies routed by id,
timeouts and cancellation.

It outlives any one worker process: the supervisor attaches each new
worker socket to it, so ids keep increasing for the life of the gateway
and the HTTP side never needs to know that a worker was restarted.
"""

from __future__ import annotations

from collections import OrderedDict
from contextvars import ContextVar
from functools import partial
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hfendpoint.errors import (
    OpenAIError,
    invalid_request,
    timed_out,
    worker_failed,
    worker_gone,
    worker_unavailable,
)
from hfendpoint.interfaces import IWorkerClient
from hfendpoint.backend._budget import ReplyBudget
from hfendpoint.backend._protocol import IMessageReceiver, ProtocolViolation, WorkerProtocol
from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.wire import CANCEL, PING_KEY, REQUEST_ID_KEY

#: The call names of our protocol extensions (PROTOCOL.md, "Extending it").

OnReply = Callable[[Any], bool]
MAX_ABANDONED = 4096


def single_reply(client: Any, name: str, data: Any) -> Deferred:
    """
    A call of C{client} that has exactly one reply, made with its
    C{request}: the Deferred fires with that reply's C{data}.
    """
    box: list[Any] = []

    def on_reply(reply: Any) -> bool:
        box.append(reply)
        return True

    return client.request(name, data, on_reply).addCallback(lambda _: box[0])


def _succeed(deferred: Deferred) -> None:
    # Unless it was cancelled since its call ended.
    if not deferred.called:
        deferred.callback(None)


#: The id of the HTTP request being served, set by the API for the calls it
#: makes (a context variable: each request's coroutine has its own), and
#: sent with each call so that the worker's logs can be joined with ours.
REQUEST_ID: ContextVar[Optional[str]] = ContextVar("hfendpoint_request_id", default=None)


class WorkerInfo:
    """
    What the worker told us of itself.

    @ivar calls: the call names it serves, or C{None} when it did not say
        (a worker that predates the handshake), in which case every call
        is tried.
    @ivar model: its model name, if it gave one.
    @ivar cancel: whether it understands cancel messages.
    @ivar features: optional abilities it announced, such as C{chat_n}
        (it produces C{n} chat choices itself, tagging chunks with C{index}).
    @ivar ping: whether it answers the liveness probe, C{hfendpoint.ping}.
    """

    def __init__(
        self,
        calls: Optional[frozenset[str]] = None,
        model: Optional[str] = None,
        cancel: bool = False,
        protocol: int = 1,
        features: frozenset[str] = frozenset(),
        ping: bool = False,
    ) -> None:
        self.ping = ping
        self.calls = calls
        self.model = model
        self.cancel = cancel
        self.protocol = protocol
        self.features = features

    @classmethod
    def from_reply(cls, reply: Any) -> "WorkerInfo":
        """
        Read a handshake reply leniently: a worker may leave out anything.
        """
        if not isinstance(reply, dict):
            return cls()
        calls = reply.get("calls")
        model = reply.get("model")
        features = reply.get("features")
        return cls(
            calls=frozenset(c for c in calls if isinstance(c, str))
            if isinstance(calls, (list, tuple))
            else None,
            model=model if isinstance(model, str) and model else None,
            cancel=reply.get("cancel") is True,
            protocol=reply.get("protocol") if isinstance(reply.get("protocol"), int) else 1,
            features=frozenset(f for f in features if isinstance(f, str))
            if isinstance(features, (list, tuple))
            else frozenset(),
            ping=reply.get(PING_KEY) is True,
        )

    def serves(self, name: str) -> bool:
        return self.calls is None or name in self.calls


class _Pending:
    __slots__ = (
        "ident", "on_reply", "deferred", "timer", "protocol", "deadline", "replies", "last_reply_at",
        "held",
    )

    def __init__(
        self,
        ident: int,
        on_reply: OnReply,
        deferred: Deferred,
        timer: IDelayedCall,
        protocol: WorkerProtocol,
    ) -> None:
        self.protocol = protocol
        self.deadline: Optional[float] = None
        self.replies = 0
        self.last_reply_at = 0.0
        self.held = 0
        self.ident = ident
        self.on_reply = on_reply
        self.deferred = deferred
        self.timer = timer


@implementer(IWorkerClient, IMessageReceiver)
class WorkerClient:
    """
    Past any of its timeouts a call fails with a 504 and the worker is
    told to stop it.

    @ivar reply_timeout: seconds allowed between two replies (and for the
        first one, unless C{first_reply_timeout} is set).
    @ivar first_reply_timeout: seconds allowed for the first reply (time to
        first token), or C{None} for C{reply_timeout}.
    @ivar request_timeout: seconds allowed for a whole call, or C{None}.

    With a C{flusher}, a call whose last reply is not the last one read
    completes at the end of the reactor's turn (L{TurnFlusher.after}):
    when a model's step ends hundreds of streams among thousands of
    tokens, what each end sets off (the response's end, the next batch)
    costs ten times a token, and the tokens that follow in the read, sent
    by the read's early flushes, should not wait for it. The last reply
    read completes its call at once; its protocol hands it over as the
    last work of the turn (L{TurnFlusher.run_last}), so that a response it
    finishes alone leaves at once.

    @ivar flusher: the L{TurnFlusher} given, which the protocols of the
        worker sockets hold their writes on too.
    @ivar budget: the L{ReplyBudget} bounding the bytes of replies held by
        calls in flight (shared by the clients of a pool), or C{None}.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        reply_timeout: float = 300.0,
        first_reply_timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
        flusher: Optional[TurnFlusher] = None,
        budget: Optional[ReplyBudget] = None,
    ) -> None:
        self._reactor = reactor
        self.budget = budget
        self._seconds = reactor.seconds
        self.flusher = flusher
        self.reply_timeout = reply_timeout
        self.first_reply_timeout = first_reply_timeout
        self.request_timeout = request_timeout
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._protocol: Optional[WorkerProtocol] = None
        self.info = WorkerInfo()
        #: How the last worker broke the protocol, if it did: its
        #: supervisor says so rather than only how the process ended.
        self.last_violation: Optional[str] = None
        # Calls given up on (cancelled, timed out): replies already on their
        # way for them are expected, and dropped without a warning each.
        self._abandoned: OrderedDict[int, None] = OrderedDict()

    # IMessageReceiver

    def connected(self, protocol: WorkerProtocol) -> None:
        self._protocol = protocol
        self.info = WorkerInfo()
        self.last_violation = None

    def disconnected(self, protocol: WorkerProtocol, reason: Failure) -> None:
        if self._protocol is protocol:
            self._protocol = None
        if reason.check(ProtocolViolation):
            self.last_violation = str(reason.value)
            error = worker_gone(f"The worker broke the protocol: {reason.value}")
        else:
            error = worker_gone("The worker exited while handling this request.")
        lost = [call for call in self._pending.values() if call.protocol is protocol]
        for call in lost:
            self._finish(call)
            self._fail(call, error)

    def message_received(self, message: dict, last: bool, size: int = 0) -> None:
        # Once per token of every stream: the usual reply (data for a call
        # in flight) takes no call of its own but its translator's.
        call = self._pending.get(message["id"])
        if call is None:
            self._unexpected(message)
            return
        if "error" in message or "data" not in message:
            self._not_data(call, message)
            return
        budget = self.budget
        if budget is not None:
            if budget.held + size > budget.limit:
                self._abandon(call, budget.refusal(size))
                return
            budget.held += size
            call.held += size
        call.replies += 1
        try:
            done = call.on_reply(message["data"])
        except OpenAIError as e:
            self._abandon(call, e)
            return
        except Exception:
            self._log.failure("A reply from the worker could not be used")
            self._abandon(call, worker_failed("The worker sent a reply the gateway cannot use."))
            return
        if done:
            self._finish(call)
            if last or self.flusher is None:
                call.deferred.callback(None)
            else:
                self.flusher.after(partial(_succeed, call.deferred))
        else:
            # The timer is not moved on every reply (a stream has thousands):
            # when it fires, it looks at the time of the last one.
            call.last_reply_at = self._seconds()

    def _unexpected(self, message: dict) -> None:
        """
        A reply for no call in flight: expected (and dropped quietly) for a
        call given up on, until its end.
        """
        if message["id"] in self._abandoned:
            if "error" in message:
                del self._abandoned[message["id"]]
            return
        self._log.warn(
            "Dropping a reply for id {id}, which no request waits for",
            id=message["id"],
        )

    def _not_data(self, call: _Pending, message: dict) -> None:
        if "error" in message:
            self._finish(call)
            self._fail(call, worker_failed(str(message["error"]), message.get("status")))
        else:
            self._abandon(call, worker_gone("The worker sent a reply with neither data nor error."))

    # IWorkerClient

    @property
    def connected_to_worker(self) -> bool:
        return self._protocol is not None

    def pending_count(self) -> int:
        return len(self._pending)

    def request(self, name: str, data: Any, on_reply: OnReply) -> Deferred:
        protocol = self._protocol
        if protocol is None:
            return fail(worker_unavailable("The worker is not running."))
        ident = self._next_id
        self._next_id += 1
        deferred: Deferred = Deferred(lambda d: self._cancelled(ident))
        first = self.first_reply_timeout or self.reply_timeout
        if self.request_timeout is not None:
            first = min(first, self.request_timeout)
        timer = self._reactor.callLater(first, self._expired, ident)
        call = _Pending(ident, on_reply, deferred, timer, protocol)
        if self.request_timeout is not None:
            call.deadline = self._reactor.seconds() + self.request_timeout
        self._pending[ident] = call
        try:
            message = {"id": ident, "name": name, "data": data}
            http_id = REQUEST_ID.get()
            if http_id is not None:
                message[REQUEST_ID_KEY] = http_id
            protocol.send(message, alone=len(self._pending) == 1)
        except (TypeError, ValueError, OverflowError) as e:
            self._finish(call)
            self._fail(call, invalid_request(f"The request cannot be sent to the worker: {e}"))
        return deferred

    def call(self, name: str, data: Any) -> Deferred:
        return single_reply(self, name, data)

    # Internals

    def _expired(self, ident: int) -> None:
        call = self._pending.get(ident)
        if call is None:
            return
        now = self._reactor.seconds()
        if call.replies:
            due = call.last_reply_at + self.reply_timeout
            if call.deadline is not None:
                due = min(due, call.deadline)
            if due > now:
                call.timer = self._reactor.callLater(due - now, self._expired, ident)
                return
        if call.deadline is not None and now >= call.deadline:
            why = f"The worker did not finish the request within {self.request_timeout:g} seconds."
        elif call.replies == 0 and self.first_reply_timeout:
            why = f"The worker did not start replying within {self.first_reply_timeout:g} seconds."
        else:
            why = f"The worker did not reply within {self.reply_timeout:g} seconds."
        self._abandon(call, timed_out(why))

    def _abandon(self, call: _Pending, error: OpenAIError) -> None:
        """
        Give up on a call the worker may still be working on.
        """
        self._finish(call)
        self._remember_abandoned(call.ident)
        self._tell_worker_to_stop(call.ident)
        self._fail(call, error)

    def _cancelled(self, ident: int) -> None:
        call = self._pending.get(ident)
        if call is not None:
            self._finish(call)
            self._remember_abandoned(ident)
            self._tell_worker_to_stop(ident)

    def _remember_abandoned(self, ident: int) -> None:
        self._abandoned[ident] = None
        if len(self._abandoned) > MAX_ABANDONED:
            self._abandoned.popitem(last=False)

    def _finish(self, call: _Pending) -> None:
        if call.held:
            self.budget.give(call.held)  # type: ignore[union-attr]
            call.held = 0
        self._pending.pop(call.ident, None)
        if call.timer.active():
            call.timer.cancel()

    def _fail(self, call: _Pending, error: OpenAIError) -> None:
        if not call.deferred.called:
            call.deferred.errback(Failure(error))

    def _tell_worker_to_stop(self, ident: int) -> None:
        protocol = self._protocol
        if protocol is None or not self.info.cancel:
            return
        cancel_id = self._next_id
        self._next_id += 1
        protocol.send({"id": cancel_id, "name": CANCEL, "data": {"id": ident}})
