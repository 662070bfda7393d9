"""pytest fixtures for tests against PostgreSQL (registered by conftest.py's
`pytest_plugins`): one throwaway server per test session, a fresh database per test.

`postgres_server` starts the server at its first use (so a run that needs none starts
none) and stops it, deleting its files, at the end of the session; it skips the tests
that use it when PostgreSQL is not installed (`apt-get install postgresql`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_server import PgServer, drop_database, fresh_database


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    server = PgServer.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(postgres_server: PgServer) -> Iterator[str]:
    """The DSN of an empty database made for this test alone (dropped afterwards, with
    whatever is still connected to it)."""
    dsn = fresh_database(postgres_server)
    yield dsn
    if postgres_server.postmaster_pid() is None:
        postgres_server.start_again()  # a test stopped it: the next tests need it
    drop_database(postgres_server, dsn)
