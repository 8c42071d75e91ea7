"""Online serving: Open Inference Protocol V2 and a simple JSON API over HTTP, with dynamic batching."""

from joules.serve.online.app import create_app
from joules.serve.online.config import ServeConfig
from joules.serve.online.server import run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
