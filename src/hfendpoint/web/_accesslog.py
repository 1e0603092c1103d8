"""
The access log written straight to a stream, all the lines of a reactor
turn in one write.

Twisted's default sends each line through the legacy log, an observer that
formats its own timestamp, and one write to the terminal: on a busy gateway
that was a sixth of the CPU of a small chat request. A line here is the
same Combined Log Format line (it carries its own date), written in a
batch at the end of the turn that finished its requests, and formatted
then too: after the responses of the turn have left.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TextIO, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.http import combinedLogFormatter

from hfendpoint._twisted_private import header_table

#: The bytes that Twisted's log escaping leaves as they are.
_PLAIN = bytes(range(0x20, 0x7F)).replace(b"\\", b"").replace(b'"', b"")


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
        self._lines: list[Union[str, tuple]] = []
        self._call: Optional[IDelayedCall] = None

    def write(self, line: str) -> None:
        self._hold(line)

    def add(self, formatter: Callable[[str, Any], str], timestamp: str, request: Any) -> None:
        """
        The line of C{request}, formatted when it is written: what a
        finished request's line reads does not change after it finished.
        """
        self._hold((formatter, timestamp, request))

    def _hold(self, entry: Union[str, tuple]) -> None:
        self._lines.append(entry)
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
            self._stream.write("".join(map(_text, lines)))
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """
        Write what is held; the stream itself belongs to whoever gave it.
        """
        self.flush()


def combined_line(timestamp: str, request: Any) -> str:
    """
    The line Twisted's C{combinedLogFormatter} writes for C{request}. Its
    escaping (a C{repr} of each field and two replaces) was half the cost
    of the line; a request from an IP address whose fields have nothing to
    escape, nearly every one, is written here as it is, and any other by
    C{combinedLogFormatter} itself.
    """
    address = request.getClientAddress()
    if type(address) is not IPv4Address and type(address) is not IPv6Address:
        return combinedLogFormatter(timestamp, request)
    method, uri, protocol = request.method, request.uri, request.clientproto
    headers = header_table(request.requestHeaders)
    referrer = _field(headers.get(b"Referer"))
    agent = _field(headers.get(b"User-Agent"))
    if b"".join((method, uri, protocol, referrer, agent)).translate(None, _PLAIN):
        return combinedLogFormatter(timestamp, request)
    return '"%s" - - %s "%s %s %s" %d %s "%s" "%s"' % (
        address.host,
        timestamp,
        method.decode("ascii"),
        uri.decode("ascii"),
        protocol.decode("ascii"),
        request.code,
        request.sentLength or "-",
        referrer.decode("ascii"),
        agent.decode("ascii"),
    )


def _field(values: Optional[Sequence[bytes]]) -> bytes:
    """
    A header's field of the line: its last value, as C{getHeader} reads
    it, or C{-}.
    """
    return (values[-1] if values else None) or b"-"


def combined_line_with_id(timestamp: str, request: Any) -> str:
    """
    The Combined Log Format line with the request's id as one more quoted
    field at its end, as servers that log a request id do: tools that
    read the combined format read the line up to it. The id is letters,
    digits and C{._:/+=@-} only (L{hfendpoint.web._request_id}), so it
    needs no escaping.
    """
    return '%s "%s"' % (combined_line(timestamp, request), getattr(request, "request_id", None) or "-")


def _text(entry: Union[str, tuple]) -> str:
    if isinstance(entry, str):
        return entry
    formatter, timestamp, request = entry
    return formatter(timestamp, request) + "\n"


def is_stream(value: Any) -> bool:
    return hasattr(value, "write") and hasattr(value, "flush")
