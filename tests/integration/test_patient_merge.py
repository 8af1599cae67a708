"""A patient merge in OpenMRS (the study's patient voided, its attachment copied to the
survivor with a new uuid) leaves every study with one live attachment, on the survivor, and
the ledger pointing at it: found by the sweep, without uploading anything."""

from __future__ import annotations

import httpx

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import default_settings_for, ledger, load, service, sync_pass


def _live_attachments_of(openmrs, study_uid: str) -> list[tuple[str, str]]:
    """(patient, attachment) of every live attachment whose caption names the study."""
    return [
        (a.patient_uuid, a.uuid) for a in openmrs.attachments() if study_uid in (a.comment or "")
    ]


def _sweep_then_pass(settings):
    with service(settings) as built:
        built.openmrs.check_credentials()
        sweep = built.reconcile()
        return sweep, built.run_pass()


def test_a_merge_moves_the_study_to_the_survivor_in_the_ledger_too(
    orthanc, openmrs, database
) -> None:
    """After the merge, one live attachment on the survivor; the sweep makes the ledger
    follow it; nothing is uploaded or voided by the service."""
    duplicate = openmrs.add_patient(["DUP-MRN"], given="Jane", family="Doe")
    survivor = openmrs.add_patient(["MAIN-MRN"], given="Jane", family="Doe")
    ids = load(orthanc, StudySpec("m", patient_id="DUP-MRN"))
    settings = default_settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["m"])
    assert row is not None
    moved = openmrs.merge_patients(survivor, duplicate)
    assert list(moved) == [row.attachment_uuid]
    openmrs.reset_requests()
    sweep, summary = _sweep_then_pass(settings)
    assert summary.counts[Outcome.REPLACED] == 1
    after = ledger(settings).get(ids["m"])
    assert after is not None
    assert (after.state, after.patient_uuid, after.attachment_uuid) == (
        State.SYNCED,
        survivor,
        moved[row.attachment_uuid],
    )
    assert _live_attachments_of(openmrs, row.study_uid) == [(survivor, after.attachment_uuid)]
    assert openmrs.count_requests("POST") == 0
    assert openmrs.count_requests("DELETE") == 0
    assert sweep.seen == 1


def test_after_a_merge_a_deleted_study_loses_the_survivors_copy(orthanc, openmrs, database) -> None:
    """Because the ledger followed the merge, deleting the study from Orthanc voids the
    attachment the chart really shows."""
    duplicate = openmrs.add_patient(["DUP-MRN"])
    survivor = openmrs.add_patient(["MAIN-MRN"])
    ids = load(orthanc, StudySpec("m", patient_id="DUP-MRN"))
    settings = default_settings_for(orthanc, openmrs, database)
    sync_pass(settings)
    openmrs.merge_patients(survivor, duplicate)
    _sweep_then_pass(settings)
    httpx.delete(f"{orthanc.url}/studies/{ids['m']}", auth=(orthanc.username, orthanc.password))
    sweep, _ = _sweep_then_pass(settings)
    assert (sweep.deleted, sweep.voided) == (1, 1)
    assert openmrs.attachments() == []


def test_an_unmerged_patient_costs_the_sweep_one_request(orthanc, openmrs, database) -> None:
    """Checking the synced studies' patients takes one FHIR request per 100 patients and
    rechecks nothing while they are all live."""
    for i in range(3):
        openmrs.add_patient([f"P-{i}"])
    load(orthanc, *[StudySpec(f"s{i}", patient_id=f"P-{i}") for i in range(3)])
    settings = default_settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 3
    openmrs.reset_requests()
    _, summary = _sweep_then_pass(settings)
    assert summary.total == 0
    checks = [r for r in openmrs.requests if "_id" in r.query]
    assert len(checks) == 1
    assert len(checks[0].query["_id"][0].split(",")) == 3


def test_an_ambiguous_study_is_attached_once_its_duplicate_is_merged_away(
    orthanc, openmrs, database
) -> None:
    """Two patients with one MRN: ambiguous; one merged into the other: the next sweep tries
    the study again (default retry delays would wait a minute), and it is attached."""
    first = openmrs.add_patient(["SAME-MRN"])
    second = openmrs.add_patient(["SAME-MRN"])
    ids = load(orthanc, StudySpec("a", patient_id="SAME-MRN"))
    settings = default_settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.AMBIGUOUS] == 1
    openmrs.merge_patients(first, second)
    _, summary = _sweep_then_pass(settings)
    assert summary.counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["a"])
    assert row is not None
    assert (row.state, row.patient_uuid) == (State.SYNCED, first)
