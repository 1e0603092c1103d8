"""
OpenAI-shaped errors.

Every failure a client can see, whatever layer it comes from, is one of
these, so the HTTP layer renders them in a single place and a stream can
turn them into an error event.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from hfendpoint.wire import is_client_status


class OpenAIError(Exception):
    """
    A failure to report to the HTTP client as
    C{{"error": {"message", "type", "param", "code"}}}.

    @ivar status: the HTTP status code.
    @ivar message: a sentence for a human.
    @ivar type: the OpenAI error type (C{invalid_request_error},
        C{api_error}, ...).
    @ivar param: the request field at fault, if any.
    @ivar code: a short machine-readable code, if any.
    @ivar headers: extra response headers (C{Retry-After}, C{Allow}).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def __repr__(self) -> str:
        return (
            f"OpenAIError({self.status}, {self.message!r}, type={self.type!r}, "
            f"param={self.param!r}, code={self.code!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")


def invalid_request(
    message: str, param: Optional[str] = None, code: Optional[str] = None
) -> OpenAIError:
    """
    A 400: the client sent something we will not process.
    """
    return OpenAIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, code: Optional[str] = "not_found") -> OpenAIError:
    return OpenAIError(404, message, "invalid_request_error", None, code)


def unsupported_endpoint(call: str) -> OpenAIError:
    """
    A 501: the worker does not serve the call this endpoint needs.
    """
    return OpenAIError(
        501,
        f"This endpoint is not available: the worker does not serve '{call}'.",
        "invalid_request_error",
        None,
        "unsupported_endpoint",
    )


def worker_failed(message: str, status: object = None) -> OpenAIError:
    """
    The worker answered the request with an C{error} reply: a 500, or the
    4xx the worker gave when the request itself is at fault.
    """
    if is_client_status(status):
        return OpenAIError(status, message, "invalid_request_error", None, None)
    return OpenAIError(500, message, "api_error", None, "worker_error")


def worker_gone(message: str) -> OpenAIError:
    """
    A 502: the worker died or broke the protocol while the request was in
    flight; retrying after it restarts may succeed.
    """
    return OpenAIError(502, message, "api_error", None, "worker_unavailable")


#: Seconds a client is told to wait before retrying when no worker can
#: take its request: the supervisor's first restart comes after half a
#: second, and a client that retries at once only adds to the load.
RETRY_AFTER_WORKER = 1


def worker_unavailable(message: str) -> OpenAIError:
    """
    A 503 with C{Retry-After}: there is no worker to take the request right
    now, and there will be one again soon.
    """
    return OpenAIError(
        503, message, "api_error", None, "worker_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_WORKER)},
    )


def timed_out(message: str) -> OpenAIError:
    """
    A 504: the worker did not answer in time.
    """
    return OpenAIError(504, message, "api_error", None, "timeout")
