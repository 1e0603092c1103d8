"""
The access log written straight to a stream, all the lines of a reactor
turn in one write.

Twisted's default sends each line through the legacy log, an observer that
formats its own timestamp, and one write to the terminal: on a busy gateway
that was a sixth of the CPU of a small chat request. A line here is the
same Combined Log Format line (it carries its own date), written in a
batch at the end of the turn that finished its requests.
"""

from __future__ import annotations

from typing import Any, Optional, TextIO

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class AccessLog:
    """
    The log file of a L{GatewaySite} (it has the C{write} and C{close} of
    Twisted's access log files).

    A stream that fails (a closed terminal, a full disk) costs its lines,
    never a request.
    """

    def __init__(self, stream: TextIO, clock: IReactorTime) -> None:
        self._stream = stream
        self._clock = clock
        self._lines: list[str] = []
        self._call: Optional[IDelayedCall] = None

    def write(self, line: str) -> None:
        self._lines.append(line)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """
        Write what is held; the stream itself belongs to whoever gave it.
        """
        self.flush()


def is_stream(value: Any) -> bool:
    return hasattr(value, "write") and hasattr(value, "flush")
