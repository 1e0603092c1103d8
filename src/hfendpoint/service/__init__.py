"""
The gateway assembled: L{GatewayService} for twistd, for the
C{hfendpoint} command and for any Twisted application that embeds it.
"""

from hfendpoint.service._cli import console_script, main
from hfendpoint.service._config import GatewayConfig
from hfendpoint.service._logging import json_log_observer
from hfendpoint.service._service import GatewayService

__all__ = ["GatewayConfig", "GatewayService", "console_script", "json_log_observer", "main"]
