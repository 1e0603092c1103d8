"""
The two exceptions a handler deals with: one it raises to refuse a
request, one it may see when nobody waits for its replies any more.
"""


from typing import Any, Optional


class WorkerError(Exception):
    """
    A request failed for a reason worth telling the client.

    Its message becomes the C{error} reply as it is, so it should make sense
    to whoever sent the HTTP request; unlike other exceptions it is logged
    without a traceback, since it is an expected outcome, not a bug.

    @ivar status: the HTTP status the client should get, when the request
        itself is at fault (a 4xx: a prompt too long for the model, an
        image that cannot be decoded); C{None} for the worker's own
        failure, a 500. It travels as the error reply's C{status}, which a
        gateway that predates it ignores.
    """

    status: Optional[int] = None

    def __init__(self, *args: Any, status: Optional[int] = None) -> None:
        super().__init__(*args)
        if status is not None:
            self.status = status


class InvalidRequest(WorkerError):
    """
    The request cannot be served as it is: the client gets a 400 with this
    message.
    """

    status = 400


class Cancelled(Exception):
    """
    Nothing more may be sent for this request: the gateway cancelled it, or
    the connection to the gateway is gone.

    A v0.2 handler sees it raised by C{send_chunk}; letting it propagate is
    the right reaction, as the request then ends without any reply.
    """
