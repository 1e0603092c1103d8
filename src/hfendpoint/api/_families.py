"""
The API families the gateway serves. A family is one translator module
that declares its C{ENDPOINTS} (each with its request L{Body}) and the
C{SCHEMAS} of what it answers; listing it here is what routes it and
documents it.
"""

from __future__ import annotations

from hfendpoint.api import _chat, _completions, _embeddings, _images, _responses, _tokens
from hfendpoint.api._endpoint import Endpoint

FAMILIES = (_chat, _completions, _responses, _embeddings, _images, _tokens)

ENDPOINTS: tuple[Endpoint, ...] = tuple(endpoint for family in FAMILIES for endpoint in family.ENDPOINTS)
