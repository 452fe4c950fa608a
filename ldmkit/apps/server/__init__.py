"""`ldmkit serve`: a web page and an AUTOMATIC1111-compatible HTTP API over one worker thread."""

from .app import create_app
from .settings import Limits, ServerSettings, parse_auth

__all__ = ["Limits", "ServerSettings", "create_app", "parse_auth"]
