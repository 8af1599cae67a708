"""The ledger: one row per Orthanc study, the changes cursor, and an audit trail. All SQL is here.

Only the thread that created the store uses it; workers hand their results back to that thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.models import NEEDS_A_PERSON, State, StudyResult

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    orthanc_id        TEXT PRIMARY KEY,
    study_uid         TEXT NOT NULL DEFAULT '',
    state             TEXT NOT NULL,
    reason            TEXT NOT NULL DEFAULT '',
    retryable         INTEGER NOT NULL DEFAULT 1,
    priority          INTEGER NOT NULL DEFAULT 1,
    dicom_patient_id  TEXT NOT NULL DEFAULT '',
    patient_uuid      TEXT NOT NULL DEFAULT '',
    attachment_uuid   TEXT NOT NULL DEFAULT '',
    instance_id       TEXT NOT NULL DEFAULT '',
    caption           TEXT NOT NULL DEFAULT '',
    candidates        TEXT NOT NULL DEFAULT '',
    orthanc_last_update TEXT NOT NULL DEFAULT '',
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   REAL,
    last_attempt_at   REAL,
    discovered_at     REAL NOT NULL,
    updated_at        REAL NOT NULL,
    synced_at         REAL
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

# Studies found by following changes go before the backlog, so a backfill never starves them.
LIVE, BACKLOG = 0, 1


@dataclass(frozen=True)
class StudyRow:
    orthanc_id: str
    study_uid: str
    state: State
    reason: str
    retryable: bool
    dicom_patient_id: str
    patient_uuid: str
    attachment_uuid: str
    instance_id: str
    caption: str
    candidates: str
    attempts: int
    next_attempt_at: float | None
    updated_at: float
    orthanc_last_update: str


@dataclass(frozen=True)
class AuditRow:
    at: float
    orthanc_id: str
    study_uid: str
    action: str
    patient_uuid: str
    attachment_uuid: str
    reason: str


class Store:
    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SYNC_DATABASE: cannot open {path}: {exc}") from exc
        self.path = path

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return list(cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    # -- meta ------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def cursor(self) -> int | None:
        value = self._meta("changes_cursor")
        return int(value) if value is not None else None

    def advance_cursor(self, seq: int) -> None:
        """Move the changes cursor forward; it never goes back."""
        current = self.cursor()
        if current is None or seq > current:
            self._set_meta("changes_cursor", str(seq))

    def catchup_done(self) -> bool:
        return self._meta("catchup_done") == "1"

    def mark_catchup_done(self) -> None:
        self._set_meta("catchup_done", "1")

    # -- discovery -------------------------------------------------------------------------
    def discover(self, orthanc_ids: list[str], now: float, *, priority: int, due_at: float) -> int:
        """Record studies seen in Orthanc; known ones are left as they are. Returns the new ones."""
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, priority, next_attempt_at, "
                "discovered_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?)",
                [(oid, priority, due_at, now, now) for oid in orthanc_ids],
            )
            return int(db.total_changes - before)

    def note_stable(self, orthanc_ids: list[str], now: float) -> None:
        """Orthanc says these studies are complete: try them now, unless synced or gone."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, priority, next_attempt_at, "
                "discovered_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?)",
                [(oid, LIVE, now, now, now) for oid in orthanc_ids],
            )
            db.executemany(
                "UPDATE studies SET next_attempt_at = ?, priority = ? "
                "WHERE orthanc_id = ? AND state NOT IN ('synced', 'gone')",
                [(now, LIVE, oid) for oid in orthanc_ids],
            )

    def reset_cursor(self, seq: int) -> None:
        """Orthanc's changes log restarted (a new database): start over from its new end."""
        self._set_meta("changes_cursor", str(seq))

    def claim_due(
        self, now: float, limit: int, *, exclude: set[str], not_tried_since: float
    ) -> list[str]:
        """Studies due for an attempt, live ones first, skipping those already tried this pass."""
        rows = self._query(
            "SELECT orthanc_id FROM studies WHERE next_attempt_at IS NOT NULL "
            "AND next_attempt_at <= ? AND (last_attempt_at IS NULL OR last_attempt_at < ?) "
            "ORDER BY priority, next_attempt_at LIMIT ?",
            (now, not_tried_since, limit + len(exclude)),
        )
        ids = [str(r["orthanc_id"]) for r in rows if r["orthanc_id"] not in exclude]
        return ids[:limit]

    def make_due(self, orthanc_id: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, priority, next_attempt_at, "
                "discovered_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?)",
                (orthanc_id, LIVE, now, now, now),
            )
            db.execute(
                "UPDATE studies SET next_attempt_at = ? WHERE orthanc_id = ?", (now, orthanc_id)
            )

    # -- results ---------------------------------------------------------------------------
    def record(
        self, result: StudyResult, state: State, now: float, next_attempt_at: float | None
    ) -> None:
        """Store the result of one attempt (business meaning decided by the caller)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, discovered_at, updated_at) "
                "VALUES (?, 'pending', ?, ?)",
                (result.orthanc_id, now, now),
            )
            db.execute(
                """UPDATE studies SET
                    state = ?, reason = ?, retryable = ?, next_attempt_at = ?, last_attempt_at = ?,
                    updated_at = ?, attempts = attempts + 1,
                    study_uid = CASE WHEN ? != '' THEN ? ELSE study_uid END,
                    dicom_patient_id = CASE WHEN ? != '' THEN ? ELSE dicom_patient_id END,
                    patient_uuid = ?, attachment_uuid = ?, instance_id = ?, caption = ?,
                    candidates = ?,
                    orthanc_last_update = CASE WHEN ? != '' THEN ? ELSE orthanc_last_update END,
                    synced_at = CASE WHEN ? = 'synced' THEN ? ELSE synced_at END
                WHERE orthanc_id = ?""",
                (
                    state.value,
                    result.reason,
                    int(result.retryable),
                    next_attempt_at,
                    now,
                    now,
                    result.study_uid,
                    result.study_uid,
                    result.dicom_patient_id,
                    result.dicom_patient_id,
                    result.patient_uuid,
                    result.attachment_uuid,
                    result.instance_id,
                    result.caption,
                    "\n".join(result.candidates),
                    result.last_update,
                    result.last_update,
                    state.value,
                    now,
                    result.orthanc_id,
                ),
            )

    def record_waiting(self, orthanc_id: str, next_attempt_at: float, now: float) -> None:
        """The study is still receiving instances: look again later, count no attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET next_attempt_at = ?, last_attempt_at = ?, updated_at = ? "
                "WHERE orthanc_id = ?",
                (next_attempt_at, now, now, orthanc_id),
            )

    def add_audit(self, row: AuditRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO audit (at, orthanc_id, study_uid, action, patient_uuid, "
                "attachment_uuid, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row.at,
                    row.orthanc_id,
                    row.study_uid,
                    row.action,
                    row.patient_uuid,
                    row.attachment_uuid,
                    row.reason,
                ),
            )

    # -- reading ---------------------------------------------------------------------------
    def get(self, orthanc_id: str) -> StudyRow | None:
        rows = self._query("SELECT * FROM studies WHERE orthanc_id = ?", (orthanc_id,))
        return _row(rows[0]) if rows else None

    def find_by_uid(self, study_uid: str) -> list[StudyRow]:
        return [
            _row(r) for r in self._query("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))
        ]

    def all_studies(self) -> list[StudyRow]:
        return [_row(r) for r in self._query("SELECT * FROM studies ORDER BY discovered_at")]

    def counts(self) -> dict[State, int]:
        rows = self._query("SELECT state, COUNT(*) AS n FROM studies GROUP BY state")
        counts = {state: 0 for state in State}
        for r in rows:
            counts[State(r["state"])] = int(r["n"])
        return counts

    def needing_a_person(self, limit: int = 1000) -> list[StudyRow]:
        marks = ",".join("?" for _ in NEEDS_A_PERSON)
        rows = self._query(
            f"SELECT * FROM studies WHERE state IN ({marks}) ORDER BY updated_at LIMIT ?",  # noqa: S608
            (*(s.value for s in NEEDS_A_PERSON), limit),
        )
        return [_row(r) for r in rows]

    def audit(self, orthanc_id: str | None = None) -> list[AuditRow]:
        sql = "SELECT * FROM audit"
        params: tuple[object, ...] = ()
        if orthanc_id:
            sql += " WHERE orthanc_id = ? OR study_uid = ?"
            params = (orthanc_id, orthanc_id)
        rows = self._query(sql + " ORDER BY id", params)
        return [
            AuditRow(
                at=float(r["at"]),
                orthanc_id=r["orthanc_id"],
                study_uid=r["study_uid"],
                action=r["action"],
                patient_uuid=r["patient_uuid"],
                attachment_uuid=r["attachment_uuid"],
                reason=r["reason"],
            )
            for r in rows
        ]


def _row(r: sqlite3.Row) -> StudyRow:
    return StudyRow(
        orthanc_id=r["orthanc_id"],
        study_uid=r["study_uid"],
        state=State(r["state"]),
        reason=r["reason"],
        retryable=bool(r["retryable"]),
        dicom_patient_id=r["dicom_patient_id"],
        patient_uuid=r["patient_uuid"],
        attachment_uuid=r["attachment_uuid"],
        instance_id=r["instance_id"],
        caption=r["caption"],
        candidates=r["candidates"],
        attempts=int(r["attempts"]),
        next_attempt_at=r["next_attempt_at"],
        updated_at=float(r["updated_at"]),
        orthanc_last_update=r["orthanc_last_update"],
    )
