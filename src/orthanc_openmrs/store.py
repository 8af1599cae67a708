"""The ledger: one row per Orthanc study, the changes cursor, and an audit trail. Its queries
are all here, one text for both databases (ledger/dialect.py holds the few fragments they spell
differently; ledger/sqlite.py and ledger/postgres.py the connections and schemas).

Only the thread that created the store uses it; workers hand their results back to that thread.

Several processes may share one ledger (a SQLite file on one machine, a PostgreSQL database on
any). A study is worked only under a lease: a claim takes due studies for this store's owner
until `now + LEASE`, in one transaction that the database runs one at a time across processes,
so two processes never take the same study, nor two Orthanc identities of one StudyInstanceUID.
The owner renews the leases of what it has in flight, recording a result gives the lease up,
and a lease that runs out (its process was killed) lets another process take the study over.
Work done for the whole ledger (the changes feed, the sweep) is held by one process at a time:
leased by name on SQLite, an advisory lock that dies with its process on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.ledger.backend import Backend, Params, Row
from orthanc_openmrs.ledger.location import LedgerLocation, PostgresURL, parse_location
from orthanc_openmrs.ledger.sqlite import SCHEMA_VERSION as SCHEMA_VERSION
from orthanc_openmrs.ledger.sqlite import SqliteBackend
from orthanc_openmrs.models import NEEDS_A_PERSON, WAITING, PatientChange, Prior, State, StudyResult

# Seconds a lease lasts unless renewed. The owner renews every RENEW_EVERY, so a lease runs out
# only when its process is dead or stuck: longer than two HTTP timeouts (30 s each) in a row,
# short enough that a killed process's studies are taken over within a minute and a half.
LEASE = 90.0
RENEW_EVERY = LEASE / 3

# Orthanc may drop one render for a reason of its own; the second time it is the file.
RENDER_CRASH_LIMIT = 2

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
    AND s.orthanc_id NOT IN (SELECT value FROM {exclude})
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
    def __init__(
        self, location: LedgerLocation | str, *, owner: str | None = None, read_only: bool = False
    ) -> None:
        """`location`: a SQLite file, or a PostgreSQL database (SYNC_DATABASE). `read_only`: a
        view for other threads (the metrics endpoint) of a ledger that another connection
        writes; it never creates, migrates or writes."""
        self.owner = owner or process_owner()
        self.location = parse_location(location)
        self._db: Backend = open_backend(self.location, read_only=read_only)
        self._sql = self._db.dialect

    @property
    def path(self) -> LedgerLocation:
        return self.location

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The writes inside go in one transaction. With busy workers, every statement costs the
        thread that writes a wait for the GIL, so fewer transactions keep the ledger in step."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self, *, claims: bool = False) -> Iterator[Backend]:
        """One transaction (`claims`: one deciding who works what; see Backend.transaction)."""
        if self._db.in_transaction:
            yield self._db  # part of an enclosing batch, which commits or rolls back for all
            return
        try:
            with self._db.transaction(claims=claims):
                yield self._db
        except self._db.errors as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> StoreError:
        return StoreError(
            f"state database {self.location}: {self._db.redact(exc)}",
            retryable=self._db.transient(exc),
        )

    def _query(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return list(self._db.execute(sql, params).fetchall())
        except self._db.errors as exc:
            raise self._error(exc) from exc

    def _ids(self, name: str) -> str:
        """`SELECT value FROM` this, for a JSON array of strings in the parameter `name`."""
        return self._sql.each(name)

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
                "WHERE CAST(meta.value AS BIGINT) < CAST(excluded.value AS BIGINT)",
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
        orthanc_ids = sorted(orthanc_ids)  # row locks in one order (see Service._record_done)
        with self._tx() as db:
            new = db.executemany(
                "INSERT INTO studies (orthanc_id, study_uid, state, priority, "
                "next_attempt_at, discovered_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(oid, uids.get(oid, ""), priority, due_at, now, now) for oid in orthanc_ids],
            )
            db.executemany(
                "UPDATE studies SET state = 'pending', next_attempt_at = ?, updated_at = ? "
                "WHERE orthanc_id = ? AND state = 'gone'",
                [(due_at, now, oid) for oid in orthanc_ids],
            )
            db.executemany(
                "UPDATE studies SET study_uid = ? WHERE orthanc_id = ? AND study_uid = ''",
                [(uid, oid) for oid, uid in sorted(uids.items()) if uid],
            )
            return int(new)

    def without_uid(self, orthanc_ids: list[str]) -> list[str]:
        """Those of these studies whose StudyInstanceUID the ledger does not hold yet."""
        rows = self._query(
            "SELECT orthanc_id FROM studies WHERE study_uid != '' "  # noqa: S608
            f"AND orthanc_id IN (SELECT value FROM {self._ids('?')})",
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
                "SELECT study_uid, orthanc_id FROM studies WHERE state != 'gone' "  # noqa: S608
                f"AND study_uid IN (SELECT value FROM {self._ids('?')}) ORDER BY orthanc_id",
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
                [(now, LIVE, oid) for oid in sorted(orthanc_ids)],
            )

    # -- leases ----------------------------------------------------------------------------
    def claim_due(
        self, now: float, limit: int, *, exclude: set[str], not_tried_since: float
    ) -> list[StudyRow]:
        """Take up to `limit` studies due for an attempt, live ones first, for this owner until
        now + LEASE; skip those tried since the pass began and those leased (see _CLAIMABLE).
        `exclude`, what is in flight here, stays out even if its lease ran out meanwhile."""
        claimable = _CLAIMABLE.format(exclude=self._ids(":exclude"))
        with self._tx(claims=True) as db:
            rows = db.execute(
                "UPDATE studies SET lease_owner = :me, lease_until = :until "  # noqa: S608
                f"WHERE orthanc_id IN (SELECT s.orthanc_id FROM studies AS s WHERE {claimable} "
                f"ORDER BY s.priority, s.next_attempt_at LIMIT :limit {self._sql.skip_locked}) "
                "RETURNING *",
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
        with self._tx(claims=True) as db:
            db.executemany(
                "UPDATE studies SET study_uid = ? WHERE orthanc_id = ? AND study_uid = ''",
                [(uid, oid) for oid, uid in sorted(uids.items()) if uid],
            )
            busy = {
                str(r["orthanc_id"])
                for r in db.execute(
                    "SELECT s.orthanc_id FROM studies AS s "  # noqa: S608
                    f"WHERE s.orthanc_id IN (SELECT value FROM {self._ids(':ids')}) AND EXISTS ("
                    "SELECT 1 FROM studies AS o WHERE s.study_uid != '' "
                    "AND o.study_uid = s.study_uid AND o.lease_owner NOT IN ('', :me) "
                    "AND o.lease_until > :now)",
                    {"ids": json.dumps(sorted(uids)), "me": self.owner, "now": now},
                ).fetchall()
            }
            self._let_go(db, busy)
        return busy

    def claim_study(self, orthanc_id: str, now: float, study_uid: str = "") -> Lease | None:
        """Take one study for this owner whatever its schedule (a person's command, the sweep).
        None when taken; otherwise the lease another live process holds on it or on another
        identity of its StudyInstanceUID. A study the ledger lacks is added, due now, with
        `study_uid` (the caller reads it first: a claim cannot keep others off an unknown UID)."""
        with self._tx(claims=True) as db:
            db.execute(
                "INSERT INTO studies (orthanc_id, study_uid, state, priority, "
                "next_attempt_at, discovered_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (orthanc_id, study_uid, LIVE, now, now, now),
            )
            if study_uid:
                db.execute(
                    "UPDATE studies SET study_uid = ? WHERE orthanc_id = ? AND study_uid = ''",
                    (study_uid, orthanc_id),
                )
            found = db.execute(
                "SELECT study_uid FROM studies WHERE orthanc_id = ?", (orthanc_id,)
            ).fetchone()
            uid = found["study_uid"] if found else ""
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
                    "UPDATE studies SET lease_until = ? WHERE lease_owner = ? "  # noqa: S608
                    f"AND orthanc_id IN (SELECT value FROM {self._ids('?')})",
                    (now + LEASE, self.owner, json.dumps(sorted(orthanc_ids))),
                ).rowcount
            )

    def release(self, orthanc_ids: Iterable[str]) -> None:
        """Give up this owner's leases on these studies (not worked after all)."""
        with self._tx() as db:
            self._let_go(db, orthanc_ids)

    def _let_go(self, db: Backend, orthanc_ids: Iterable[str]) -> None:
        db.execute(
            "UPDATE studies SET lease_owner = '', lease_until = NULL "  # noqa: S608
            f"WHERE lease_owner = ? AND orthanc_id IN (SELECT value FROM {self._ids('?')})",
            (self.owner, json.dumps(sorted(orthanc_ids))),
        )

    def claim_task(self, name: str, now: float) -> bool:
        """Take, or renew, the lease on work one process at a time does for the whole ledger;
        False while another live process holds it. On PostgreSQL, a lock held by this
        process's connection, freed the moment the process dies (no waiting out a lease)."""
        if self._db.session_locks:
            try:
                return self._db.hold(name)
            except self._db.errors as exc:
                raise self._error(exc) from exc
        with self._tx() as db:
            taken = db.execute(
                "INSERT INTO leases (name, owner, until) VALUES (:name, :me, :until) "
                "ON CONFLICT (name) DO UPDATE SET owner = :me, until = :until "
                "WHERE leases.owner = :me OR leases.until <= :now RETURNING owner",
                {"name": name, "me": self.owner, "until": now + LEASE, "now": now},
            ).fetchall()
        return bool(taken)

    def release_task(self, name: str) -> None:
        if self._db.session_locks:
            self._db.let_go(name)
            return
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
                "INSERT INTO studies (orthanc_id, state, discovered_at, updated_at) "
                "VALUES (?, 'pending', ?, ?) ON CONFLICT DO NOTHING",
                (result.orthanc_id, now, now),
            )
            if result.candidates:  # an attempt that failed before reading them keeps the old
                db.execute(
                    "DELETE FROM study_identifiers WHERE orthanc_id = ?", (result.orthanc_id,)
                )
            db.executemany(
                "INSERT INTO study_identifiers (orthanc_id, identifier) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
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
            return db.execute(
                f"""UPDATE studies SET next_attempt_at = ?, priority = ?, updated_at = ?,
                    recheck = CASE WHEN state = 'synced' THEN 1 ELSE recheck END
                WHERE orthanc_id IN (
                    SELECT s.orthanc_id FROM {self._sql.pairs("?")} AS p
                    JOIN study_identifiers AS i ON i.identifier = p.identifier
                    JOIN studies AS s ON s.orthanc_id = i.orthanc_id
                    WHERE s.state IN ({marks})
                       OR (s.state = 'synced' AND s.manual_patient_uuid = ''
                           AND s.patient_uuid != p.uuid)
                )""",  # noqa: S608
                (now, LIVE, now, pairs, *(state.value for state in WAITING)),
            ).rowcount

    def patients_to_check(self, after: str, limit: int) -> list[str]:
        """Patients holding synced studies, and the candidates of ambiguous ones, in uuid order
        after `after`: the sweep checks a slice of them each time, so every one is checked in
        turn at a bounded cost."""
        rows = self._query(
            f"""SELECT uuid FROM (
                    SELECT patient_uuid AS uuid FROM studies WHERE state = 'synced'
                    UNION
                    SELECT {self._sql.candidate_uuid} AS uuid
                    FROM studies AS s, {self._sql.each("s.candidate_patients")} AS c
                    WHERE s.state = 'ambiguous'
                ) AS p WHERE uuid > ? ORDER BY uuid LIMIT ?""",  # noqa: S608
            (after, limit),
        )
        return [str(r["uuid"]) for r in rows]

    def recheck_studies_of(self, patient_uuids: Sequence[str], now: float) -> int:
        """Patients voided or merged away: their synced studies, and the ambiguous studies
        naming them as candidates, are looked at again now; how many."""
        each = self._sql.each
        with self._tx() as db:
            return db.execute(
                f"""UPDATE studies SET next_attempt_at = ?, priority = ?, updated_at = ?,
                    recheck = CASE WHEN state = 'synced' THEN 1 ELSE recheck END
                WHERE (state = 'synced' AND patient_uuid IN (SELECT value FROM {each("?")}))
                   OR (state = 'ambiguous' AND EXISTS (
                        SELECT 1 FROM {each("candidate_patients")} AS c
                        WHERE {self._sql.candidate_uuid} IN (SELECT value FROM {each("?")})))""",  # noqa: S608
                (now, LIVE, now, json.dumps(list(patient_uuids)), json.dumps(list(patient_uuids))),
            ).rowcount

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
                "INSERT INTO studies (orthanc_id, state, discovered_at, updated_at) "
                "VALUES (?, 'pending', ?, ?) ON CONFLICT DO NOTHING",
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
                "INSERT INTO studies (orthanc_id, state, priority, next_attempt_at, "
                "discovered_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
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
    def _insert_audits(db: Backend, rows: Sequence[AuditRow]) -> None:
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
            row = db.execute(
                "INSERT INTO meta (key, value) VALUES ('sweep', '1') ON CONFLICT (key) "
                "DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) RETURNING value"
            ).fetchone()
        assert row is not None  # RETURNING gives the row written
        return int(row["value"])

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
                "UPDATE studies SET seen_sweep = CASE WHEN seen_sweep > :sweep THEN seen_sweep "
                "ELSE :sweep END, "
                "next_attempt_at = CASE WHEN state = 'pending' "
                "AND next_attempt_at > :now THEN :now ELSE next_attempt_at END "
                "WHERE orthanc_id = :id",
                [{"sweep": sweep, "now": now, "id": oid} for oid in sorted(orthanc_ids)],
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

    # -- moving a ledger ------------------------------------------------------------------
    def refuse_if_worked(self, now: float) -> None:
        """StoreError while a process holds a lease on this ledger (it must be stopped first:
        what it wrote after the copy would be lost)."""
        rows = self._query(
            "SELECT (SELECT COUNT(*) FROM studies WHERE lease_owner != '' AND lease_until > :now)"
            " + (SELECT COUNT(*) FROM leases WHERE until > :now) AS n",
            {"now": now},
        )
        if int(rows[0]["n"]):
            raise StoreError(
                f"{self.location} is being worked by a running process (it holds leases): stop "
                "every process using it, then move it"
            )

    def refuse_unless_empty(self) -> None:
        marks = ",".join("?" for _ in _OWN_META)
        rows = self._query(
            "SELECT (SELECT COUNT(*) FROM studies) + (SELECT COUNT(*) FROM audit) "  # noqa: S608
            f"+ (SELECT COUNT(*) FROM meta WHERE key NOT IN ({marks})) AS n",
            _OWN_META,
        )
        if int(rows[0]["n"]):
            raise StoreError(
                f"{self.location} holds a ledger already: the move goes into an empty database "
                "only (nothing was copied)"
            )

    def rows_to_move(self, table: str, columns: Sequence[str]) -> list[Row]:
        order = " ORDER BY id" if table == "audit" else ""
        marks = ",".join("?" for _ in _OWN_META)
        where = f" WHERE key NOT IN ({marks})" if table == "meta" else ""
        return self._query(
            f"SELECT {', '.join(columns)} FROM {table}{where}{order}",  # noqa: S608
            _OWN_META if where else (),
        )

    def take_rows(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        with self._tx() as db:
            db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
                f"VALUES ({', '.join('?' for _ in columns)})",
                [tuple(row[c] for c in columns) for row in rows],
            )

    # -- previews --------------------------------------------------------------------------
    def charge_render_crash(self, instance_id: str, orthanc_id: str, now: float) -> int:
        """Orthanc stopped answering while rendering this instance: how often it has now."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO render_crashes (instance_id, orthanc_id, crashes, first_at, last_at) "
                "VALUES (?, ?, 1, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET "
                "crashes = render_crashes.crashes + 1, last_at = excluded.last_at, "
                "orthanc_id = excluded.orthanc_id",
                (instance_id, orthanc_id, now, now),
            )
            row = db.execute(
                "SELECT crashes FROM render_crashes WHERE instance_id = ?", (instance_id,)
            ).fetchone()
        return int(row["crashes"]) if row else 0

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
        return [_audit_row(r) for r in self._query(sql + " ORDER BY id", params)]

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
            # LOWER on both sides: SQLite's LIKE ignores case, PostgreSQL's does not.
            where += (
                " AND (" + " OR ".join(f"LOWER({f}) LIKE LOWER(?) ESCAPE '!'" for f in fields) + ")"
            )
            params += [pattern] * len(fields)
        total = self._query(f"SELECT COUNT(*) AS n FROM studies WHERE {where}", params)[0]["n"]  # noqa: S608
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
        total = self._query("SELECT COUNT(*) AS n FROM audit")[0]["n"]
        rows = self._query("SELECT * FROM audit ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
        return [_audit_row(r) for r in rows], int(total)

    def web_secret(self, new: str) -> str:
        """The review pages' cookie-signing secret: `new` if none is kept yet, else the kept
        one, so that every process on the ledger and every restart sign alike."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('web_secret', ?) "
                "ON CONFLICT (key) DO NOTHING",
                (new,),
            )
            kept = db.execute("SELECT value FROM meta WHERE key = 'web_secret'").fetchone()
        assert kept is not None  # inserted just above, in the same transaction
        return str(kept["value"])

    def sign_out(self, session_id: str, until: float, now: float) -> None:
        """Remember a review session signed out until its cookie would have expired anyway,
        for every process on the ledger; forget those already past."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_SIGNED_OUT + session_id, repr(until)),
            )
            rows = db.execute(
                "SELECT key, value FROM meta WHERE key LIKE ? ESCAPE '!'",
                (_SIGNED_OUT.replace("_", "!_") + "%",),
            ).fetchall()
            for row in rows:
                if float(row["value"]) < now:
                    db.execute("DELETE FROM meta WHERE key = ?", (row["key"],))

    def signed_out(self, session_id: str) -> bool:
        return self._meta(_SIGNED_OUT + session_id) is not None

    # -- end of the review pages' queries ----------------------------------------------------


_SIGNED_OUT = "signed_out:"

# What moving a ledger copies, table by table: everything but the leases of the processes that
# worked it (they are stopped; the new ledger's processes take their own). Audit rows are
# copied in their order and numbered anew.
_MOVED: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "studies": (
        "orthanc_id", "study_uid", "state", "reason", "retryable", "priority", "recheck",
        "dicom_patient_id", "patient_name", "birth_date", "patient_sex", "study_date",
        "description", "candidates", "candidate_patients", "patient_uuid",
        "manual_patient_uuid", "linked_by", "linked_at", "attachment_uuid", "instance_id",
        "caption", "orthanc_last_update", "attempts", "next_attempt_at", "last_attempt_at",
        "seen_sweep", "discovered_at", "updated_at", "synced_at", "preview_source",
    ),
    "study_identifiers": ("orthanc_id", "identifier"),
    "audit": (
        "at", "orthanc_id", "study_uid", "action", "patient_uuid", "attachment_uuid", "reason",
    ),
    "render_crashes": ("instance_id", "orthanc_id", "crashes", "first_at", "last_at"),
}  # fmt: skip
# Kept by each ledger for itself.
_OWN_META = ("schema_version",)


def move_ledger(source: Store, target: Store, now: float) -> dict[str, int]:
    """Copy every row of `source` into the empty ledger `target` (one transaction): how many
    rows of each table. Refused while a process works the source or the target holds data."""
    source.refuse_if_worked(now)
    target.refuse_unless_empty()
    copied = {}
    with target.batch():
        for table, columns in _MOVED.items():
            rows = source.rows_to_move(table, columns)
            target.take_rows(table, columns, rows)
            copied[table] = len(rows)
    return copied


def open_backend(location: LedgerLocation, *, read_only: bool = False) -> Backend:
    if isinstance(location, PostgresURL):
        # Imported here: a SQLite ledger does not load the PostgreSQL driver.
        from orthanc_openmrs.ledger.postgres import PostgresBackend

        return PostgresBackend(location, read_only=read_only)
    return SqliteBackend(Path(location), read_only=read_only)


def _audit_row(r: Row) -> AuditRow:
    return AuditRow(
        at=float(r["at"]),
        orthanc_id=r["orthanc_id"],
        study_uid=r["study_uid"],
        action=r["action"],
        patient_uuid=r["patient_uuid"],
        attachment_uuid=r["attachment_uuid"],
        reason=r["reason"],
    )


def _row(r: Row) -> StudyRow:
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
