from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer


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


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"
