"""
What an API family declares for each of its endpoints, and the one place
where any endpoint's answer is written: a JSON body, a body in parts, or
server-sent events, with the failures before and during a stream.

An endpoint is its path, its request L{Body} (which checks the request
and documents it) and a C{serve} function: given the L{Context} of the
request and the checked body, it returns the answer, or a L{Stream} to
run on the response's events. The app turns each endpoint into a route
and the OpenAPI document into an operation; neither is written twice.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional, Union

from attrs import frozen

from hfendpoint.api._contract import Body
from hfendpoint.errors import OpenAIError, unsupported_endpoint
from hfendpoint.interfaces import IImageStore, IWorkerClient
from hfendpoint.web import EventStream, parse_json_body, send_json, set_json_type, set_length, write_parts
from hfendpoint.web._metrics import record_usage


def send_error_event(events: EventStream, error: OpenAIError) -> None:
    """
    How a chat or completions stream that has started reports a failure:
    an event holding the error object, and no end marker.
    """
    events.send(error.to_dict())


@frozen
class Stream:
    """
    An answer as server-sent events: C{run} writes them, and C{fail}
    reports an L{OpenAIError} raised once the first event is out (before
    it, the error is an ordinary JSON error with its status).
    """

    run: Callable[[EventStream], Awaitable[None]]
    fail: Callable[[EventStream, OpenAIError], None] = send_error_event


#: A JSON object, JSON bytes already encoded, JSON in parts (a big body
#: written as it was made), or a stream.
Reply = Union[dict, bytes, list, Stream]


class Context:
    """
    What a translator needs of the gateway and of the request it serves.

    @ivar model: the model name the response carries.
    @ivar created: the request's time, in whole seconds.
    """

    __slots__ = ("client", "batcher", "store", "model", "created", "request")

    def __init__(
        self, client: IWorkerClient, batcher: Any, store: IImageStore, model: str, created: int, request: Any
    ) -> None:
        self.client = client
        self.batcher = batcher
        self.store = store
        self.model = model
        self.created = created
        self.request = request

    def require(self, call: str) -> None:
        """
        Fail at once for a call the worker said it does not serve.
        """
        if not self.client.info.serves(call):
            raise unsupported_endpoint(call)

    def url_for(self, image_id: str) -> str:
        """
        The URL of a stored image, as the client reached us (through a
        proxy that says so, or directly).
        """
        request = self.request
        scheme = request.getHeader(b"x-forwarded-proto")
        host = request.getHeader(b"x-forwarded-host") or request.getHeader(b"host")
        if not scheme:
            scheme = b"https" if request.isSecure() else b"http"
        if not host:
            address = request.getHost()
            host = f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', '')}".encode()
        base = scheme.decode("ascii", "replace") + "://" + host.decode("ascii", "replace")
        return f"{base}/v1/images/{image_id}"


Serve = Callable[[Context, dict, dict], Awaitable[Reply]]


@frozen(kw_only=True)
class Endpoint:
    """
    One POST endpoint of an API family.

    @ivar serve: called with the context, the request body as read and
        what its L{Body} checked; returns the L{Reply}.
    @ivar response: the component schema of the 200 JSON body.
    @ivar events: the component schema of one event's data, for an
        endpoint that can stream.
    @ivar read: reads the body off the request (JSON unless a form).
    @ivar content_type: the request body's media type, for the document.
    """

    path: str
    operation_id: str
    summary: str
    body: Body
    serve: Serve
    response: str
    events: Optional[str] = None
    read: Callable[[Any], dict] = parse_json_body
    content_type: str = "application/json"


def respond(request: Any, reply: Reply) -> Union[Optional[bytes], Awaitable[None]]:
    """
    Write C{reply} as the response to C{request}.

    @return: the body for the router to write, C{None} when it is written
        already, or, for a L{Stream}, what to wait on while it runs.
    """
    if type(reply) is dict:
        record_usage(request, reply.get("usage"))
        return send_json(request, reply)
    if type(reply) is bytes:
        set_json_type(request)
        set_length(request, len(reply))
        return reply
    if type(reply) is list:
        set_json_type(request)
        write_parts(request, reply)
        return None
    return _run_stream(request, reply)


async def _run_stream(request: Any, reply: Stream) -> None:
    events = EventStream(request)
    try:
        await reply.run(events)
    except OpenAIError as error:
        if not events.started:
            raise
        reply.fail(events, error)
    else:
        events.done()
    finally:
        events.close()
