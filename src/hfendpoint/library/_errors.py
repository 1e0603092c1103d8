"""
The two exceptions a handler deals with: one it raises to refuse a
request, one it may see when nobody waits for its replies any more.
"""


class WorkerError(Exception):
    """
    A request failed for a reason worth telling the client.

    Its message becomes the C{error} reply as it is, so it should make sense
    to whoever sent the HTTP request; unlike other exceptions it is logged
    without a traceback, since it is an expected outcome, not a bug.
    """


class Cancelled(Exception):
    """
    Nothing more may be sent for this request: the gateway cancelled it, or
    the connection to the gateway is gone.

    A v0.2 handler sees it raised by C{send_chunk}; letting it propagate is
    the right reaction, as the request then ends without any reply.
    """
