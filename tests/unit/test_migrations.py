from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.models import State
from orthanc_openmrs.store import SCHEMA_VERSION, Store

V1_LEDGER = Path(__file__).parent.parent / "data" / "ledger-v1.sqlite3"
SYNCED = "11111111-11111111-11111111-11111111-11111111"
UNMATCHED = "22222222-22222222-22222222-22222222-22222222"


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    shutil.copy(V1_LEDGER, path)
    return path


def test_kept_ledger_is_of_the_first_schema() -> None:
    """The kept ledger really is what version 1 wrote (so the test below migrates something)."""
    db = sqlite3.connect(f"file:{V1_LEDGER}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = {r[1] for r in db.execute("PRAGMA table_info(studies)")}
    finally:
        db.close()
    assert "lease_owner" not in columns


def test_a_ledger_of_schema_1_opens_with_every_row_kept(old_ledger: Path) -> None:
    """Opening a schema-1 ledger migrates it: studies, cursor, catch-up mark and audit survive."""
    store = Store(old_ledger)
    synced = store.get(SYNCED)
    assert synced is not None
    assert (synced.state, synced.attachment_uuid) == (
        State.SYNCED,
        "a1b2c3d4-0000-4000-8000-0000000000a1",
    )
    assert store.cursor() == 4321
    assert store.catchup_done()
    assert [a.action for a in store.audit(SYNCED)] == ["create"]
    assert store.counts()[State.UNMATCHED] == 1
    store.close()


def test_migration_indexes_the_identifiers_old_studies_wait_for(old_ledger: Path) -> None:
    """Both identifiers an old unmatched study named are findable after the migration."""
    Store(old_ledger).close()
    db = sqlite3.connect(old_ledger)
    try:
        rows = db.execute(
            "SELECT identifier FROM study_identifiers WHERE orthanc_id = ? ORDER BY identifier",
            (UNMATCHED,),
        ).fetchall()
        version = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()
    assert [r[0] for r in rows] == ["LATE-1", "X9"]
    assert version == SCHEMA_VERSION


def test_a_new_ledger_and_a_migrated_one_have_the_same_schema(
    old_ledger: Path, tmp_path: Path
) -> None:
    """A ledger made new and one migrated from schema 1 end with the same tables and columns."""
    Store(old_ledger).close()
    Store(tmp_path / "new.sqlite3").close()

    def shape(path: Path) -> list[tuple[str, str]]:
        db = sqlite3.connect(path)
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return sorted((t, c[1]) for t in tables for c in db.execute(f"PRAGMA table_info({t})"))
        finally:
            db.close()

    assert shape(old_ledger) == shape(tmp_path / "new.sqlite3")


def test_a_ledger_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A ledger whose schema is newer than this code stops start-up with a message naming it."""
    path = tmp_path / "future.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"SYNC_DATABASE: .* newer orthanc-openmrs"):
        Store(path)
