"""
The OpenAI API: one translator module per endpoint family, turning a
request's JSON into worker calls and the worker's replies back into
OpenAI bodies or events, the Klein routes that serve them, and the
OpenAPI document that describes them.
"""

from hfendpoint.api._app import GatewayApp
from hfendpoint.api._imagestore import MemoryImageStore
from hfendpoint.api._openapi import document

__all__ = ["GatewayApp", "MemoryImageStore", "document"]
