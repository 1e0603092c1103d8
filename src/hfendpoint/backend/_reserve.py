"""
A reserve of file descriptors, for when the process runs out of them.

Every client connection costs a descriptor, so a gateway under a flood of
idle connections can reach its limit; the next worker spawn (a socket
pair, pipes, /dev/null) then fails with C{EMFILE}. Servers keep a spare
descriptor for that moment (nginx, libuv's accept loop, Node's
"emfile trick"): closing it gives back enough room for the one thing
that must not fail, after which it is taken again. The reserve here
holds a few, since a spawn needs several at once, and says that the
descriptors ran out once per shortage rather than once per failure.
"""

from __future__ import annotations

import errno
import os
import weakref
from typing import Any, Callable, TypeVar

from twisted.logger import Logger

#: Descriptors held back: a spawn opens a socket pair, /dev/null and two
#: pipes of two ends each; one more is an accept to refuse a client.
DEFAULT_RESERVE = 8

#: The errors of a process (or a system) out of descriptors.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

T = TypeVar("T")


def is_out_of_descriptors(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in OUT_OF_DESCRIPTORS


class DescriptorReserve:
    """
    Descriptors opened on C{/dev/null} and kept, to be given back to
    whatever needs them when none is left.

    @ivar short: whether the process is out of descriptors now (the last
        operation needed the reserve); the shortage is logged once, when
        it starts, and once more when it ends.
    """

    _log = Logger()

    def __init__(self, count: int = DEFAULT_RESERVE, opener: Callable[[], int] | None = None) -> None:
        self.count = count
        self._opener = opener or (lambda: os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        self._held: list[int] = []
        self.short = False
        # Descriptors are not memory: a reserve forgotten without close()
        # still gives them back.
        weakref.finalize(self, _close_all, self._held)

    @property
    def held(self) -> int:
        return len(self._held)

    def hold(self) -> None:
        """
        Take back as many descriptors as the reserve lacks, as far as the
        process can spare them.
        """
        while len(self._held) < self.count:
            try:
                self._held.append(self._opener())
            except OSError:
                return

    def release(self) -> None:
        """
        Close every descriptor held, for the caller to use.
        """
        _close_all(self._held)

    def run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """
        Call C{function}; if it fails for want of descriptors, give it the
        reserve and call it once more, then take the reserve back.

        @param what: what the call does, for the log ("start the worker").
        @raise OSError: what the second try raised, or any other error.
        """
        try:
            result = function(*args)
        except OSError as error:
            if not is_out_of_descriptors(error):
                raise
            self.ran_out(what, error)
            self.release()
            try:
                return function(*args)
            finally:
                self.hold()
        self.settle()
        return result

    def ran_out(self, what: str, error: OSError) -> None:
        """
        Note that the process is out of descriptors (C{error} said so) and
        that the reserve is used to C{what}; said once per shortage.
        """
        if self.short:
            return
        self.short = True
        self._log.warn(
            "Out of file descriptors ({error}): using the reserve of {count} to {what}; "
            "raise the limit (ulimit -n) or lower the number of client connections. "
            "Said once until descriptors are available again.",
            error=os.strerror(error.errno),
            count=len(self._held),
            what=what,
        )

    def settle(self) -> None:
        """
        After something that needed descriptors got them without the
        reserve: take back what the reserve lacks; if it is whole again,
        the shortage (if any) is over, which is said once.
        """
        self.hold()
        if self.short and len(self._held) == self.count:
            self.short = False
            self._log.info("File descriptors are available again")

    def close(self) -> None:
        self.release()


def _close_all(held: list[int]) -> None:
    while held:
        try:
            os.close(held.pop())
        except OSError:
            pass
