"""Outages: the service waits, backs off, and catches up; it never busy-loops or exits."""

from __future__ import annotations

import threading
import time

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import ledger, load, service, settings_for


def _has_cursor(settings) -> bool:
    store = ledger(settings)
    try:
        return store.cursor() is not None
    finally:
        store.close()


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


class _Running:
    """`run` in a thread of the test (which owns the ledger), stopped as SIGTERM would."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with service(self.settings) as built:
                built.run_forever(self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> _Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=20)


def test_openmrs_503_outage_is_waited_out(orthanc, openmrs, database) -> None:
    """OpenMRS answering 503 for seconds: no study is charged or given up, requests stay few,
    and every study is attached once it is back."""
    openmrs.add_patient(["P001"])
    settings = settings_for(orthanc, openmrs, database, sync_poll_interval=0.3)
    with _Running(settings) as running:
        assert _wait_for(lambda: _has_cursor(settings), 10)
        openmrs.set_outage(503)
        load(orthanc, *[StudySpec(f"o{i}") for i in range(3)])
        openmrs.reset_requests()
        time.sleep(4)
        during = openmrs.count_requests()
        assert running.thread.is_alive()
        openmrs.set_outage(None)
        assert _wait_for(lambda: len(openmrs.attachments()) == 3, 30)
        assert running.error is None
    # Backoff from 0.5-1 s, doubling: at most 5 passes in 4 s, each failing on its first
    # request for each of the 3 studies; polling every 0.3 s without backoff would be 40+.
    assert during <= 20
    rows = ledger(settings).all_studies()
    assert all(row.state is State.SYNCED for row in rows)
    assert max(row.attempts for row in rows) == 1


def test_orthanc_down_then_back(orthanc, openmrs, database) -> None:
    """Orthanc refusing connections for a while: the service stays up and catches up."""
    openmrs.add_patient(["P001"])
    settings = settings_for(orthanc, openmrs, database, sync_poll_interval=0.3)
    with _Running(settings) as running:
        assert _wait_for(lambda: _has_cursor(settings), 10)
        orthanc.kill()
        time.sleep(2)
        assert running.thread.is_alive()
        orthanc.start()
        load(orthanc, StudySpec("back"))
        assert _wait_for(lambda: len(openmrs.attachments()) == 1, 30)
        assert running.error is None


def test_permanent_refusal_is_recorded_and_not_hammered(orthanc, openmrs, database) -> None:
    """A 400 with a message from OpenMRS is recorded with that message and not retried."""
    openmrs.add_patient(["P001"])
    ids = load(orthanc, StudySpec("refused"))
    openmrs.fail_next_uploads(1, status=400)
    settings = settings_for(orthanc, openmrs, database)
    with service(settings) as built:
        first = built.run_pass()
        second = built.run_pass()
    assert first.counts[Outcome.FAILED] == 1
    assert second.total == 0
    row = ledger(settings).get(ids["refused"])
    assert row is not None
    assert "HTTP 400" in row.reason
    assert row.next_attempt_at is None
    assert openmrs.count_requests("POST") == 1
