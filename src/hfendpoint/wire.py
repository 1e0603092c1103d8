"""
The worker protocol's names and constants, for both ends of the socket.

The gateway (on Twisted) and the worker library (on asyncio, imported by
every worker) speak the same protocol but share no code, since a worker
must not pay for Twisted. What they must agree on, word for word, lives
here once: a name spelt differently on each side would fail without an
error, as a call nobody serves or a handshake field nobody reads. This
module imports nothing, so either side may import it.

The protocol itself is described in C{docs/protocol.md}.
"""

# Launch: how the gateway hands the worker its end of the socket.

#: The environment variable holding the number of the worker's file
#: descriptor for its end of the socket pair.
FD_ENV = "HFENDPOINT_FD"
#: The file descriptor our gateway puts the worker's end on (the original
#: gateway used whatever number it got, hence the variable).
WORKER_FD = 3
#: SO_SNDBUF and SO_RCVBUF of both ends, as the original set them.
SOCKET_BUFFER_SIZE = 1024 * 1024
#: The model name a worker reports when its code does not name one.
MODEL_NAME_ENV = "HFENDPOINT_MODEL_NAME"
#: How many worker processes the gateway runs, and which one this is
#: (from 0), so that each can pick its own device.
WORKERS_ENV = "HFENDPOINT_WORKERS"
WORKER_INDEX_ENV = "HFENDPOINT_WORKER_INDEX"

#: The largest single message the gateway takes from a worker by default;
#: a bigger one is a protocol violation, rather than unbounded memory.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024

# The calls of the original protocol, by the names the gateway sends.

CHAT_COMPLETIONS = "chat_completions"
TOKENIZE = "tokenize"
EMBEDDINGS = "embeddings"
IMAGES_GENERATIONS = "images_generations"
IMAGES_EDITIONS = "images_editions"

# Optional calls we added: only sent to a worker whose handshake lists them.

#: Token ids back to text, the inverse of C{tokenize}:
#: C{{"tokens": [[id, ...], ...]}} in, C{{"texts": [str, ...]}} out.
DETOKENIZE = "detokenize"

# Our extensions to the protocol (see "Extending it" in the protocol).

#: The version of the protocol we speak; a worker that does not say is 1.
PROTOCOL_VERSION = 2
#: Call names of this family belong to the protocol, not to any worker.
RESERVED_PREFIX = "hfendpoint."
#: The handshake, sent first to every worker.
DESCRIBE = RESERVED_PREFIX + "describe"
#: Stop serving a request, C{{"id": n}}; sent only to a worker whose
#: handshake said it understands it.
CANCEL = RESERVED_PREFIX + "cancel"
#: The liveness probe: answered at once, with C{{}}, by the worker's event
#: loop itself, so that a worker whose loop is blocked misses it. Sent only
#: to a worker whose handshake said C{ping: true}.
PING = RESERVED_PREFIX + "ping"

#: What our gateway calls itself in the handshake.
GATEWAY = "hfendpoint"

# The keys of the handshake the gateway sends.

PROTOCOL_KEY = "protocol"
GATEWAY_KEY = "gateway"
#: The extensions the gateway reads from a worker.
ACCEPTS_KEY = "accepts"

# The keys of the worker's reply to it (its C{protocol} key is the same).

#: The call names the worker serves.
CALLS_KEY = "calls"
#: Its model's name.
MODEL_KEY = "model"
#: C{True} if it understands L{CANCEL}.
CANCEL_KEY = "cancel"
#: Optional abilities, such as L{CHAT_N}.
FEATURES_KEY = "features"
#: C{True} if it answers L{PING}.
PING_KEY = "ping"

#: In the gateway's C{accepts}: embedding vectors may come as little-endian
#: float32 bytes instead of lists of floats.
FLOAT32_VECTORS = "float32_vectors"
#: In the worker's C{features}: it makes C{n} chat choices itself, tagging
#: each chunk with its C{index}, instead of one call per choice.
CHAT_N = "chat_n"


#: A request's optional top-level key (beside C{id}, C{name} and C{data},
#: where an older worker never looks): the HTTP request's id, so that the
#: worker's log lines can be joined with the gateway's.
REQUEST_ID_KEY = "request_id"

#: An error reply's optional HTTP status, for a request the client got
#: wrong (a 4xx); without it, or from an older worker, the error is a 500.
ERROR_STATUS_KEY = "status"


def is_client_status(status: object) -> bool:
    """
    Whether C{status} is an HTTP status that blames the request.
    """
    return type(status) is int and 400 <= status <= 499
