"""Identifiers shorter than OpenMRS's REST search takes (minSearchCharacters, 2)."""

from __future__ import annotations

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from support import ledger, load, settings_for, sync_pass


def test_a_one_character_identifier_is_looked_up_through_fhir(orthanc, openmrs, database) -> None:
    """PatientID 'A': the REST search would answer nothing, FHIR finds the patient."""
    ada = openmrs.add_patient(["A"])
    load(orthanc, StudySpec("short", patient_id="A"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    assert len(openmrs.attachments(ada)) == 1


def test_without_fhir_a_one_character_identifier_is_reported_as_it_is(
    orthanc, openmrs, database
) -> None:
    """No FHIR2 module: the reason says the REST search cannot take the identifier, not that
    no patient has it."""
    openmrs.add_patient(["B"])
    openmrs.fhir_module = False
    ids = load(orthanc, StudySpec("short", patient_id="B"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.FAILED] == 1
    row = ledger(settings).get(ids["short"])
    assert row is not None
    assert row.state is State.FAILED
    assert "refuses queries shorter than 2 characters (minSearchCharacters)" in row.reason
    assert "no OpenMRS patient has" not in row.reason
