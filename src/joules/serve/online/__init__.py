"""Online serving: Open Inference Protocol V2 and a simple JSON API over HTTP, with dynamic batching.

Names are imported when first used, so the CLI can read ``ServeConfig``'s
defaults without loading the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "ServeConfig": "joules.serve.online.config",
    "create_app": "joules.serve.online.app",
    "run_server": "joules.serve.online.server",
    "status_of": "joules.serve.online.errors",
}
__all__ = [
    "ServeConfig",
    "create_app",
    "run_server",
    "status_of",
]

if TYPE_CHECKING:
    from joules.serve.online.app import create_app
    from joules.serve.online.config import ServeConfig
    from joules.serve.online.errors import status_of
    from joules.serve.online.server import run_server


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'joules.serve.online' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
