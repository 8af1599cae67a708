"""The ledger's queries for the review pages: a filtered page with its total, recent
failures, the audit newest first, and the signing secret kept once for every process; on
SQLite and on PostgreSQL (the `database` fixture)."""

from __future__ import annotations

from pathlib import Path

from orthanc_openmrs.models import NEEDS_A_PERSON, Outcome, State, StudyResult
from orthanc_openmrs.store import LIVE, AuditRow, Store
from orthanc_openmrs.web.app import LedgerSignOuts
from orthanc_openmrs.web.people import Person, Privilege
from orthanc_openmrs.web.sessions import Sessions


def _ledger(database: Path | str) -> Store:
    store = Store(database)
    store.discover([f"s{i:02}" for i in range(30)], 1.0, priority=LIVE, due_at=1.0)
    for i in range(30):
        outcome, state = (Outcome.UNMATCHED, State.UNMATCHED)
        if i % 3 == 1:
            outcome, state = Outcome.AMBIGUOUS, State.AMBIGUOUS
        if i == 29:
            outcome, state = Outcome.SYNCED, State.SYNCED
        result = StudyResult(
            f"s{i:02}",
            outcome,
            f"reason {i}",
            dicom_patient_id=f"PID-{i}",
            patient_name=f"Name^{i}",
            description="CT 100%_done" if i == 4 else "XR",
        )
        store.record(result, state, 10.0 + i, None)
    return store


def test_a_page_of_the_queue_and_its_total(database: Path | str) -> None:
    """Only studies needing a person, oldest change first, paged; the total counts all."""
    store = _ledger(database)
    rows, total = store.review_page(NEEDS_A_PERSON, "", 10, 0)
    assert total == 29
    assert [r.orthanc_id for r in rows] == [f"s{i:02}" for i in range(10)]
    rows, _ = store.review_page(NEEDS_A_PERSON, "", 10, 20)
    assert [r.orthanc_id for r in rows] == [f"s{i:02}" for i in range(20, 29)]


def test_filter_by_state_and_text(database: Path | str) -> None:
    """A state filter and a text found in the PatientID, name, description or reason."""
    store = _ledger(database)
    rows, total = store.review_page((State.AMBIGUOUS,), "", 100, 0)
    assert total == 10
    assert {r.state for r in rows} == {State.AMBIGUOUS}
    rows, total = store.review_page(NEEDS_A_PERSON, "PID-2", 100, 0)
    assert sorted(r.orthanc_id for r in rows) == ["s02", *[f"s{i}" for i in range(20, 29)]]
    assert total == 10
    assert store.review_page(NEEDS_A_PERSON, "name^7", 100, 0)[1] == 1  # any case
    assert store.review_page(NEEDS_A_PERSON, "reason 13", 100, 0)[1] == 1


def test_text_is_matched_literally(database: Path | str) -> None:
    """% and _ in the search are characters, not LIKE wildcards."""
    store = _ledger(database)
    rows, _ = store.review_page(NEEDS_A_PERSON, "100%_", 100, 0)
    assert [r.orthanc_id for r in rows] == ["s04"]
    assert store.review_page(NEEDS_A_PERSON, "%", 100, 0)[1] == 1
    assert store.review_page(NEEDS_A_PERSON, "1%0", 100, 0)[1] == 0  # as a wildcard: many
    assert store.review_page(NEEDS_A_PERSON, "PID_1", 100, 0)[1] == 0


def test_recent_failures_newest_first(database: Path | str) -> None:
    store = Store(database)
    store.discover(["a", "b", "c"], 1.0, priority=LIVE, due_at=1.0)
    for i, oid in enumerate(("a", "b", "c")):
        store.record(StudyResult(oid, Outcome.FAILED, f"boom {i}"), State.FAILED, 5.0 + i, None)
    assert [r.orthanc_id for r in store.recent_failures(2)] == ["c", "b"]


def test_audit_page_newest_first(database: Path | str) -> None:
    store = Store(database)
    for i in range(5):
        store.add_audit(AuditRow(float(i), f"s{i}", "", "link", "", "", f"linked by p{i}"))
    rows, total = store.review_audit(2, 1)
    assert total == 5
    assert [r.reason for r in rows] == ["linked by p3", "linked by p2"]


def test_the_signing_secret_is_made_once(database: Path | str) -> None:
    """The first process's secret is kept; a second process (or a restart) gets the same."""
    first = Store(database)
    second = Store(database)
    assert first.web_secret("one") == "one"
    assert second.web_secret("two") == "one"
    first.close()
    assert Store(database).web_secret("three") == "one"


def test_a_sign_out_holds_in_every_process_sharing_the_ledger(database: Path | str) -> None:
    """Two processes' review pages on one ledger: a person signs out through one, and the
    cookie (copied, say) is refused by the other too; old sign-outs are forgotten."""
    Store(database).close()  # the ledger exists, as `run` has made it
    clock = [1000.0]
    first, second = (
        Sessions(
            "secret", 3600, secure=False, shared=LedgerSignOuts(database), clock=lambda: clock[0]
        )
        for _ in range(2)
    )
    session, cookie = first.new(Person("clerk", frozenset({Privilege.VIEW})))
    other, other_cookie = first.new(Person("admin", frozenset({Privilege.VIEW})))
    assert second.read(cookie) == session
    first.revoke(session)
    assert first.read(cookie) is None
    assert second.read(cookie) is None
    assert second.read(other_cookie) == other
    clock[0] += 7200  # past the first sign-out's session: it is forgotten at the next one
    late, _ = first.new(Person("clerk", frozenset({Privilege.VIEW})))
    first.revoke(late)
    store = Store(database, read_only=True)
    try:
        assert not store.signed_out(session.id)
        assert store.signed_out(late.id)
    finally:
        store.close()
