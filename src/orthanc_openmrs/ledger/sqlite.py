"""The ledger in a SQLite file: one process or several on one machine. Its schema is made from
the first version and migrated step by step, as every existing ledger is at start."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.ledger.backend import Params, Result, Row
from orthanc_openmrs.ledger.dialect import SQLITE

_OPEN_TIMEOUT = 30.0

# The first schema. A new ledger is made from it and then migrated like an old one, so the
# path every existing ledger takes at start is the one the tests take every time.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS studies (
    orthanc_id          TEXT PRIMARY KEY,
    study_uid           TEXT NOT NULL DEFAULT '',
    state               TEXT NOT NULL,
    reason              TEXT NOT NULL DEFAULT '',
    retryable           INTEGER NOT NULL DEFAULT 1,
    priority            INTEGER NOT NULL DEFAULT 1,
    recheck             INTEGER NOT NULL DEFAULT 0,
    dicom_patient_id    TEXT NOT NULL DEFAULT '',
    patient_name        TEXT NOT NULL DEFAULT '',
    birth_date          TEXT NOT NULL DEFAULT '',
    study_date          TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    candidates          TEXT NOT NULL DEFAULT '',
    candidate_patients  TEXT NOT NULL DEFAULT '[]',
    patient_uuid        TEXT NOT NULL DEFAULT '',
    manual_patient_uuid TEXT NOT NULL DEFAULT '',
    linked_by           TEXT NOT NULL DEFAULT '',
    linked_at           REAL,
    attachment_uuid     TEXT NOT NULL DEFAULT '',
    instance_id         TEXT NOT NULL DEFAULT '',
    caption             TEXT NOT NULL DEFAULT '',
    orthanc_last_update TEXT NOT NULL DEFAULT '',
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL,
    last_attempt_at     REAL,
    seen_sweep          INTEGER NOT NULL DEFAULT 0,
    discovered_at       REAL NOT NULL,
    updated_at          REAL NOT NULL,
    synced_at           REAL
);
CREATE INDEX IF NOT EXISTS studies_due ON studies (priority, next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS studies_uid ON studies (study_uid);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    orthanc_id      TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    action          TEXT NOT NULL,
    patient_uuid    TEXT NOT NULL,
    attachment_uuid TEXT NOT NULL,
    reason          TEXT NOT NULL
);
"""

# Each step takes a ledger from the version before it to its own. Steps are never edited once
# released: a change of schema is a new step.
MIGRATIONS: dict[int, str] = {
    2: """
    ALTER TABLE studies ADD COLUMN patient_sex TEXT NOT NULL DEFAULT '';
    -- A claim held by one process until lease_until, so that several processes share a ledger
    -- without working one study at once, and a killed process's studies are taken over.
    ALTER TABLE studies ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE studies ADD COLUMN lease_until REAL;
    -- The identifiers each study names, so that a patient registered or changed in OpenMRS
    -- finds the studies waiting for one of its identifiers without a scan.
    CREATE TABLE study_identifiers (
        orthanc_id TEXT NOT NULL,
        identifier TEXT NOT NULL,
        PRIMARY KEY (orthanc_id, identifier)
    );
    CREATE INDEX study_identifiers_value ON study_identifiers (identifier);
    WITH RECURSIVE split(orthanc_id, part, rest) AS (
        SELECT orthanc_id, '', candidates || char(10) FROM studies WHERE candidates != ''
        UNION ALL
        SELECT orthanc_id, substr(rest, 1, instr(rest, char(10)) - 1),
               substr(rest, instr(rest, char(10)) + 1)
        FROM split WHERE rest != ''
    )
    INSERT OR IGNORE INTO study_identifiers (orthanc_id, identifier)
        SELECT orthanc_id, part FROM split WHERE part != '';
    -- Work that one process at a time does for all (the changes feed, the sweep).
    CREATE TABLE leases (
        name  TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        until REAL NOT NULL
    );
    """,
    3: """
    -- Which path made the attachment (models.PreviewSource), for the counts in `status`.
    ALTER TABLE studies ADD COLUMN preview_source TEXT NOT NULL DEFAULT '';
    -- Instances during whose rendering Orthanc stopped answering (its decoders crash on some
    -- files): past RENDER_CRASH_LIMIT, Orthanc is not asked to render them again.
    CREATE TABLE render_crashes (
        instance_id TEXT PRIMARY KEY,
        orthanc_id  TEXT NOT NULL,
        crashes     INTEGER NOT NULL,
        first_at    REAL NOT NULL,
        last_at     REAL NOT NULL
    );
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


def _dict_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, values, strict=True)}


class SqliteBackend:
    dialect = SQLITE
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    session_locks = False

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """`read_only`: a view for other threads (the metrics endpoint) of a ledger that
        another connection writes; it never creates, migrates or writes."""
        self._path = path
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    timeout=_OPEN_TIMEOUT,
                    check_same_thread=False,  # its user serialises the threads
                )
                self._db.row_factory = _dict_row
                return
            _create_private(path)
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=_OPEN_TIMEOUT)
            self._db.row_factory = _dict_row
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Opening a current ledger only reads, so `status` works beside a running `run`.
            version = self._version()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"SYNC_DATABASE: {path} was written by a newer orthanc-openmrs (ledger schema "
                    f"{version}; this one knows up to {SCHEMA_VERSION}): upgrade this installation"
                )
            if version != SCHEMA_VERSION:
                self._upgrade()
        except sqlite3.Error as exc:
            raise StoreError(f"SYNC_DATABASE: cannot open {path}: {exc}") from exc

    @property
    def location(self) -> Path:
        return self._path

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()["user_version"])

    def _upgrade(self) -> None:
        """Create the ledger or bring an older one up to date, keeping every row; safe when
        another process (`run` and `status` started together) does the same at the same moment."""
        # Switching to WAL needs the file to itself, and SQLite answers "locked" at once instead
        # of waiting, so the wait is ours.
        deadline = time.monotonic() + _OPEN_TIMEOUT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # The immediate transaction makes a second opener wait, then find the work done.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._version()
            steps = [SCHEMA_V1] if version == 0 else []
            steps += [MIGRATIONS[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1)]
            for step in steps:
                for statement in _statements(step):
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    @contextmanager
    def transaction(self, *, claims: bool = False) -> Iterator[None]:
        # IMMEDIATE: one writer at a time on the file, so a claim sees every claim before it.
        del claims
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def execute(self, sql: str, params: Params = ()) -> Result:
        # Its rows are dicts (_dict_row).
        return self._db.execute(sql, params if isinstance(params, dict) else tuple(params))

    def executemany(self, sql: str, params: Iterable[Params]) -> int:
        return int(self._db.executemany(sql, params).rowcount)

    def hold(self, name: str) -> bool:  # the store leases shared work in this backend
        raise NotImplementedError(name)

    def let_go(self, name: str) -> None:
        raise NotImplementedError(name)

    def redact(self, error: object) -> str:
        return str(error)

    def transient(self, error: Exception) -> bool:
        # Another process held the write lock past the busy timeout.
        return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)

    def close(self) -> None:
        self._db.close()


def _create_private(path: Path) -> None:
    """A new ledger is readable by its owner only: it holds patients' identifiers and names.
    SQLite gives the -wal and -shm files it makes beside it the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"SYNC_DATABASE: cannot create {path}: {exc.strerror}") from exc


def _statements(script: str) -> list[str]:
    """A script's statements, one by one: `executescript` would commit the open transaction."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
