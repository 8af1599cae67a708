"""The ledger: one row per Orthanc study, the changes cursor, and an audit trail. All SQL is here.

Only the thread that created the store uses it; workers hand their results back to that thread.

Several processes may share one ledger file. A study is worked only under a lease: a claim
takes due studies for this store's owner until `now + LEASE`, in one immediate transaction, so
two processes never take the same study, nor two Orthanc identities of one StudyInstanceUID.
The owner renews the leases of what it has in flight, recording a result gives the lease up,
and a lease that runs out (its process was killed) lets another process take the study over.
Work done for the whole ledger (the sweep) is leased by name in the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.models import NEEDS_A_PERSON, WAITING, PatientChange, Prior, State, StudyResult

_OPEN_TIMEOUT = 30.0

# Seconds a lease lasts unless renewed. The owner renews every RENEW_EVERY, so a lease runs out
# only when its process is dead or stuck: longer than two HTTP timeouts (30 s each) in a row,
# short enough that a killed process's studies are taken over within a minute and a half.
LEASE = 90.0
RENEW_EVERY = LEASE / 3

# The first schema. A new ledger is made from it and then migrated like an old one, so the
# path every existing ledger takes at start is the one the tests take every time.
_SCHEMA_V1 = """
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
_MIGRATIONS: dict[int, str] = {
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
SCHEMA_VERSION = max(_MIGRATIONS)
# Orthanc may drop one render for a reason of its own; the second time it is the file.
RENDER_CRASH_LIMIT = 2

# A candidate patient is stored as "uuid display": its uuid, in SQL.
_CANDIDATE_UUID = "substr(c.value, 1, instr(c.value || ' ', ' ') - 1)"
# Studies found by following changes go before the backlog, so a backfill never starves them.
LIVE, BACKLOG = 0, 1
# States in which the service may still act on a study by itself.
_ACTIVE = ("pending", "unmatched", "ambiguous", "mismatch", "conflict", "failed")

# Due for an attempt, not tried since the pass began, not leased (or its lease has run out),
# and no other identity of its StudyInstanceUID leased by another process whose lease runs.
_CLAIMABLE = """
    s.next_attempt_at IS NOT NULL AND s.next_attempt_at <= :now
    AND (s.last_attempt_at IS NULL OR s.last_attempt_at < :since)
    AND (s.lease_owner = '' OR s.lease_until <= :now)
    AND s.orthanc_id NOT IN (SELECT value FROM json_each(:exclude))
    AND NOT EXISTS (
        SELECT 1 FROM studies AS o
        WHERE s.study_uid != '' AND o.study_uid = s.study_uid
        AND o.lease_owner NOT IN ('', :me) AND o.lease_until > :now
    )
"""
# SET clauses that give up this owner's lease, and no one else's, in the statement that records
# the outcome (SET reads the old values, so the order of the two does not matter).
_LET_GO = (
    "lease_until = CASE WHEN lease_owner = :me THEN NULL ELSE lease_until END, "
    "lease_owner = CASE WHEN lease_owner = :me THEN '' ELSE lease_owner END"
)


@dataclass(frozen=True)
class Lease:
    """Another process's hold on a study (or on shared work), as a refusal names it."""

    orthanc_id: str
    owner: str
    until: float


@dataclass(frozen=True)
class StudyRow:
    orthanc_id: str
    study_uid: str
    state: State
    reason: str
    retryable: bool
    dicom_patient_id: str
    patient_name: str
    birth_date: str
    patient_sex: str
    study_date: str
    description: str
    candidate_patients: tuple[str, ...]
    patient_uuid: str
    manual_patient_uuid: str
    linked_by: str
    attachment_uuid: str
    instance_id: str
    caption: str
    attempts: int
    next_attempt_at: float | None
    updated_at: float
    orthanc_last_update: str
    preview_source: str = ""

    @property
    def prior(self) -> Prior:
        return Prior(
            state=self.state,
            patient_uuid=self.patient_uuid,
            attachment_uuid=self.attachment_uuid,
            instance_id=self.instance_id,
            manual_patient_uuid=self.manual_patient_uuid,
            study_uid=self.study_uid,
        )


@dataclass(frozen=True)
class RenderCrash:
    instance_id: str
    orthanc_id: str  # the study being synced when it happened
    crashes: int
    last_at: float


@dataclass(frozen=True)
class AuditRow:
    at: float
    orthanc_id: str
    study_uid: str
    action: str
    patient_uuid: str
    attachment_uuid: str
    reason: str


def process_owner() -> str:
    """A lease owner unique to this process (and this store): host, pid, and a random part, since
    a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Store:
    def __init__(self, path: Path, *, owner: str | None = None, read_only: bool = False) -> None:
        """`read_only`: a view for other threads (the metrics endpoint) of a ledger that
        another connection writes; it never creates, migrates or writes."""
        self.owner = owner or process_owner()
        if read_only:
            self._open_read_only(path)
            return
        try:
            _create_private(path)
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=_OPEN_TIMEOUT)
            self._db.row_factory = sqlite3.Row
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
        self.path = path

    def _open_read_only(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=_OPEN_TIMEOUT,
                check_same_thread=False,  # its user serialises the threads
            )
            self._db.row_factory = sqlite3.Row
        except sqlite3.Error as exc:
            raise StoreError(f"SYNC_DATABASE: cannot open {path}: {exc}") from exc
        self.path = path

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

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
            steps = [_SCHEMA_V1] if version == 0 else []
            steps += [_MIGRATIONS[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1)]
            for step in steps:
                for statement in _statements(step):
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The writes inside go in one transaction. With busy workers, every statement costs the
        thread that writes a wait for the GIL, so fewer transactions keep the ledger in step."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._db.in_transaction:
            yield self._db  # part of an enclosing batch, which commits or rolls back for all
            return
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

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._db.execute(sql, tuple(params)).fetchall())
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
        """Move the changes cursor forward; it never goes back, even when another process on
        the ledger moved it further between our read of the feed and this write."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('changes_cursor', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
                "WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(seq),),
            )

    def reset_cursor(self, seq: int) -> None:
        """Orthanc's changes log restarted (a new database): start over from its new end."""
        self._set_meta("changes_cursor", str(seq))

    def catchup_done(self) -> bool:
        return self._meta("catchup_done") == "1"

    def mark_catchup_done(self) -> None:
        self._set_meta("catchup_done", "1")

    def last_reconcile(self) -> float:
        return float(self._meta("last_reconcile") or 0)

    # -- discovery -------------------------------------------------------------------------
    def discover(
        self,
        orthanc_ids: list[str],
        now: float,
        *,
        priority: int,
        due_at: float,
        uids: Mapping[str, str] | None = None,
    ) -> int:
        """Record studies seen in Orthanc; the new ones count. A study that had gone and is
        back (same PatientID and UID give the same Orthanc ID) is pending again. `uids` gives
        the StudyInstanceUID of those whose UID was read with them."""
        uids = uids or {}
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO studies (orthanc_id, study_uid, state, priority, "
                "next_attempt_at, discovered_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                [(oid, uids.get(oid, ""), priority, due_at, now, now) for oid in orthanc_ids],
            )
            new = db.total_changes - before
            db.executemany(
                "UPDATE studies SET state = 'pending', next_attempt_at = ?, updated_at = ? "
                "WHERE orthanc_id = ? AND state = 'gone'",
                [(due_at, now, oid) for oid in orthanc_ids],
            )
            db.executemany(
                "UPDATE studies SET study_uid = ? WHERE orthanc_id = ? AND study_uid = ''",
                [(uid, oid) for oid, uid in uids.items() if uid],
            )
            return int(new)

    def without_uid(self, orthanc_ids: list[str]) -> list[str]:
        """Those of these studies whose StudyInstanceUID the ledger does not hold yet."""
        rows = self._query(
            "SELECT orthanc_id FROM studies WHERE study_uid != '' "
            "AND orthanc_id IN (SELECT value FROM json_each(?))",
            (json.dumps(orthanc_ids),),
        )
        known = {str(r["orthanc_id"]) for r in rows}
        return [oid for oid in orthanc_ids if oid not in known]

    def same_uid(self, rows: Sequence[StudyRow]) -> dict[str, tuple[str, ...] | None]:
        """For each of these studies, the other studies in the ledger with its
        StudyInstanceUID; None when the ledger cannot vouch for knowing them all (it holds a
        study whose UID it has not read, or has not read this one's)."""
        if not rows:
            return {}  # the pass asks after every finished study, mostly with nothing claimed
        unread = self._query(
            "SELECT 1 FROM studies WHERE study_uid = '' AND state != 'gone' LIMIT 1"
        )
        uids = sorted({row.study_uid for row in rows if row.study_uid})
        holders: dict[str, list[str]] = {uid: [] for uid in uids}
        if not unread and uids:
            for r in self._query(
                "SELECT study_uid, orthanc_id FROM studies WHERE state != 'gone' "
                "AND study_uid IN (SELECT value FROM json_each(?)) ORDER BY orthanc_id",
                (json.dumps(uids),),
            ):
                holders[str(r["study_uid"])].append(str(r["orthanc_id"]))
        return {
            row.orthanc_id: None
            if unread or not row.study_uid
            else tuple(i for i in holders[row.study_uid] if i != row.orthanc_id)
            for row in rows
        }

    def note_stable(
        self, orthanc_ids: list[str], now: float, uids: Mapping[str, str] | None = None
    ) -> None:
        """Orthanc says these studies are complete (again): try the waiting ones now, and look
        again at synced ones, in case a late series changes what represents them."""
        self.discover(orthanc_ids, now, priority=LIVE, due_at=now, uids=uids)
        with self._tx() as db:
            db.executemany(
                "UPDATE studies SET next_attempt_at = ?, priority = ?, "
                "recheck = CASE WHEN state = 'synced' THEN 1 ELSE recheck END "
                "WHERE orthanc_id = ? AND state IN ('pending', 'unmatched', 'ambiguous', "
                "'mismatch', 'failed', 'synced')",
                [(now, LIVE, oid) for oid in orthanc_ids],
            )

    # -- leases ----------------------------------------------------------------------------
    def claim_due(
        self, now: float, limit: int, *, exclude: set[str], not_tried_since: float
    ) -> list[StudyRow]:
        """Take up to `limit` studies due for an attempt, live ones first, for this owner until
        now + LEASE; skip those tried since the pass began and those leased (see _CLAIMABLE).
        `exclude`, what is in flight here, stays out even if its lease ran out meanwhile."""
        with self._tx() as db:
            rows = db.execute(
                "UPDATE studies SET lease_owner = :me, lease_until = :until "  # noqa: S608
                f"WHERE orthanc_id IN (SELECT s.orthanc_id FROM studies AS s WHERE {_CLAIMABLE} "
                "ORDER BY s.priority, s.next_attempt_at LIMIT :limit) RETURNING *",
                {
                    "me": self.owner,
                    "now": now,
                    "until": now + LEASE,
                    "since": not_tried_since,
                    "exclude": json.dumps(sorted(exclude)),
                    "limit": limit,
                },
            ).fetchall()
        # RETURNING keeps no order.
        rows.sort(key=lambda r: (r["priority"], r["next_attempt_at"]))
        return [_row(r) for r in rows]

    def learn_claimed_uids(self, uids: Mapping[str, str], now: float) -> set[str]:
        """The StudyInstanceUIDs just read of studies this owner claimed without one. Those
        whose UID another live process is working (under another Orthanc identity) are given
        back: their Orthanc IDs are returned."""
        with self._tx() as db:
            db.executemany(
                "UPDATE studies SET study_uid = ? WHERE orthanc_id = ? AND study_uid = ''",
                [(uid, oid) for oid, uid in uids.items() if uid],
            )
            busy = {
                str(r["orthanc_id"])
                for r in db.execute(
                    "SELECT s.orthanc_id FROM studies AS s "
                    "WHERE s.orthanc_id IN (SELECT value FROM json_each(:ids)) AND EXISTS ("
                    "SELECT 1 FROM studies AS o WHERE s.study_uid != '' "
                    "AND o.study_uid = s.study_uid AND o.lease_owner NOT IN ('', :me) "
                    "AND o.lease_until > :now)",
                    {"ids": json.dumps(sorted(uids)), "me": self.owner, "now": now},
                )
            }
            self._let_go(db, busy)
        return busy

    def claim_study(self, orthanc_id: str, now: float, study_uid: str = "") -> Lease | None:
        """Take one study for this owner whatever its schedule (a person's command, the sweep).
        None when taken; otherwise the lease another live process holds on it or on another
        identity of its StudyInstanceUID. A study the ledger lacks is added, due now, with
        `study_uid` (the caller reads it first: a claim cannot keep others off an unknown UID)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO studies (orthanc_id, study_uid, state, priority, "
                "next_attempt_at, discovered_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                (orthanc_id, study_uid, LIVE, now, now, now),
            )
            if study_uid:
                db.execute(
                    "UPDATE studies SET study_uid = ? WHERE orthanc_id = ? AND study_uid = ''",
                    (study_uid, orthanc_id),
                )
            (uid,) = db.execute(
                "SELECT study_uid FROM studies WHERE orthanc_id = ?", (orthanc_id,)
            ).fetchone()
            held = db.execute(
                "SELECT orthanc_id, lease_owner, lease_until FROM studies "
                "WHERE (orthanc_id = :id OR (:uid != '' AND study_uid = :uid)) "
                "AND lease_owner NOT IN ('', :me) AND lease_until > :now "
                "ORDER BY lease_until DESC LIMIT 1",
                {"id": orthanc_id, "uid": uid, "me": self.owner, "now": now},
            ).fetchone()
            if held is not None:
                return Lease(held["orthanc_id"], held["lease_owner"], float(held["lease_until"]))
            db.execute(
                "UPDATE studies SET lease_owner = ?, lease_until = ? WHERE orthanc_id = ?",
                (self.owner, now + LEASE, orthanc_id),
            )
        return None

    def renew_leases(self, orthanc_ids: Iterable[str], now: float) -> int:
        """Extend this owner's leases on these studies to now + LEASE; how many it still held."""
        with self._tx() as db:
            return int(
                db.execute(
                    "UPDATE studies SET lease_until = ? WHERE lease_owner = ? "
                    "AND orthanc_id IN (SELECT value FROM json_each(?))",
                    (now + LEASE, self.owner, json.dumps(sorted(orthanc_ids))),
                ).rowcount
            )

    def release(self, orthanc_ids: Iterable[str]) -> None:
        """Give up this owner's leases on these studies (not worked after all)."""
        with self._tx() as db:
            self._let_go(db, orthanc_ids)

    def _let_go(self, db: sqlite3.Connection, orthanc_ids: Iterable[str]) -> None:
        db.execute(
            "UPDATE studies SET lease_owner = '', lease_until = NULL WHERE lease_owner = ? "
            "AND orthanc_id IN (SELECT value FROM json_each(?))",
            (self.owner, json.dumps(sorted(orthanc_ids))),
        )

    def claim_task(self, name: str, now: float) -> bool:
        """Take, or renew, the lease on work one process at a time does for the whole ledger;
        False while another live process holds it."""
        with self._tx() as db:
            taken = db.execute(
                "INSERT INTO leases (name, owner, until) VALUES (:name, :me, :until) "
                "ON CONFLICT (name) DO UPDATE SET owner = :me, until = :until "
                "WHERE leases.owner = :me OR leases.until <= :now RETURNING owner",
                {"name": name, "me": self.owner, "until": now + LEASE, "now": now},
            ).fetchall()
        return bool(taken)

    def release_task(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, self.owner))

    # -- results ---------------------------------------------------------------------------
    def record(
        self,
        result: StudyResult,
        state: State,
        now: float,
        next_attempt_at: float | None,
        audits: Sequence[AuditRow] = (),
    ) -> None:
        """Store the result of one attempt (its business meaning decided by the caller), and
        the changes it made in OpenMRS, in one transaction."""
        with self._tx() as db:
            self._insert_audits(db, audits)
            db.execute(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, discovered_at, updated_at) "
                "VALUES (?, 'pending', ?, ?)",
                (result.orthanc_id, now, now),
            )
            if result.candidates:  # an attempt that failed before reading them keeps the old
                db.execute(
                    "DELETE FROM study_identifiers WHERE orthanc_id = ?", (result.orthanc_id,)
                )
            db.executemany(
                "INSERT OR IGNORE INTO study_identifiers (orthanc_id, identifier) VALUES (?, ?)",
                [(result.orthanc_id, value) for value in result.candidates],
            )
            db.execute(
                """UPDATE studies SET
                    state = :state, reason = :reason, retryable = :retryable,
                    next_attempt_at = :next, last_attempt_at = :now, updated_at = :now,
                    attempts = attempts + 1, recheck = 0,
                    lease_until = CASE WHEN lease_owner = :me THEN NULL ELSE lease_until END,
                    lease_owner = CASE WHEN lease_owner = :me THEN '' ELSE lease_owner END,
                    study_uid = COALESCE(NULLIF(:uid, ''), study_uid),
                    dicom_patient_id = COALESCE(NULLIF(:pid, ''), dicom_patient_id),
                    patient_name = COALESCE(NULLIF(:name, ''), patient_name),
                    birth_date = COALESCE(NULLIF(:birth, ''), birth_date),
                    patient_sex = COALESCE(NULLIF(:sex, ''), patient_sex),
                    study_date = COALESCE(NULLIF(:date, ''), study_date),
                    description = COALESCE(NULLIF(:description, ''), description),
                    orthanc_last_update = COALESCE(NULLIF(:last_update, ''), orthanc_last_update),
                    candidates = COALESCE(NULLIF(:candidates, ''), candidates),
                    candidate_patients = :candidate_patients,
                    patient_uuid = COALESCE(NULLIF(:patient, ''), patient_uuid),
                    attachment_uuid = COALESCE(NULLIF(:attachment, ''), attachment_uuid),
                    instance_id = COALESCE(NULLIF(:instance, ''), instance_id),
                    caption = COALESCE(NULLIF(:caption, ''), caption),
                    preview_source = COALESCE(NULLIF(:source, ''), preview_source),
                    synced_at = CASE WHEN :state = 'synced' THEN :now ELSE synced_at END
                WHERE orthanc_id = :id""",
                {
                    "state": state.value,
                    "reason": result.reason,
                    "retryable": int(result.retryable),
                    "next": next_attempt_at,
                    "now": now,
                    "uid": result.study_uid,
                    "pid": result.dicom_patient_id,
                    "name": result.patient_name,
                    "birth": result.birth_date,
                    "sex": result.patient_sex,
                    "date": result.study_date,
                    "description": result.description,
                    "last_update": result.last_update,
                    "candidates": "\n".join(result.candidates),
                    "candidate_patients": json.dumps(list(result.candidate_patients)),
                    "patient": result.patient_uuid,
                    "attachment": result.attachment_uuid,
                    "instance": result.instance_id,
                    "caption": result.caption,
                    "source": result.preview_source,
                    "id": result.orthanc_id,
                    "me": self.owner,
                },
            )

    def wake_for_patients(self, changes: Sequence[PatientChange], now: float) -> int:
        """Patients changed in OpenMRS: the studies waiting for one of their identifiers are due
        now, and so are synced studies naming one of them that sit on another patient's chart
        (a merge moved their attachment, or the identifier moved); how many were woken.

        A manual link is a person's decision and is left alone."""
        pairs = json.dumps([[c.uuid, value] for c in changes for value in c.identifiers])
        marks = ",".join("?" for _ in WAITING)
        with self._tx() as db:
            before = db.total_changes
            db.execute(
                f"""UPDATE studies SET next_attempt_at = ?, priority = ?, updated_at = ?,
                    recheck = CASE WHEN state = 'synced' THEN 1 ELSE recheck END
                WHERE orthanc_id IN (
                    SELECT s.orthanc_id FROM json_each(?) AS p
                    JOIN study_identifiers AS i ON i.identifier = json_extract(p.value, '$[1]')
                    JOIN studies AS s ON s.orthanc_id = i.orthanc_id
                    WHERE s.state IN ({marks})
                       OR (s.state = 'synced' AND s.manual_patient_uuid = ''
                           AND s.patient_uuid != json_extract(p.value, '$[0]'))
                )""",  # noqa: S608
                (now, LIVE, now, pairs, *(state.value for state in WAITING)),
            )
            return int(db.total_changes - before)

    def patients_to_check(self, after: str, limit: int) -> list[str]:
        """Patients holding synced studies, and the candidates of ambiguous ones, in uuid order
        after `after`: the sweep checks a slice of them each time, so every one is checked in
        turn at a bounded cost."""
        rows = self._query(
            f"""SELECT uuid FROM (
                    SELECT patient_uuid AS uuid FROM studies WHERE state = 'synced'
                    UNION
                    SELECT {_CANDIDATE_UUID} AS uuid
                    FROM studies AS s, json_each(s.candidate_patients) AS c
                    WHERE s.state = 'ambiguous'
                ) WHERE uuid > ? ORDER BY uuid LIMIT ?""",  # noqa: S608
            (after, limit),
        )
        return [str(r["uuid"]) for r in rows]

    def recheck_studies_of(self, patient_uuids: Sequence[str], now: float) -> int:
        """Patients voided or merged away: their synced studies, and the ambiguous studies
        naming them as candidates, are looked at again now; how many."""
        with self._tx() as db:
            before = db.total_changes
            db.execute(
                f"""UPDATE studies SET next_attempt_at = ?, priority = ?, updated_at = ?,
                    recheck = CASE WHEN state = 'synced' THEN 1 ELSE recheck END
                WHERE (state = 'synced' AND patient_uuid IN (SELECT value FROM json_each(?)))
                   OR (state = 'ambiguous' AND EXISTS (
                        SELECT 1 FROM json_each(candidate_patients) AS c
                        WHERE {_CANDIDATE_UUID} IN (SELECT value FROM json_each(?))))""",  # noqa: S608
                (now, LIVE, now, json.dumps(list(patient_uuids)), json.dumps(list(patient_uuids))),
            )
            return int(db.total_changes - before)

    def patient_check_mark(self) -> str:
        return self._meta("patient_check_after") or ""

    def set_patient_check_mark(self, after: str) -> None:
        self._set_meta("patient_check_after", after)

    def patient_watermark(self) -> str | None:
        return self._meta("patient_watermark")

    def set_patient_watermark(self, encoded: str) -> None:
        self._set_meta("patient_watermark", encoded)

    def count_due(self, now: float) -> int:
        rows = self._query(
            "SELECT COUNT(*) AS n FROM studies WHERE next_attempt_at IS NOT NULL "
            "AND next_attempt_at <= ?",
            (now,),
        )
        return int(rows[0]["n"])

    def touch(self, orthanc_id: str, now: float) -> None:
        """Looked at in this pass (a dry run), nothing else changes."""
        with self._tx() as db:
            db.execute(
                f"UPDATE studies SET last_attempt_at = :now, {_LET_GO} "  # noqa: S608
                "WHERE orthanc_id = :id",
                {"now": now, "id": orthanc_id, "me": self.owner},
            )

    def record_waiting(
        self, orthanc_id: str, next_attempt_at: float, now: float, study_uid: str = ""
    ) -> None:
        """The study is still receiving instances: look again later, count no attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET next_attempt_at = :next, last_attempt_at = :now, "  # noqa: S608
                f"updated_at = :now, study_uid = COALESCE(NULLIF(:uid, ''), study_uid), {_LET_GO} "
                "WHERE orthanc_id = :id",
                {
                    "next": next_attempt_at,
                    "now": now,
                    "uid": study_uid,
                    "id": orthanc_id,
                    "me": self.owner,
                },
            )

    def set_state(
        self, orthanc_id: str, state: State, reason: str, now: float, *, voided: bool = False
    ) -> None:
        """A final state reached outside an attempt (deleted, superseded, ignored); `voided`:
        its attachment was voided, so the ledger no longer points at it. This owner's lease on
        it, if any, ends."""
        with self._tx() as db:
            db.execute(
                f"UPDATE studies SET {_LET_GO}, state = :state, reason = :reason, "  # noqa: S608
                "next_attempt_at = NULL, recheck = 0, updated_at = :now, "
                "attachment_uuid = CASE WHEN :voided THEN '' ELSE attachment_uuid END "
                "WHERE orthanc_id = :id",
                {
                    "state": state.value,
                    "reason": reason,
                    "now": now,
                    "voided": voided,
                    "id": orthanc_id,
                    "me": self.owner,
                },
            )

    def link_manually(self, orthanc_id: str, patient_uuid: str, by: str, now: float) -> None:
        """A person decided which patient the study belongs to; try it now with that patient."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, discovered_at, updated_at) "
                "VALUES (?, 'pending', ?, ?)",
                (orthanc_id, now, now),
            )
            db.execute(
                "UPDATE studies SET manual_patient_uuid = ?, linked_by = ?, linked_at = ?, "
                "state = CASE WHEN state IN ('ignored', 'gone') THEN 'pending' ELSE state END, "
                "next_attempt_at = ?, priority = ?, recheck = 1, updated_at = ? "
                "WHERE orthanc_id = ?",
                (patient_uuid, by, now, now, LIVE, now, orthanc_id),
            )

    def make_due(self, orthanc_id: str, now: float, *, reset: bool = False) -> None:
        """Try a study now; `reset` also brings back an ignored or given-up study."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO studies (orthanc_id, state, priority, next_attempt_at, "
                "discovered_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?)",
                (orthanc_id, LIVE, now, now, now),
            )
            state_sql = "CASE WHEN state = 'ignored' THEN 'pending' ELSE state END"
            db.execute(
                f"UPDATE studies SET next_attempt_at = ?, updated_at = ?, "  # noqa: S608
                f"state = {state_sql if reset else 'state'}, "
                f"attempts = {'0' if reset else 'attempts'} WHERE orthanc_id = ?",
                (now, now, orthanc_id),
            )

    def add_audit(self, row: AuditRow) -> None:
        with self._tx() as db:
            self._insert_audits(db, [row])

    @staticmethod
    def _insert_audits(db: sqlite3.Connection, rows: Sequence[AuditRow]) -> None:
        db.executemany(
            "INSERT INTO audit (at, orthanc_id, study_uid, action, patient_uuid, "
            "attachment_uuid, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.at,
                    r.orthanc_id,
                    r.study_uid,
                    r.action,
                    r.patient_uuid,
                    r.attachment_uuid,
                    r.reason,
                )
                for r in rows
            ],
        )

    # -- reconciliation --------------------------------------------------------------------
    def begin_sweep(self) -> int:
        """The number of a new sweep, higher than any before (read and raised in one step)."""
        with self._tx() as db:
            (value,) = db.execute(
                "INSERT INTO meta (key, value) VALUES ('sweep', '1') ON CONFLICT (key) "
                "DO UPDATE SET value = CAST(meta.value AS INTEGER) + 1 RETURNING value"
            ).fetchone()
        return int(value)

    def mark_seen(
        self,
        orthanc_ids: list[str],
        sweep: int,
        now: float,
        uids: Mapping[str, str] | None = None,
    ) -> int:
        """Studies Orthanc holds: unknown ones are new; waiting ones are looked at now (their
        StableStudy may never come). Returns how many were new."""
        new = self.discover(orthanc_ids, now, priority=BACKLOG, due_at=now, uids=uids)
        with self._tx() as db:
            db.executemany(
                # MAX: a sweep that began earlier never makes a study look unseen to a later one.
                "UPDATE studies SET seen_sweep = MAX(seen_sweep, ?), "
                "next_attempt_at = CASE WHEN state = 'pending' "
                "AND next_attempt_at > ? THEN ? ELSE next_attempt_at END WHERE orthanc_id = ?",
                [(sweep, now, now, oid) for oid in orthanc_ids],
            )
        return new

    def unseen(self, sweep: int) -> list[StudyRow]:
        """Studies the ledger has that Orthanc no longer listed in this sweep."""
        rows = self._query(
            "SELECT * FROM studies WHERE seen_sweep < ? AND state NOT IN ('gone', 'superseded')",
            (sweep,),
        )
        return [_row(r) for r in rows]

    def finish_sweep(self, now: float) -> None:
        self._set_meta("last_reconcile", str(now))

    def synced_with_uid(self, study_uid: str, *, besides: str = "") -> list[StudyRow]:
        """Synced studies with this UID, newest first, leaving out the study `besides`."""
        rows = self._query(
            "SELECT * FROM studies WHERE study_uid = ? AND state = 'synced' AND orthanc_id != ? "
            "ORDER BY orthanc_last_update DESC, orthanc_id DESC",
            (study_uid, besides),
        )
        return [_row(r) for r in rows]

    def superseded(self, limit: int = 1000) -> list[StudyRow]:
        """Studies that gave way to another Orthanc identity of their UID, with the reason."""
        rows = self._query(
            "SELECT * FROM studies WHERE state = 'superseded' ORDER BY updated_at LIMIT ?", (limit,)
        )
        return [_row(r) for r in rows]

    def uids_synced_twice(self) -> list[str]:
        rows = self._query(
            "SELECT study_uid FROM studies WHERE state = 'synced' AND study_uid != '' "
            "GROUP BY study_uid HAVING COUNT(*) > 1"
        )
        return [str(r["study_uid"]) for r in rows]

    # -- reading ---------------------------------------------------------------------------
    def get(self, orthanc_id: str) -> StudyRow | None:
        rows = self._query("SELECT * FROM studies WHERE orthanc_id = ?", (orthanc_id,))
        return _row(rows[0]) if rows else None

    def find(self, reference: str) -> list[StudyRow]:
        """Rows by Orthanc ID or StudyInstanceUID."""
        rows = self._query(
            "SELECT * FROM studies WHERE orthanc_id = ? OR study_uid = ? ORDER BY discovered_at",
            (reference, reference),
        )
        return [_row(r) for r in rows]

    def all_studies(self) -> list[StudyRow]:
        return [_row(r) for r in self._query("SELECT * FROM studies ORDER BY discovered_at")]

    def counts(self) -> dict[State, int]:
        rows = self._query("SELECT state, COUNT(*) AS n FROM studies GROUP BY state")
        counts = dict.fromkeys(State, 0)
        for r in rows:
            counts[State(r["state"])] = int(r["n"])
        return counts

    def needing_a_person(self, limit: int = 1000) -> list[StudyRow]:
        marks = ",".join("?" for _ in NEEDS_A_PERSON)
        rows = self._query(
            f"SELECT * FROM studies WHERE state IN ({marks}) "  # noqa: S608
            "ORDER BY updated_at LIMIT ?",
            (*(s.value for s in NEEDS_A_PERSON), limit),
        )
        return [_row(r) for r in rows]

    # -- previews --------------------------------------------------------------------------
    def charge_render_crash(self, instance_id: str, orthanc_id: str, now: float) -> int:
        """Orthanc stopped answering while rendering this instance: how often it has now."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO render_crashes (instance_id, orthanc_id, crashes, first_at, last_at) "
                "VALUES (?, ?, 1, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET "
                "crashes = crashes + 1, last_at = excluded.last_at, "
                "orthanc_id = excluded.orthanc_id",
                (instance_id, orthanc_id, now, now),
            )
            row = db.execute(
                "SELECT crashes FROM render_crashes WHERE instance_id = ?", (instance_id,)
            ).fetchone()
        return int(row[0])

    def not_to_render(self) -> frozenset[str]:
        """Instances Orthanc must not be asked to render again."""
        rows = self._query(
            "SELECT instance_id FROM render_crashes WHERE crashes >= ?", (RENDER_CRASH_LIMIT,)
        )
        return frozenset(r["instance_id"] for r in rows)

    def render_crashes(self) -> list[RenderCrash]:
        rows = self._query("SELECT * FROM render_crashes ORDER BY last_at")
        return [
            RenderCrash(r["instance_id"], r["orthanc_id"], int(r["crashes"]), float(r["last_at"]))
            for r in rows
        ]

    def preview_sources(self) -> dict[str, int]:
        """How many attached studies' previews came from each path."""
        rows = self._query(
            "SELECT preview_source, COUNT(*) AS n FROM studies "
            "WHERE state = 'synced' AND preview_source != '' GROUP BY preview_source"
        )
        return {r["preview_source"]: int(r["n"]) for r in rows}

    def audit(self, reference: str | None = None) -> list[AuditRow]:
        sql, params = "SELECT * FROM audit", tuple[str, ...]()
        if reference:
            sql, params = sql + " WHERE orthanc_id = ? OR study_uid = ?", (reference, reference)
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
            for r in self._query(sql + " ORDER BY id", params)
        ]

    # -- the review pages ------------------------------------------------------------------
    # Read-only queries for web/ (and one get-or-create of its signing secret), in SQL that
    # any SQL database runs: bound parameters, LIKE, LIMIT/OFFSET.
    def review_page(
        self, states: Sequence[State], text: str, limit: int, offset: int
    ) -> tuple[list[StudyRow], int]:
        """One page of the studies in `states` (oldest change first), those whose identity,
        reason or UID holds `text` when given, and how many there are in all."""
        marks = ",".join("?" for _ in states) or "''"
        where = f"state IN ({marks})"
        params: list[object] = [s.value for s in states]
        if text:
            pattern = "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
            fields = ("dicom_patient_id", "patient_name", "description", "reason", "study_uid")
            where += " AND (" + " OR ".join(f"{f} LIKE ? ESCAPE '!'" for f in fields) + ")"
            params += [pattern] * len(fields)
        (total,) = self._query(f"SELECT COUNT(*) FROM studies WHERE {where}", params)[0]  # noqa: S608
        rows = self._query(
            f"SELECT * FROM studies WHERE {where} "  # noqa: S608
            "ORDER BY updated_at, orthanc_id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_row(r) for r in rows], int(total)

    def recent_failures(self, limit: int) -> list[StudyRow]:
        """The studies that failed most recently, newest first."""
        rows = self._query(
            "SELECT * FROM studies WHERE state = 'failed' "
            "ORDER BY updated_at DESC, orthanc_id LIMIT ?",
            (limit,),
        )
        return [_row(r) for r in rows]

    def review_audit(self, limit: int, offset: int) -> tuple[list[AuditRow], int]:
        """One page of the audit trail, newest first, and its length."""
        (total,) = self._query("SELECT COUNT(*) FROM audit")[0]
        rows = self._query("SELECT * FROM audit ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
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
        ], int(total)

    def web_secret(self, new: str) -> str:
        """The review pages' cookie-signing secret: `new` if none is kept yet, else the kept
        one, so that every process on the ledger and every restart sign alike."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('web_secret', ?) "
                "ON CONFLICT (key) DO NOTHING",
                (new,),
            )
            (value,) = db.execute("SELECT value FROM meta WHERE key = 'web_secret'").fetchone()
        return str(value)

    # -- end of the review pages' queries ----------------------------------------------------


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


def _row(r: sqlite3.Row) -> StudyRow:
    return StudyRow(
        orthanc_id=r["orthanc_id"],
        study_uid=r["study_uid"],
        state=State(r["state"]),
        reason=r["reason"],
        retryable=bool(r["retryable"]),
        dicom_patient_id=r["dicom_patient_id"],
        patient_name=r["patient_name"],
        birth_date=r["birth_date"],
        patient_sex=r["patient_sex"],
        study_date=r["study_date"],
        description=r["description"],
        candidate_patients=tuple(json.loads(r["candidate_patients"] or "[]")),
        patient_uuid=r["patient_uuid"],
        manual_patient_uuid=r["manual_patient_uuid"],
        linked_by=r["linked_by"],
        attachment_uuid=r["attachment_uuid"],
        instance_id=r["instance_id"],
        caption=r["caption"],
        attempts=int(r["attempts"]),
        next_attempt_at=r["next_attempt_at"],
        updated_at=float(r["updated_at"]),
        orthanc_last_update=r["orthanc_last_update"],
        preview_source=r["preview_source"],
    )
