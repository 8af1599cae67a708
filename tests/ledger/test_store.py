from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.ledger.location import LedgerLocation
from orthanc_openmrs.models import Outcome, PatientChange, State, StudyResult
from orthanc_openmrs.store import BACKLOG, LIVE, Store
from support import ledger_rows

# The `database` fixture: each test runs on SQLite and on PostgreSQL.
Ledger = LedgerLocation | str


def test_live_studies_go_before_the_backlog(database: Ledger) -> None:
    """A study from the changes feed is claimed before 1,000 older backlog studies."""
    store = Store(database)
    store.discover([f"b{i}" for i in range(1000)], 10.0, priority=BACKLOG, due_at=10.0)
    store.note_stable(["live"], 20.0)
    claimed = store.claim_due(30.0, 5, exclude=set(), not_tried_since=0.0)
    assert claimed[0].orthanc_id == "live"
    assert len(claimed) == 5


def test_claim_skips_in_flight_and_already_tried(database: Ledger) -> None:
    """In-flight studies and those tried since the pass began are not handed out again."""
    store = Store(database)
    store.discover(["a", "b", "c"], 1.0, priority=LIVE, due_at=1.0)
    store.record(StudyResult("a", Outcome.FAILED), State.FAILED, 5.0, 5.0)
    claimed = store.claim_due(6.0, 10, exclude={"b"}, not_tried_since=4.0)
    assert [row.orthanc_id for row in claimed] == ["c"]


def test_cursor_never_goes_back(database: Ledger) -> None:
    """advance_cursor ignores a lower sequence number; reset_cursor does not."""
    store = Store(database)
    store.advance_cursor(50)
    store.advance_cursor(40)
    assert store.cursor() == 50
    store.reset_cursor(3)
    assert store.cursor() == 3


def test_synced_study_seen_stable_again_is_rechecked_not_reset(database: Ledger) -> None:
    """StableStudy again on a synced study makes it due for a recheck; state stays synced."""
    store = Store(database)
    store.discover(["s"], 1.0, priority=LIVE, due_at=1.0)
    store.record(
        StudyResult("s", Outcome.SYNCED, attachment_uuid="att", patient_uuid="p"),
        State.SYNCED,
        2.0,
        None,
    )
    assert store.claim_due(3.0, 10, exclude=set(), not_tried_since=3.0) == []
    store.note_stable(["s"], 4.0)
    (row,) = store.claim_due(5.0, 10, exclude=set(), not_tried_since=4.5)
    assert row.state is State.SYNCED
    assert row.prior.synced


def test_gone_study_that_returns_is_pending_again(database: Ledger) -> None:
    """A deleted study sent to Orthanc again (same Orthanc ID) is pending once more."""
    store = Store(database)
    store.discover(["g"], 1.0, priority=LIVE, due_at=1.0)
    store.set_state("g", State.GONE, "deleted", 2.0)
    store.note_stable(["g"], 3.0)
    row = store.get("g")
    assert row is not None
    assert row.state is State.PENDING


def test_ignored_study_is_left_alone(database: Ledger) -> None:
    """An ignored study is not made due by a StableStudy."""
    store = Store(database)
    store.discover(["i"], 1.0, priority=LIVE, due_at=1.0)
    store.set_state("i", State.IGNORED, "by a person", 2.0)
    store.note_stable(["i"], 3.0)
    assert store.claim_due(4.0, 10, exclude=set(), not_tried_since=0.0) == []


def test_opening_an_existing_ledger_does_not_write(database: Ledger) -> None:
    """A second connection opens the ledger while the first holds a write transaction (as
    `status` does beside a running `run`)."""
    path = database
    first = Store(path)
    first.discover(["a"], 1.0, priority=LIVE, due_at=1.0)
    with first._tx():  # a writer mid-transaction
        second = Store(path)
        assert second.cursor() is None
        assert [row.orthanc_id for row in second.all_studies()] == ["a"]
        second.close()
    first.close()


