"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from orthanc_openmrs.cli import build_service
from orthanc_openmrs.config import Settings, load_settings
from orthanc_openmrs.ledger.location import PostgresURL
from orthanc_openmrs.service import PassSummary, Service
from orthanc_openmrs.store import Store
from orthanc_openmrs_devtools.dicom_factory import StudySpec, build_study
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer, free_tcp_port

PUBLIC_URL = "https://pacs.example.org"


def settings_for(
    orthanc: OrthancServer, openmrs: OpenMRSDouble, database: Path, **overrides: Any
) -> Settings:
    """Settings for tests that need no delays: retries at once, two workers."""
    values: dict[str, Any] = {"sync_retry_min": 0, "sync_retry_max": 0, "sync_workers": 2}
    values.update(overrides)
    return default_settings_for(orthanc, openmrs, database, **values)


def default_settings_for(
    orthanc: OrthancServer, openmrs: OpenMRSDouble, database: Path, **overrides: Any
) -> Settings:
    """Settings as a user gets them: only the servers, credentials and ledger are given."""
    values: dict[str, Any] = {
        "orthanc_url": orthanc.url,
        "orthanc_user": orthanc.username,
        "orthanc_password": orthanc.password,
        "orthanc_public_url": PUBLIC_URL,
        "openmrs_url": openmrs.url,
        "openmrs_user": "admin",
        "openmrs_password": "Admin123",
        "sync_database": database,
        **overrides,
    }
    return load_settings(None, **values)


def env_for(orthanc: OrthancServer, openmrs: OpenMRSDouble, database: Path) -> dict[str, str]:
    return {
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_USER": orthanc.username,
        "ORTHANC_PASSWORD": orthanc.password,
        "ORTHANC_PUBLIC_URL": PUBLIC_URL,
        "OPENMRS_URL": openmrs.url,
        "OPENMRS_USER": "admin",
        "OPENMRS_PASSWORD": "Admin123",
        "SYNC_DATABASE": str(database),
        "SYNC_RETRY_MIN": "0",
        "SYNC_RETRY_MAX": "0",
        # Tests run side by side: `run` must not claim the default port of the HTTP surface.
        "SYNC_HTTP_PORT": str(free_tcp_port()),
    }


def load(orthanc: OrthancServer, *specs: StudySpec, wait: bool = True) -> dict[str, str]:
    """Upload studies; their Orthanc IDs by spec key. Waits until Orthanc calls them stable."""
    ids: dict[str, str] = {}
    for spec in specs:
        answers = orthanc.upload_many(build_study(spec))
        ids[spec.key] = str(answers[0]["ParentStudy"])
    if wait:
        orthanc.wait_until_stable()
    return ids


def instance_id(orthanc: OrthancServer, sop_instance_uid: str) -> str:
    import httpx

    response = httpx.post(
        f"{orthanc.url}/tools/lookup",
        content=sop_instance_uid.encode(),
        auth=(orthanc.username, orthanc.password),
    )
    response.raise_for_status()
    return str(response.json()[0]["ID"])


@contextmanager
def service(settings: Settings, *, dry_run: bool = False) -> Iterator[Service]:
    with build_service(settings, dry_run=dry_run) as built:
        yield built


def sync_pass(settings: Settings, *, dry_run: bool = False) -> PassSummary:
    with service(settings, dry_run=dry_run) as built:
        built.openmrs.check_credentials()
        return built.run_pass()


def pass_cost(settings: Settings) -> tuple[PassSummary, int, int]:
    """One pass after discovery, with the Orthanc and OpenMRS requests it made."""
    with service(settings) as built:
        built.discover()
        orthanc_before, openmrs_before = built.orthanc.requests, built.openmrs.requests
        summary = built.run_pass()
        return (
            summary,
            built.orthanc.requests - orthanc_before,
            built.openmrs.requests - openmrs_before,
        )


def ledger(settings: Settings) -> Store:
    return Store(settings.sync_database)


def lose_ledger(location: object) -> None:
    """The ledger is lost (deleted file, dropped tables): the next opener starts an empty one."""
    if isinstance(location, str) and "://" in location:
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return
    path = Path(str(location))
    path.unlink()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def ledger_rows(
    location: object, sql: str, params: tuple[object, ...] = ()
) -> list[tuple[Any, ...]]:
    """Rows read straight from the ledger's database, past the store (`?` placeholders)."""
    if isinstance(location, PostgresURL) or (isinstance(location, str) and "://" in location):
        import psycopg

        conninfo = location.conninfo if isinstance(location, PostgresURL) else location
        with psycopg.connect(conninfo) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
    import sqlite3

    db = sqlite3.connect(str(location))
    try:
        return list(db.execute(sql, params).fetchall())
    finally:
        db.close()


def image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture
