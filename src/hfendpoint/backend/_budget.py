"""
A bound on the memory held by the worker's replies in flight.

One reply is bounded by the largest message size (256 MiB), but nothing
bounded how many of them the gateway held at once: four concurrent
200 MB image replies took the gateway to over a gigabyte. The budget
counts the bytes of every reply of a call from its arrival until the
call ends (the translators keep what they were sent until the response
is built), shared by every worker of the gateway, and refuses the reply
that would go over it: its request fails alone, with a 502 saying why,
and the others go on.
"""

from __future__ import annotations

from hfendpoint.errors import OpenAIError

#: The default bound: four replies of the largest message size.
DEFAULT_MAX_REPLY_MEMORY = 1024 * 1024 * 1024


class ReplyBudget:
    """
    Bytes of replies held by calls in flight, against a limit.

    @ivar limit: the most bytes held at once.
    @ivar held: the bytes held now. The worker client counts a reply
        itself (C{held + size <= limit}, then C{held += size}): once per
        token of every stream, a call of its own costs as much as the rest
        of the count.
    """

    def __init__(self, limit: int = DEFAULT_MAX_REPLY_MEMORY) -> None:
        self.limit = limit
        self.held = 0

    def give(self, size: int) -> None:
        self.held -= size

    def refusal(self, size: int) -> OpenAIError:
        """
        The error of a request whose reply of C{size} bytes was refused.
        """
        return OpenAIError(
            502,
            f"The worker's reply ({size} bytes) would take the memory held for "
            f"replies in flight past the gateway's limit of {self.limit} bytes "
            f"(--max-reply-memory); {self.held} bytes were held by other "
            "requests. Try again, or with a smaller request.",
            "api_error",
            None,
            "reply_too_large",
        )
