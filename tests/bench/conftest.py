"""The online tests' real-server fixture, for `joules bench --url` against `joules serve`."""

from tests.serve.online.conftest import start_server

__all__ = ["start_server"]
