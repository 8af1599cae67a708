"""The demographic cross-check against a real Orthanc and the double, with default settings:
a study whose identifier matches one patient is still not attached when its birth date or sex
contradicts that patient's record."""

from __future__ import annotations

from datetime import date

import pytest

from orthanc_openmrs import report
from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import ledger, ledger_rows, load, service, settings_for, sync_pass


def _candidates(database, orthanc_id: str) -> str:
    rows = ledger_rows(
        database, "SELECT candidates FROM studies WHERE orthanc_id = ?", (orthanc_id,)
    )
    return str(rows[0][0])


def test_birth_date_mismatch_is_not_attached_and_listed_with_both_dates(
    orthanc, openmrs, database, capsys
) -> None:
    """PatientID matches one patient born on another day: nothing is attached, the study is
    a mismatch (identifiers kept for later re-tries), and status and review show both dates."""
    patient = openmrs.add_patient(["BD-1"], gender="M", birthdate=date(1980, 2, 1))
    ids = load(orthanc, StudySpec("bd", patient_id="BD-1", birth_date="19800102", sex="M"))
    settings = settings_for(orthanc, openmrs, database)
    summary = sync_pass(settings)
    assert summary.counts[Outcome.MISMATCH] == 1
    assert openmrs.attachments() == []
    reason = f"birth date differs: DICOM 1980-01-02, OpenMRS 1980-02-01 (patient {patient})"
    assert [r.reason for r in summary.problems] == [reason]
    store = ledger(settings)
    row = store.get(ids["bd"])
    assert row is not None
    assert (row.state, row.reason, row.patient_uuid) == (State.MISMATCH, reason, "")
    assert (row.birth_date, row.patient_sex) == ("19800102", "M")
    assert row.next_attempt_at is not None  # retried on the ordinary backoff
    assert _candidates(database, ids["bd"]) == "BD-1"

    report.print_status(store.counts(), store.needing_a_person(), as_json=False)
    status = capsys.readouterr().out
    assert "  mismatch          1" in status
    assert f"  mismatch   {row.study_uid} (retried automatically)" in status
    assert reason in status
    report.print_review(store.needing_a_person(), as_json=False)
    review = capsys.readouterr().out
    assert f"MISMATCH  {row.study_uid}" in review
    assert f"reason:   {reason}" in review
    assert "born 19800102, sex M" in review
    assert f"candidate patient: {patient} BD-1 - Test Patient" in review


