"""Ranking OpenMRS's search hits by their agreement with the study's DICOM header."""

from __future__ import annotations

from datetime import date

from orthanc_openmrs.models import OpenMRSPatient, PatientIdentifier
from orthanc_openmrs.web.ranking import rank, study_identifiers

TAGS = {
    "PatientID": "UN-404 ",
    "OtherPatientIDs": "LEG-9\\UN-404",
    "PatientName": "Lost^Lena",
    "PatientSex": "F",
    "PatientBirthDate": "19850203",
}


def _patient(uuid: str, ident: str = "X-1", **kw) -> OpenMRSPatient:
    defaults = {"gender": "F", "birthdate": date(1985, 2, 3), "family_names": ("Lost",)}
    return OpenMRSPatient(
        uuid, (PatientIdentifier(ident, "t", "OpenMRS ID"),), **{**defaults, **kw}
    )


def test_identifiers_of_a_study() -> None:
    """PatientID, then each OtherPatientIDs value, padding trimmed, once each."""
    assert study_identifiers(TAGS) == ("UN-404", "LEG-9")


def test_equal_identifier_and_agreeing_demographics_come_first() -> None:
    """An equal identifier outranks agreeing demographics, and a difference sinks a hit
    below one that says nothing; each hit says what agrees and what differs."""
    silent = _patient("silent", gender="U", birthdate=None, family_names=())
    differs = _patient("differs", birthdate=date(1985, 3, 2))
    agrees = _patient("agrees")
    same_id = _patient("same-id", ident="LEG-9")
    ranked = rank(TAGS, [silent, differs, agrees, same_id])
    assert [r.patient.uuid for r in ranked] == ["same-id", "agrees", "silent", "differs"]
    assert ranked[0].agreements == (
        "identifier LEG-9 equals the study's",
        "birth date agrees",
        "sex agrees",
        "family name agrees",
    )
    assert ranked[2].agreements == ()
    assert ranked[3].differences == (
        "no identifier equals the study's: DICOM UN-404, LEG-9, OpenMRS X-1",
        "birth date differs: DICOM 1985-02-03, OpenMRS 1985-03-02",
    )
    assert ranked[0].differences == ()


def test_voided_patients_are_left_out_and_ties_keep_openmrs_order() -> None:
    voided = _patient("voided", voided=True)
    ranked = rank(TAGS, [_patient("a"), voided, _patient("b")])
    assert [r.patient.uuid for r in ranked] == ["a", "b"]


def test_a_voided_identifier_is_no_agreement() -> None:
    patient = OpenMRSPatient("p", (PatientIdentifier("UN-404", "t", "OpenMRS ID", voided=True),))
    (ranked,) = rank(TAGS, [patient])
    assert ranked.agreements == ()
    assert ranked.differences == (
        "no identifier equals the study's: DICOM UN-404, LEG-9, OpenMRS none",
    )
