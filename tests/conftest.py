from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.postgres_server import PostgresServer


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A real Orthanc of its own for each test, on loopback, with StableAge 1 s."""
    server = OrthancServer(tmp_path / "orthanc", stable_age=1)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def openmrs() -> Iterator[OpenMRSDouble]:
    """The OpenMRS REST double, empty but for its default identifier types."""
    with OpenMRSDouble() as double:
        yield double


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL of this test session (each pytest-xdist worker has its own), on
    loopback at a free port, in a temporary directory; every test takes a database of its own."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The ledger, on each backend in turn: a SQLite file, or the URL (password included) of a
    new PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "ledger.sqlite3"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Path:
    """A SQLite ledger, for tests of what only SQLite has (its file, its pragmas)."""
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def postgres_database(postgres: PostgresServer) -> str:
    """The URL of a new PostgreSQL ledger database, for tests of what only PostgreSQL has."""
    return postgres.create_database()
