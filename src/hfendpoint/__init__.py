"""
hfendpoint: an OpenAI-compatible HTTP gateway in front of a model worker.

This top-level module is the library a worker imports, compatible with
both generations of the original one::

    import hfendpoint

    model = load_the_model()                # first: see below

    def embed(data, send_chunk):            # v0.2
        send_chunk({"embeddings": ...})

    hfendpoint.run({"embeddings": embed})

    @hfendpoint.handler("embeddings")       # v0.3
    async def embed(data):
        return {"embeddings": ...}

    asyncio.run(hfendpoint.run())

The worker answers the gateway's handshake once C{run} is called, and the
gateway takes that answer as "ready to serve": load the model before.
The calls a worker may serve are listed in L{hfendpoint.library}.

It stays light on purpose: importing it loads only the standard library and
msgpack, never Twisted, so a worker does not carry the gateway around. The
gateway itself lives in submodules that are imported on demand.
"""

from hfendpoint.library import Cancelled, InvalidRequest, WorkerError, handler, request_id, run

__version__ = "0.4.0"

__all__ = ["Cancelled", "InvalidRequest", "WorkerError", "__version__", "handler", "request_id", "run"]
