"""pytest fixtures for tests against Redis (registered by conftest.py's `pytest_plugins`):
a fresh `redis-server` per test (redis_server.py), skipped with the reason when Redis is
not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path / "redis")
    yield server
    server.stop()