def test_sex_mismatch_is_not_attached(orthanc, openmrs, database) -> None:
    """PatientSex F against an OpenMRS gender M: a mismatch naming both, nothing attached."""
    patient = openmrs.add_patient(["SX-1"], gender="M", birthdate=date(1960, 1, 1))
    ids = load(orthanc, StudySpec("sx", patient_id="SX-1", sex="F"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.MISMATCH] == 1
    assert openmrs.attachments() == []
    row = ledger(settings).get(ids["sx"])
    assert row is not None
    assert row.state is State.MISMATCH
    assert row.reason == f"sex differs: DICOM F, OpenMRS M (patient {patient})"


def test_link_attaches_a_mismatch_as_a_persons_decision(orthanc, openmrs, database) -> None:
    """`link` attaches a mismatched study anyway: the check is not made again, and the link
    is recorded as manual, with who decided."""
    patient = openmrs.add_patient(["LK-1"], gender="F", birthdate=date(1960, 1, 1))
    ids = load(orthanc, StudySpec("lk", patient_id="LK-1", sex="M"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.MISMATCH] == 1
    with service(settings) as built:
        (result,) = built.link(ids["lk"], patient, "dr.okafor")
    assert result.outcome is Outcome.SYNCED
    (attachment,) = openmrs.attachments()
    assert attachment.patient_uuid == patient
    store = ledger(settings)
    row = store.get(ids["lk"])
    assert row is not None
    assert (row.state, row.manual_patient_uuid, row.linked_by) == (
        State.SYNCED,
        patient,
        "dr.okafor",
    )
    assert [a.action for a in store.audit(ids["lk"])] == ["link", "create"]
    assert sync_pass(settings).total == 0  # stays attached, not judged again


def test_agreeing_study_is_attached(orthanc, openmrs, database) -> None:
    """Birth date and sex as OpenMRS has them: attached as before."""
    patient = openmrs.add_patient(["OK-1"], gender="M", birthdate=date(1960, 1, 1))
    load(orthanc, StudySpec("ok", patient_id="OK-1", birth_date="19600101", sex="M"))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.SYNCED] == 1
    assert openmrs.attachments()[0].patient_uuid == patient


def test_mismatch_is_attached_once_the_record_is_corrected(orthanc, openmrs, database) -> None:
    """A mismatch is tried again: once OpenMRS's birth date is corrected, it is attached."""
    patient = openmrs.add_patient(["FIX-1"], birthdate=date(1961, 1, 1))
    ids = load(orthanc, StudySpec("fix", patient_id="FIX-1"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.MISMATCH] == 1
    openmrs.add_patient(["FIX-1"], uuid=patient, birthdate=date(1960, 1, 1))  # corrected
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["fix"])
    assert row is not None
    assert (row.state, row.patient_uuid) == (State.SYNCED, patient)


def test_synced_study_is_not_judged_again(orthanc, openmrs, database) -> None:
    """A study attached before its patient's birth date changed in OpenMRS stays attached when
    it is looked at again: a recheck is not a new judgement."""
    patient = openmrs.add_patient(["RJ-1"], gender="M", birthdate=date(1960, 1, 1))
    ids = load(orthanc, StudySpec("rj", patient_id="RJ-1"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    openmrs.add_patient(["RJ-1"], uuid=patient, gender="F", birthdate=date(1999, 9, 9))
    with service(settings) as built:
        (result,) = built.sync_now(ids["rj"])
    assert (result.outcome, result.reason) == (Outcome.ALREADY_THERE, "unchanged")
    row = ledger(settings).get(ids["rj"])
    assert row is not None
    assert (row.state, row.patient_uuid) == (State.SYNCED, patient)
    (attachment,) = openmrs.attachments()
    assert not attachment.voided


def test_synced_study_does_not_move_to_a_contradicting_patient(orthanc, openmrs, database) -> None:
    """When the identifier now names another patient whose record contradicts the study, the
    study is a mismatch and its attachment stays where it was: a move is a new judgement."""
    first = openmrs.add_patient(["MV-1"], birthdate=date(1960, 1, 1))
    ids = load(orthanc, StudySpec("mv", patient_id="MV-1"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    openmrs.void_identifier(first, "MV-1")
    second = openmrs.add_patient(["MV-1"], birthdate=date(1990, 5, 5))
    with service(settings) as built:
        (result,) = built.sync_now(ids["mv"])
    assert result.outcome is Outcome.MISMATCH
    assert f"(patient {second})" in result.reason
    (attachment,) = openmrs.attachments()
    assert (attachment.patient_uuid, attachment.voided) == (first, False)


@pytest.mark.parametrize("lookup", ["rest", "fhir"])
def test_estimated_birth_date_is_compared_by_year(orthanc, openmrs, database, lookup) -> None:
    """An estimated birth date (REST's birthdateEstimated, FHIR's year-only birthDate) agrees
    with any day of its year and disagrees with another year, through either lookup."""
    same = openmrs.add_patient(["ES-1"], birthdate=date(1960, 7, 1), birthdate_estimated=True)
    other = openmrs.add_patient(["ES-2"], birthdate=date(1962, 7, 1), birthdate_estimated=True)
    load(orthanc, StudySpec("es1", patient_id="ES-1"), StudySpec("es2", patient_id="ES-2"))
    settings = settings_for(orthanc, openmrs, database, sync_patient_lookup=lookup)
    summary = sync_pass(settings)
    assert (summary.counts[Outcome.SYNCED], summary.counts[Outcome.MISMATCH]) == (1, 1)
    assert openmrs.attachments()[0].patient_uuid == same
    (problem,) = summary.problems
    assert problem.reason == (
        f"birth year differs: DICOM 1960-01-01, OpenMRS 1962 (estimated) (patient {other})"
    )


def test_family_name_check_when_chosen(orthanc, openmrs, database) -> None:
    """With SYNC_DEMOGRAPHIC_CHECKS including family_name, a name differing only in accents
    and case is attached, another family name is a mismatch."""
    openmrs.add_patient(["FN-1"], given="Zoé", family="Dubois-Lefèvre")
    other = openmrs.add_patient(["FN-2"], given="Ana", family="Silva")
    load(
        orthanc,
        StudySpec("fn1", patient_id="FN-1", patient_name="DUBOIS-LEFEVRE^ZOE"),
        StudySpec("fn2", patient_id="FN-2", patient_name="Souza^Ana"),
    )
    settings = settings_for(
        orthanc, openmrs, database, sync_demographic_checks="birthdate,sex,family_name"
    )
    summary = sync_pass(settings)
    assert (summary.counts[Outcome.SYNCED], summary.counts[Outcome.MISMATCH]) == (1, 1)
    (problem,) = summary.problems
    assert problem.reason == (
        f"family name differs: DICOM 'Souza', OpenMRS 'Silva' (patient {other})"
    )


def test_no_checks_when_the_setting_is_empty(orthanc, openmrs, database) -> None:
    """SYNC_DEMOGRAPHIC_CHECKS empty: the identifier alone decides, as before the check."""
    openmrs.add_patient(["NC-1"], gender="F", birthdate=date(1999, 9, 9))
    load(orthanc, StudySpec("nc", patient_id="NC-1"))
    settings = settings_for(orthanc, openmrs, database, sync_demographic_checks="")
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1


def test_both_lookups_read_the_same_person(openmrs) -> None:
    """The REST and FHIR patient lookups read gender, birth date and family name alike."""
    openmrs.add_patient(
        ["RD-1"], given="Ana", family="Silva", gender="F", birthdate=date(1980, 1, 2)
    )
    client = OpenMRSClient(openmrs.url, username="admin", password="Admin123")
    try:
        (rest,) = client.find_patients_rest("RD-1")
        (fhir,) = client.find_patients_fhir("RD-1")
    finally:
        client.close()
    for patient in (rest, fhir):
        assert (patient.gender, patient.birthdate, patient.birthdate_estimated) == (
            "F",
            date(1980, 1, 2),
            False,
        )
        assert patient.family_names == ("Silva",)