def test_patient_cache_is_bounded_and_keeps_recent_entries() -> None:
    """The per-pass patient cache searches once per identifier and forgets the least recent."""
    from orthanc_openmrs.sync import PatientCache

    searched: list[str] = []
    cache = PatientCache(lambda ident: searched.append(ident) or [], size=2)
    cache.lookup("a")
    cache.lookup("b")
    cache.lookup("a")  # a is now the most recent
    cache.lookup("c")  # evicts b
    cache.lookup("a")
    cache.lookup("b")
    assert searched == ["a", "b", "c", "b"]


def test_uid_locks_are_a_fixed_set() -> None:
    """The same UID always gets the same lock, and no more locks exist however many UIDs."""
    from orthanc_openmrs.sync import UidLocks

    locks = UidLocks(stripes=8)
    assert locks("1.2.3") is locks("1.2.3")
    assert len({id(locks(f"1.2.{i}")) for i in range(1000)}) <= 8


def _open_and_read(path: Path, start: threading.Barrier, errors: list[BaseException]) -> None:
    start.wait()
    try:
        store = Store(path)
        try:
            store.cursor()
        finally:
            store.close()
    except BaseException as exc:
        errors.append(exc)


def test_ledger_created_by_several_openers_at_once(tmp_path: Path) -> None:
    """SQLite: several openers of a new ledger at the same moment (`run` and `status` started
    together) all get it; none is told the database is locked."""
    errors: list[BaseException] = []
    for round_ in range(60):
        start = threading.Barrier(6)
        path = tmp_path / f"ledger-{round_}.sqlite3"
        threads = [
            threading.Thread(target=_open_and_read, args=(path, start, errors)) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_same_uid_only_when_the_ledger_knows_every_uid(database: Ledger) -> None:
    """The ledger vouches for a UID's other identities only when no study it still follows
    has an unread UID; studies gone from Orthanc do not count."""
    store = Store(database)
    store.discover(
        ["a", "b", "c"], 1.0, priority=BACKLOG, due_at=1.0, uids={"a": "1.2", "b": "1.2"}
    )
    rows = {row.orthanc_id: row for row in store.all_studies()}
    assert store.same_uid([rows["a"], rows["b"]]) == {"a": None, "b": None}  # c's UID unread
    assert store.without_uid(["a", "b", "c", "d"]) == ["c", "d"]
    store.record(StudyResult("c", Outcome.GONE, retryable=False), State.GONE, 2.0, None)
    rows = {row.orthanc_id: row for row in store.all_studies()}
    assert store.same_uid(list(rows.values())) == {"a": ("b",), "b": ("a",), "c": None}


def test_discovered_uid_fills_only_an_unread_one(database: Ledger) -> None:
    """A UID read later fills a study discovered without one, and never overwrites one."""
    store = Store(database)
    store.discover(["a", "b"], 1.0, priority=LIVE, due_at=1.0, uids={"b": "1.5"})
    store.note_stable(["a", "b"], 2.0, {"a": "1.4", "b": "9.9"})
    assert store.without_uid(["a", "b"]) == []
    assert store.same_uid(store.find("1.5")) == {"b": ()}
    assert [row.study_uid for row in store.find("1.4")] == ["1.4"]
    assert [row.orthanc_id for row in store.find("1.5")] == ["b"]


def test_batch_commits_together_and_rolls_back_together(database: Ledger) -> None:
    """Results recorded in one batch are all kept, or, when the batch fails, none is."""
    store = Store(database)
    store.discover(["a", "b"], 1.0, priority=BACKLOG, due_at=1.0)
    with store.batch():
        store.record(StudyResult("a", Outcome.UNMATCHED), State.UNMATCHED, 2.0, 9.0)
        store.record(StudyResult("b", Outcome.UNMATCHED), State.UNMATCHED, 2.0, 9.0)
    try:
        with store.batch():
            store.record(StudyResult("a", Outcome.FAILED), State.FAILED, 3.0, 9.0)
            raise RuntimeError("the pass ends here")
    except RuntimeError:
        pass
    states = {row.orthanc_id: row.state for row in store.all_studies()}
    assert states == {"a": State.UNMATCHED, "b": State.UNMATCHED}


def _waiting(store: Store, orthanc_id: str, outcome: Outcome, *ids: str) -> None:
    store.discover([orthanc_id], 1.0, priority=BACKLOG, due_at=1.0)
    state = State.UNMATCHED if outcome is Outcome.UNMATCHED else State.AMBIGUOUS
    store.record(StudyResult(orthanc_id, outcome, candidates=ids), state, 2.0, 5000.0)


def test_a_changed_patient_wakes_the_studies_waiting_for_its_identifiers(database: Ledger) -> None:
    """Unmatched and ambiguous studies naming one of the patient's identifiers are due now."""
    store = Store(database)
    _waiting(store, "u", Outcome.UNMATCHED, "A1", "OTHER")
    _waiting(store, "amb", Outcome.AMBIGUOUS, "B2")
    _waiting(store, "untouched", Outcome.UNMATCHED, "C3")
    woken = store.wake_for_patients(
        [PatientChange("p1", ("OTHER",), "t"), PatientChange("p2", ("B2", "Z"), "t")], 10.0
    )
    assert woken == 2
    due = store.claim_due(10.0, 10, exclude=set(), not_tried_since=10.0)
    assert sorted(row.orthanc_id for row in due) == ["amb", "u"]


def test_wake_matches_identifiers_exactly(database: Ledger) -> None:
    """A patient with 'a1' or 'A12' does not wake a study waiting for 'A1'."""
    store = Store(database)
    _waiting(store, "u", Outcome.UNMATCHED, "A1")
    assert store.wake_for_patients([PatientChange("p", ("a1", "A12"), "t")], 10.0) == 0


def test_wake_rechecks_a_synced_study_only_when_another_patient_holds_its_id(
    database: Ledger,
) -> None:
    """A synced study on p2 whose identifier now is p1's is rechecked; one on p1 is not."""
    store = Store(database)
    for oid, patient in (("on-p2", "p2"), ("on-p1", "p1")):
        store.discover([oid], 1.0, priority=BACKLOG, due_at=1.0)
        store.record(
            StudyResult(
                oid, Outcome.SYNCED, patient_uuid=patient, attachment_uuid="a", candidates=("X",)
            ),
            State.SYNCED,
            2.0,
            None,
        )
    assert store.wake_for_patients([PatientChange("p1", ("X",), "t")], 10.0) == 1
    (row,) = store.claim_due(10.0, 10, exclude=set(), not_tried_since=10.0)
    assert (row.orthanc_id, row.state) == ("on-p2", State.SYNCED)


def test_an_attempt_that_read_no_identifiers_keeps_the_known_ones(database: Ledger) -> None:
    """A failure before the identifiers were read leaves the study findable by them."""
    store = Store(database)
    _waiting(store, "u", Outcome.UNMATCHED, "A1")
    store.record(StudyResult("u", Outcome.FAILED, "Orthanc 500"), State.FAILED, 3.0, 5000.0)
    kept = ledger_rows(database, "SELECT identifier FROM study_identifiers WHERE orthanc_id = 'u'")
    assert [r[0] for r in kept] == ["A1"]


def test_patients_to_check_holds_synced_and_ambiguous_candidates_in_turn(database: Ledger) -> None:
    """Synced studies' patients and ambiguous studies' candidates, in uuid order, paged."""
    store = Store(database)
    store.discover(["s", "a"], 1.0, priority=BACKLOG, due_at=1.0)
    store.record(
        StudyResult("s", Outcome.SYNCED, patient_uuid="p2", attachment_uuid="x"),
        State.SYNCED,
        2.0,
        None,
    )
    store.record(
        StudyResult("a", Outcome.AMBIGUOUS, candidate_patients=("p3 X - A B", "p1 X - C D")),
        State.AMBIGUOUS,
        2.0,
        9e9,
    )
    assert store.patients_to_check("", 10) == ["p1", "p2", "p3"]
    assert store.patients_to_check("p1", 1) == ["p2"]
    assert store.recheck_studies_of(["p1"], 5.0) == 1
    assert store.recheck_studies_of(["p2"], 5.0) == 1
    due = store.claim_due(5.0, 10, exclude=set(), not_tried_since=5.0)
    assert sorted(row.orthanc_id for row in due) == ["a", "s"]


def test_new_ledger_and_its_wal_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    """SQLite: whatever the umask, a new ledger, its WAL and its shared-memory file are 0600."""
    path = tmp_path / "ledger.sqlite3"
    old = os.umask(0o022)
    try:
        store = Store(path)
        store.advance_cursor(5)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes == {
        "ledger.sqlite3": 0o600,
        "ledger.sqlite3-wal": 0o600,
        "ledger.sqlite3-shm": 0o600,
    }


def test_read_only_view_reads_what_the_writer_wrote(database: Ledger) -> None:
    """A read-only store sees the writer's committed rows and cannot write."""
    path = database
    store = Store(path)
    store.advance_cursor(7)
    reader = Store(path, read_only=True)
    try:
        assert reader.cursor() == 7
        with pytest.raises(StoreError, match=r"readonly|read-only"):
            reader.advance_cursor(8)
    finally:
        reader.close()
        store.close()


def test_render_crashes_are_counted_per_instance(database: Ledger) -> None:
    """Each crash while rendering an instance is counted; past the limit it is not rendered."""
    store = Store(database)
    assert store.charge_render_crash("i1", "s1", 1.0) == 1
    assert store.not_to_render() == frozenset()
    assert store.charge_render_crash("i1", "s2", 2.0) == 2
    assert store.charge_render_crash("i2", "s2", 3.0) == 1
    assert store.not_to_render() == frozenset({"i1"})
    assert [(c.instance_id, c.orthanc_id, c.crashes) for c in store.render_crashes()] == [
        ("i1", "s2", 2),
        ("i2", "s2", 1),
    ]


def test_every_reading_and_person_operation_answers_alike(database: Ledger) -> None:
    """The operations behind status, review, audit and a person's commands give the same
    answers on both ledgers."""
    from orthanc_openmrs.store import AuditRow

    store = Store(database)
    store.discover(
        ["a", "b", "c"], 1.0, priority=BACKLOG, due_at=1.0, uids={"a": "1.2", "b": "1.2"}
    )
    for oid in ("a", "b"):
        store.record(
            StudyResult(
                oid,
                Outcome.SYNCED,
                study_uid="1.2",
                patient_uuid="p",
                attachment_uuid=oid,
                preview_source="card",
                last_update=f"2024{oid}",
            ),
            State.SYNCED,
            2.0,
            None,
            [AuditRow(2.0, oid, "1.2", "create", "p", oid, "")],
        )
    assert store.uids_synced_twice() == ["1.2"]
    assert [r.orthanc_id for r in store.synced_with_uid("1.2", besides="a")] == ["b"]
    assert store.preview_sources() == {"card": 2}
    store.set_state("a", State.SUPERSEDED, "b is newer", 3.0, voided=True)
    assert [(r.orthanc_id, r.attachment_uuid) for r in store.superseded()] == [("a", "")]
    assert sorted(r.orthanc_id for r in store.find("1.2")) == ["a", "b"]
    assert [a.orthanc_id for a in store.audit("1.2")] == ["a", "b"]
    store.record(StudyResult("c", Outcome.UNMATCHED, "no patient"), State.UNMATCHED, 3.0, 9e9)
    assert [r.orthanc_id for r in store.needing_a_person()] == ["c"]
    store.link_manually("c", "p9", "someone", 4.0)
    row = store.get("c")
    assert row is not None
    assert (row.manual_patient_uuid, row.linked_by) == ("p9", "someone")
    store.set_state("c", State.IGNORED, "by hand", 5.0)
    store.make_due("c", 6.0, reset=True)
    row = store.get("c")
    assert row is not None
    assert (row.state, row.attempts, row.next_attempt_at) == (
        State.PENDING,
        0,
        6.0,
    )
    store.record_waiting("c", 50.0, 7.0, study_uid="1.3")
    store.touch("c", 8.0)
    assert store.count_due(49.0) == 0
    assert store.count_due(50.0) == 1
    sweep = store.begin_sweep()
    assert store.mark_seen(["b", "c", "d"], sweep, 9.0) == 1
    assert [r.orthanc_id for r in store.unseen(sweep)] == []
    store.finish_sweep(10.0)
    assert store.last_reconcile() == 10.0
    counts = store.counts()
    assert (counts[State.SYNCED], counts[State.SUPERSEDED], counts[State.PENDING]) == (1, 1, 2)
    store.close()
