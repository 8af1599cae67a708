from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from orthanc_openmrs_devtools.postgres_server import PostgresServer

# Modules whose tests share one costly module- or session-scoped fixture (the real-file corpus
# run, the container image build): in a parallel run each is one unit of work, on one worker,
# so the fixture is made once. xdist's own `xdist_group` mark would say this, but it renames
# test items in a way pytest 9.2 no longer sees, so the grouping is done by the scheduler here.
SHARED_FIXTURE_MODULES = frozenset(
    {
        "tests/integration/test_real_files.py",
        "tests/deploy/test_container.py",
        # One Orthanc, one double and one `run` serve the module's pages, in order.
        "tests/browser/test_review_pages.py",
    }
)


class _SharedFixtureScheduling(LoadScopeScheduling):
    """Every test is a unit of work of its own, but a module of SHARED_FIXTURE_MODULES is one
    unit; the largest units (these modules) are handed out first."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in SHARED_FIXTURE_MODULES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling | None:
    """`--dist loadgroup` (what scripts/test runs) schedules as above; other modes as xdist
    does."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return _SharedFixtureScheduling(config, log)


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
