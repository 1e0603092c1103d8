"""
Starting a worker: the v0.3 registry of handlers, the socket the gateway
passed down, and C{run}, which serves both generations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Optional, TypeVar, overload

from hfendpoint.library._calls import Handler, legacy_calls, modern_calls
from hfendpoint.library._connection import Call, Connection
from hfendpoint.wire import FD_ENV, MODEL_NAME_ENV, RESERVED_PREFIX

log = logging.getLogger("hfendpoint")

NOT_A_WORKER = (
    "this program is an hfendpoint worker; start it through the hfendpoint gateway"
)

F = TypeVar("F", bound=Handler)

_registry: dict[str, Handler] = {}


def handler(name: str) -> Callable[[F], F]:
    """
    Register the decorated function as the handler of the call C{name}, for
    L{run} without arguments (the v0.3 API).

    @raise ValueError: for a name of the C{hfendpoint.} family, which the
        library answers itself.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a handler name must be a non-empty string, not {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{name!r} is reserved for the protocol itself")

    def register(function: F) -> F:
        _registry[name] = function
        return function

    return register


def gateway_socket() -> socket.socket:
    """
    The socket the gateway gave us.

    @raise SystemExit: with a plain explanation if there is none, since the
        usual cause is a person starting the worker by hand, who needs a
        sentence rather than a traceback.
    """
    value = os.environ.get(FD_ENV)
    if value is None:
        raise SystemExit(f"{NOT_A_WORKER} ({FD_ENV} is not set)")
    try:
        fd = int(value)
    except ValueError:
        raise SystemExit(f"{NOT_A_WORKER} ({FD_ENV}={value!r} is no number)")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise SystemExit(f"{NOT_A_WORKER} ({FD_ENV}={fd}: {error})")
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SystemExit(f"{NOT_A_WORKER} ({FD_ENV}={fd} is not a UNIX stream socket)")
    return sock


def model_name(model: Optional[str]) -> Optional[str]:
    """
    The model name for the handshake: the worker's own word first, then
    what its launcher put in the environment.
    """
    return model or os.environ.get(MODEL_NAME_ENV) or None


async def serve(
    sock: socket.socket,
    calls: Mapping[str, Call],
    *,
    model: Optional[str] = None,
    features: Iterable[str] = (),
) -> None:
    """
    Serve C{calls} on C{sock} until the gateway closes it.

    This is L{run} without the environment and without owning the event
    loop, for tests and for programs that embed a worker in their own loop.
    """
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    connection = Connection(writer, calls, model, features)
    try:
        await connection.read_from(reader)
    finally:
        await connection.close()


@overload
def run(
    handlers: None = None, *, model: Optional[str] = None, features: Iterable[str] = ()
) -> Coroutine[Any, Any, None]: ...


@overload
def run(
    handlers: Mapping[str, Handler], *, model: Optional[str] = None, features: Iterable[str] = ()
) -> None: ...


def run(
    handlers: Optional[Mapping[str, Handler]] = None,
    *,
    model: Optional[str] = None,
    features: Iterable[str] = (),
) -> Optional[Coroutine[Any, Any, None]]:
    """
    Serve the gateway until it closes the connection.

    Both generations of the original library call this one name, so it
    serves both: given a dict (v0.2), it runs its own event loop and blocks;
    given nothing (v0.3), it returns the coroutine serving the
    L{handler}-registered functions, for C{asyncio.run(hfendpoint.run())}.

    Nothing is read from the gateway before this is called, so its
    handshake is answered only then: load the model first, so that the
    answer means "ready to serve". Requests sent meanwhile wait in the
    socket.

    @param handlers: v0.2 handlers, C{function(data, send_chunk)} by name.
    @param model: the model name the handshake reports; defaults to
        C{HFENDPOINT_MODEL_NAME} from the environment.
    @param features: optional abilities to announce in the handshake,
        such as C{"chat_n"} for a chat handler that answers C{n} choices
        itself, each chunk tagged with its C{index} (see the protocol's
        extensions); the gateway otherwise sends C{n} calls of one choice.
    @raise SystemExit: if the program was not started by a gateway.
    """
    name = model_name(model)
    if handlers is None:
        if not _registry:
            log.warning("No handler is registered: every request will fail.")
        return serve(gateway_socket(), modern_calls(_registry), model=name, features=features)
    asyncio.run(serve(gateway_socket(), legacy_calls(handlers), model=name, features=features))
    return None
