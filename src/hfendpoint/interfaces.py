"""
The seams of the gateway, so that a pool, a fake or another store can
stand in for the real thing.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IWorkerClient(Interface):
    """
    Sends calls to a worker and hands back its replies.

    Every Deferred returned here fails with an
    L{hfendpoint.errors.OpenAIError} (5xx) when the worker fails, goes
    away, or does not answer in time, and cancelling it tells the worker
    to stop the call.
    """

    info = Attribute(
        "A L{WorkerInfo}: what the worker said of itself in the handshake "
        "(its calls and model), or the defaults for a worker that predates it."
    )

    def request(name, data, on_reply):
        """
        Start call C{name} with C{data}.

        @param on_reply: called with each C{data} reply in order; it returns
            C{True} when that reply completes the call.
        @return: a Deferred that fires with C{None} once C{on_reply} returns
            C{True}.
        """

    def call(name, data):
        """
        Start a call that has exactly one reply.

        @return: a Deferred firing with that reply's C{data}.
        """

    def pending_count():
        """
        @return: how many calls wait on the worker now.
        """


class IImageStore(Interface):
    """
    Keeps generated images for C{response_format=url} until they are
    fetched or evicted.
    """

    def add(png):
        """
        Keep C{png} (bytes).

        @return: its new, unguessable id (str).
        """

    def get(image_id):
        """
        @return: the PNG bytes, or C{None} if unknown or evicted.
        """

    def delete(image_id):
        """
        @return: C{True} if it was there.
        """


class IWorkerProcess(Interface):
    """
    One running worker as its supervisor sees it: a socket to close, signals
    to send, an end to wait for. A real process or an in-memory fake.
    """

    pid = Attribute("The worker's process id, for the log (a fake makes one up).")

    def when_disconnected():
        """
        @return: a new Deferred firing once the gateway's end of the socket
            is closed (the worker closed it or broke the protocol).
        """

    def when_ended():
        """
        @return: a new Deferred firing with how the worker ended, in words,
            once it is gone and its socket closed.
        """

    def close_socket():
        """
        Close the gateway's end of the socket: a worker reads EOF and should
        exit by itself.
        """

    def unread_bytes():
        """
        @return: how many bytes the gateway sent that the worker has not
            read yet, or C{None} if that cannot be told. A worker that has
            not read its handshake is still starting, not ignoring it.
        """

    def signal(name):
        """
        Send signal C{name} (C{"TERM"}, C{"KILL"}) to the worker and its
        children.
        """


class IWorkerSpawner(Interface):
    """
    Starts workers, so that a supervisor can run a real process or, in
    tests, a worker in memory, through the same code.
    """

    def spawn(argv, env, protocol_factory):
        """
        Start the worker C{argv} and connect its socket.

        @param env: extra environment variables for the worker (C{None}
            for none), on top of the gateway's own.
        @param protocol_factory: an C{IProtocolFactory} whose protocol is
            the gateway's end of the worker's socket.
        @return: an L{IWorkerProcess}.
        @raise Exception: if the worker cannot be started.
        """
