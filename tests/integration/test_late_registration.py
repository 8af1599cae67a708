"""Patients registered in OpenMRS after their imaging get it promptly, with default settings,
at a cost per poll that does not depend on how many studies wait."""

from __future__ import annotations

import threading
import time
from datetime import date

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import default_settings_for, ledger, load, service, sync_pass


def next_second() -> None:
    time.sleep(1.05 - time.time() % 1)


def _polls(requests) -> int:
    return sum(1 for r in requests if "_lastUpdated" in r.query)


def test_patient_registered_after_the_first_pass_is_attached_on_the_next_sync(
    orthanc, openmrs, database
) -> None:
    """Default retry delays (a minute, doubling): the next `sync` attaches it all the same."""
    ids = load(orthanc, StudySpec("late", patient_id="LATE-7"))
    settings = default_settings_for(orthanc, openmrs, database)
    assert (settings.sync_retry_min, settings.sync_retry_max) == (60, 3600)
    assert sync_pass(settings).counts[Outcome.UNMATCHED] == 1
    patient = openmrs.add_patient(["LATE-7"])
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["late"])
    assert row is not None
    assert (row.state, row.patient_uuid) == (State.SYNCED, patient)


def test_a_study_registered_while_run_works_is_attached_within_one_poll(
    orthanc, openmrs, database
) -> None:
    """`run` with the default 5 s poll: the first patient poll after the registration wakes
    the study, and its attachment is uploaded before the poll after that."""
    load(orthanc, StudySpec("late", patient_id="LATE-8"))
    settings = default_settings_for(orthanc, openmrs, database)
    assert settings.sync_poll_interval == 5
    stop = threading.Event()

    def run() -> None:  # the ledger belongs to the thread that opens it
        with service(settings) as built:
            built.openmrs.check_credentials()
            built.run_forever(stop)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while ledger(settings).counts()[State.UNMATCHED] != 1:
            assert time.monotonic() < deadline, "the first pass never recorded the study"
            time.sleep(0.1)
        registered_at = len(openmrs.requests)
        patient = openmrs.add_patient(["LATE-8"])
        while not openmrs.attachments(patient):
            assert time.monotonic() < deadline + 30, "never attached"
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(30)
    after = openmrs.requests[registered_at:]
    upload = next(i for i, r in enumerate(after) if r.method == "POST")
    assert _polls(after[:upload]) == 1


def test_an_idle_pass_costs_the_same_whatever_waits(orthanc, openmrs, database) -> None:
    """With nothing changing in OpenMRS, a pass asks it the same two things (the credentials
    check and one patient poll) with 2 studies waiting as with 12: no search per study."""
    settings = default_settings_for(orthanc, openmrs, database)
    costs = []
    for first, count in ((0, 2), (2, 10)):
        load(
            orthanc,
            *[StudySpec(f"w{first + i}", patient_id=f"NOBODY-{first + i}") for i in range(count)],
        )
        assert sync_pass(settings).counts[Outcome.UNMATCHED] == count
        openmrs.reset_requests()
        assert sync_pass(settings).total == 0
        costs.append((openmrs.count_requests(), _polls(openmrs.requests)))
    assert ledger(settings).counts()[State.UNMATCHED] == 12
    assert costs == [(2, 1), (2, 1)]


def test_a_person_edit_in_openmrs_wakes_the_waiting_study(orthanc, openmrs, database) -> None:
    """A person edit moves the patient's lastUpdated: a study waiting for one of its
    identifiers (added earlier, which the poll cannot see) is tried again on the next pass."""
    ids = load(orthanc, StudySpec("w", patient_id="LATER-1", birth_date="19600101"))
    settings = default_settings_for(orthanc, openmrs, database)
    patient = openmrs.add_patient(["OTHER-1"])
    assert sync_pass(settings).counts[Outcome.UNMATCHED] == 1
    openmrs.add_identifier(patient, "LATER-1")  # invisible to the poll, as on a real server
    assert sync_pass(settings).total == 0
    # Server times have whole seconds: a change within the second of a poll that already saw
    # the patient looks the same as what it saw (the retry delay then catches it).
    next_second()
    openmrs.edit_person(patient, birthdate=date(1960, 1, 1))
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["w"])
    assert row is not None
    assert row.patient_uuid == patient


def test_a_mismatch_is_attached_on_the_next_sync_once_openmrs_is_corrected(
    orthanc, openmrs, database
) -> None:
    """Birth dates disagree: mismatch. The clerk corrects the birthdate in OpenMRS: the next
    `sync` (default retry delays) attaches the study."""
    ids = load(orthanc, StudySpec("m", patient_id="MM-1", birth_date="19600101"))
    settings = default_settings_for(orthanc, openmrs, database)
    patient = openmrs.add_patient(["MM-1"], birthdate=date(1961, 1, 1))
    assert sync_pass(settings).counts[Outcome.MISMATCH] == 1
    next_second()
    openmrs.edit_person(patient, birthdate=date(1960, 1, 1))
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["m"])
    assert row is not None
    assert (row.state, row.patient_uuid) == (State.SYNCED, patient)
