"""Cluster nodes for tests (registered as a pytest plugin by conftest.py): the `nodes`
fixture starts three servers sharing one throwaway PostgreSQL and one `redis-server`."""

from __future__ import annotations

import pytest
from chat import TIMEOUT
from conftest import StartServer
from redis_server import RedisServer

from securechat.server import Server

#: Short leases, so that the fault tests take seconds: a node fences after 60% of it.
LEASE = 1.5


@pytest.fixture
def nodes(pg_dsn: str, redis_server: RedisServer, start_server: StartServer) -> list[Server]:
    """Three nodes of one cluster."""
    pytest.importorskip("redis", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    return [start_server(store=pg_dsn, cluster=redis_server.url, node_lease=LEASE) for _ in range(3)]


def all_subscribed(nodes: list[Server]) -> None:
    """Wait until every node's subscriber is subscribed (its first catch-up done)."""
    for node in nodes:
        assert node.cluster is not None and node.cluster.subscribed.wait(TIMEOUT)
