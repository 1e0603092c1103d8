"""
The HTTP layer: the site and its channel, admission control, routing to
the API, and the bodies every endpoint reads and writes (JSON, server-sent
events, multipart forms).
"""

from hfendpoint.web._admission import AdmissionResource
from hfendpoint.web._accesslog import AccessLog
from hfendpoint.web._channel import GatewayChannel, HeldWrites
from hfendpoint.web._coalescing import TurnFlusher
from hfendpoint.web._json import dumps, parse_json_body, send_error, send_json, set_json_type, set_length, write_parts
from hfendpoint.web._multipart import FormPart, parse_form
from hfendpoint.web._routing import ExactRoutes
from hfendpoint.web._site import DEFAULT_MAX_BODY_SIZE, GatewaySite, LimitedRequest
from hfendpoint.web._sse import EventStream

__all__ = [
    "AccessLog",
    "AdmissionResource",
    "DEFAULT_MAX_BODY_SIZE",
    "EventStream",
    "ExactRoutes",
    "FormPart",
    "GatewayChannel",
    "GatewaySite",
    "HeldWrites",
    "LimitedRequest",
    "TurnFlusher",
    "dumps",
    "parse_form",
    "parse_json_body",
    "send_error",
    "send_json",
    "set_json_type",
    "set_length",
    "write_parts",
]
