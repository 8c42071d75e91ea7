"""Fixtures the tests across modes share: real servers and a real redis-server."""

from tests.serve.online.conftest import start_server
from tests.serve.stream.conftest import redis_server

__all__ = ["redis_server", "start_server"]
