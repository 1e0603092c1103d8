"""
The worker library: what a worker imports to serve the gateway's calls
(C{import hfendpoint} re-exports its public names). Standard library and
msgpack only, so that a worker does not pay for Twisted.

A worker registers one handler per call it serves and then calls C{run}
(see L{hfendpoint}). Load the model BEFORE calling C{run}: the library
reads nothing from the gateway until then, and its answer to the
gateway's handshake (which lists the registered calls) is what tells the
gateway the worker is ready to serve.

The calls a worker may serve, with their data (C{docs/protocol.md} has
the details):

  - C{chat_completions}: the chat request in; one reply per chunk,
    C{{"content", "finish_reason"}}, the last with a C{finish_reason};
  - C{tokenize}: C{{"input": [str, ...]}} in; C{{"tokens": [[id, ...],
    ...]}} out;
  - C{embeddings}: C{{"input": [[id, ...], ...]}} in; C{{"embeddings":
    [[float, ...], ...]}} out (sent as float32 bytes by the library when
    the gateway accepts them);
  - C{images_generations} and C{images_editions}: C{{"prompt", "n",
    "width", "height"}} (and C{"image"}, C{"mask"} bytes for editions) in;
    C{n} replies C{{"png": bytes}};
  - C{detokenize}, optional and ours (the original has no such call):
    C{{"tokens": [[id, ...], ...]}} in, C{{"texts": [str, ...]}} out, the
    inverse of C{tokenize}. A worker that does not serve it is never sent
    it; the gateway sees from the handshake which calls exist.

Any call may be left out: the gateway answers its endpoint with an error
of its own instead of asking the worker.

The modules: L{_connection} reads requests and answers the protocol's own
messages, L{_writer} writes replies into the socket, L{_packing} encodes
the big ones, L{_calls} adapts the handlers of both generations, L{_run}
starts it all.
"""

from hfendpoint.library._calls import legacy_calls, modern_calls
from hfendpoint.library._connection import Connection, request_id
from hfendpoint.library._errors import Cancelled, InvalidRequest, WorkerError
from hfendpoint.library._run import handler, run, serve

__all__ = [
    "Cancelled",
    "InvalidRequest",
    "Connection",
    "WorkerError",
    "handler",
    "legacy_calls",
    "modern_calls",
    "request_id",
    "run",
    "serve",
]
