"""
Makes C{twistd hfendpoint} available; imports nothing heavy, as plugin
discovery imports every plugin file.
"""

from twisted.application.service import ServiceMaker

hfendpoint = ServiceMaker(
    "hfendpoint",
    "hfendpoint.service._tap",
    "Serve a model worker behind OpenAI-compatible HTTP endpoints.",
    "hfendpoint",
)
