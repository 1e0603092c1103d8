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
