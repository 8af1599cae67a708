"""One StudyInstanceUID under two Orthanc identities: a correction, a collision, or a newer
identity that matches nobody, each decided as a careful person would."""

from __future__ import annotations

import time

import httpx

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import ledger, load, settings_for, sync_pass


def _delete(orthanc, study_id: str) -> None:
    answer = httpx.delete(
        f"{orthanc.url}/studies/{study_id}", auth=(orthanc.username, orthanc.password)
    )
    answer.raise_for_status()


def _later(orthanc, spec: StudySpec) -> dict[str, str]:
    """Upload a second identity a second later: Orthanc's LastUpdate has 1 s resolution."""
    time.sleep(1.1)
    return load(orthanc, spec)


def test_two_patients_sharing_a_uid_are_a_conflict_until_one_leaves(
    orthanc, openmrs, database
) -> None:
    """A UID reused for two registered patients, neither made from the other: nothing is
    attached, both go to review naming the other; once one leaves Orthanc, the other attaches."""
    ada = openmrs.add_patient(["COL-ADA"])
    bob = openmrs.add_patient(["COL-BOB"])
    first = load(orthanc, StudySpec("shared", patient_id="COL-ADA"))["shared"]
    second = _later(orthanc, StudySpec("shared", patient_id="COL-BOB"))["shared"]
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.CONFLICT] == 2
    assert openmrs.attachments() == []
    store = ledger(settings)
    rows = {r.orthanc_id: r for r in store.needing_a_person()}
    assert {r.state for r in rows.values()} == {State.CONFLICT}
    assert f"study {second} of another patient" in rows[first].reason
    assert f"OpenMRS {bob}" in rows[first].reason
    shown = f"{bob} (Orthanc study {second}, PatientID 'COL-BOB')"
    assert rows[first].candidate_patients == (shown,)
    _delete(orthanc, second)
    sync_pass(settings)
    assert len(openmrs.attachments(ada)) == 1
    assert openmrs.attachments(bob) == []


def test_a_collision_never_voids_the_attachment_already_made(orthanc, openmrs, database) -> None:
    """A patient's study is attached; another patient's study with its UID arrives later: the
    newcomer is a conflict and the first attachment stays where it is."""
    ada = openmrs.add_patient(["LATE-ADA"])
    openmrs.add_patient(["LATE-BOB"])
    load(orthanc, StudySpec("late", patient_id="LATE-ADA"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    _later(orthanc, StudySpec("late", patient_id="LATE-BOB"))
    assert sync_pass(settings).counts[Outcome.CONFLICT] == 1
    assert len(openmrs.attachments(ada)) == 1
    assert [a.action for a in ledger(settings).audit()] == ["create"]


def test_a_newer_identity_matching_nobody_never_takes_the_place(orthanc, openmrs, database) -> None:
    """A newer study with the same UID and an empty PatientID: the registered patient's study
    is attached all the same, and the newer one waits for a patient."""
    ada = openmrs.add_patient(["EMPTY-ADA"])
    first = load(orthanc, StudySpec("empty", patient_id="EMPTY-ADA"))["empty"]
    second = _later(orthanc, StudySpec("empty", patient_id=""))["empty"]
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    assert summary.counts[Outcome.UNMATCHED] == 1
    assert len(openmrs.attachments(ada)) == 1
    store = ledger(settings)
    assert store.get(first).state is State.SYNCED
    assert store.get(second).state is State.UNMATCHED


def test_two_identifiers_of_one_patient_keep_one_attachment(orthanc, openmrs, database) -> None:
    """Two PatientIDs that both name the same OpenMRS patient: one study, the newer wins, and
    the older is listed as superseded with its reason."""
    ada = openmrs.add_patient(["SAME-1", "SAME-2"])
    first = load(orthanc, StudySpec("same", patient_id="SAME-1"))["same"]
    second = _later(orthanc, StudySpec("same", patient_id="SAME-2"))["same"]
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    assert summary.counts[Outcome.SUPERSEDED] == 1
    assert len(openmrs.attachments(ada)) == 1
    (gone,) = ledger(settings).superseded()
    assert gone.orthanc_id == first
    assert f"newer study {second}, of the same patient" in gone.reason
