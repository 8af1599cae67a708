"""Flow 1 against a real Orthanc and the double: the study goes to exactly one patient, or none."""

from __future__ import annotations

from orthanc_openmrs.caption import java_length
from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec, study_uid
from orthanc_openmrs_devtools.openmrs_double import Identifier
from support import PUBLIC_URL, ledger, load, settings_for, sync_pass


def test_attaches_to_the_patient_with_that_identifier(orthanc, openmrs, database) -> None:
    """The attachment lands on the patient whose identifier equals PatientID, captioned with
    Ozone's Stone Web Viewer link; no visit or encounter is sent."""
    spec = StudySpec("basic", patient_id="100008E", description="CT CHEST")
    other = openmrs.add_patient(["100008"])
    patient = openmrs.add_patient(["100008E"], given="John", family="Smith")
    load(orthanc, spec)
    summary = sync_pass(settings_for(orthanc, openmrs, database))
    assert summary.counts[Outcome.SYNCED] == 1
    (attachment,) = openmrs.attachments()
    assert attachment.patient_uuid == patient != other
    link = f"{PUBLIC_URL}/stone-webviewer/index.html?study={study_uid(spec)}"
    assert attachment.comment == f"CT 2024-01-10 CT CHEST - {link}"
    upload = [r for r in openmrs.requests if r.method == "POST"]
    assert len(upload) == 1
    assert "visit" not in upload[0].query
    assert "encounter" not in upload[0].query


def test_substring_identifier_does_not_match(orthanc, openmrs, database) -> None:
    """PatientID 1234 does not go to the patient 12345 that the fuzzy search returns."""
    openmrs.add_patient(["12345"])
    ids = load(orthanc, StudySpec("sub", patient_id="1234"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.UNMATCHED] == 1
    row = ledger(settings).get(ids["sub"])
    assert row is not None
    assert row.state is State.UNMATCHED
    assert "'1234'" in row.reason
    assert openmrs.attachments() == []


def test_name_hit_does_not_match(orthanc, openmrs, database) -> None:
    """A patient whose name contains the PatientID is not a match."""
    openmrs.add_patient(["Z-1"], given="Smith", family="Smithson")
    load(orthanc, StudySpec("name", patient_id="Smith"))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.UNMATCHED] == 1


def test_padding_is_trimmed(orthanc, openmrs, database) -> None:
    """Leading and trailing spaces around the PatientID are DICOM padding, not the value."""
    patient = openmrs.add_patient(["PAD42"])
    load(orthanc, StudySpec("pad", patient_id="  PAD42 "))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.SYNCED] == 1
    assert openmrs.attachments()[0].patient_uuid == patient


def test_url_special_characters_in_patient_id(orthanc, openmrs, database) -> None:
    """A PatientID with &, #, ?, = , % and / is searched and matched as it is."""
    weird = "A&B#C?d=1%2F/x"
    patient = openmrs.add_patient([weird])
    openmrs.add_patient(["A"])
    load(orthanc, StudySpec("weird", patient_id=weird))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.SYNCED] == 1
    assert openmrs.attachments()[0].patient_uuid == patient


def test_voided_identifier_does_not_match(orthanc, openmrs, database) -> None:
    """An identifier voided in OpenMRS no longer links studies to that patient."""
    patient = openmrs.add_patient(["OLD-1", "NEW-1"])
    openmrs.void_identifier(patient, "OLD-1")
    load(orthanc, StudySpec("voided", patient_id="OLD-1"))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.UNMATCHED] == 1
    assert openmrs.attachments() == []


def test_two_patients_are_ambiguous_and_never_attached(orthanc, openmrs, database) -> None:
    """Two patients carrying the identifier: ambiguous, both named, nothing attached."""
    first = openmrs.add_patient([Identifier("DUP-9")])
    second = openmrs.add_patient([Identifier("DUP-9", type_name="ID Card")])
    ids = load(orthanc, StudySpec("dup", patient_id="DUP-9"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.AMBIGUOUS] == 1
    row = ledger(settings).get(ids["dup"])
    assert row is not None
    assert row.state is State.AMBIGUOUS
    assert first in row.reason
    assert second in row.reason
    assert openmrs.attachments() == []


def test_identifier_type_setting_narrows_the_match(orthanc, openmrs, database) -> None:
    """With SYNC_IDENTIFIER_TYPES=OpenMRS ID, an ID Card with the same value is not counted."""
    wanted = openmrs.add_patient([Identifier("T-5", type_name="OpenMRS ID")])
    openmrs.add_patient([Identifier("T-5", type_name="ID Card")])
    load(orthanc, StudySpec("typed", patient_id="T-5"))
    settings = settings_for(orthanc, openmrs, database, sync_identifier_types="OpenMRS ID")
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    assert openmrs.attachments()[0].patient_uuid == wanted


def test_unknown_patient_is_attached_once_registered(orthanc, openmrs, database) -> None:
    """Unmatched on the first pass; registered in OpenMRS; attached on the next pass."""
    ids = load(orthanc, StudySpec("late", patient_id="LATE-1"))
    settings = settings_for(orthanc, openmrs, database)
    assert sync_pass(settings).counts[Outcome.UNMATCHED] == 1
    patient = openmrs.add_patient(["LATE-1"])
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    row = ledger(settings).get(ids["late"])
    assert row is not None
    assert (row.state, row.patient_uuid) == (State.SYNCED, patient)


def test_other_patient_ids_match(orthanc, openmrs, database) -> None:
    """Ozone's OtherPatientIDs (any of its values) links the study when PatientID does not."""
    patient = openmrs.add_patient(["OZ-77"])
    load(orthanc, StudySpec("other", patient_id="PACS-1", other_patient_ids=("X-0", "OZ-77")))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.SYNCED] == 1
    assert openmrs.attachments()[0].patient_uuid == patient


def test_patient_id_and_other_ids_naming_two_patients_is_ambiguous(
    orthanc, openmrs, database
) -> None:
    """PatientID names one patient, OtherPatientIDs another: ambiguous."""
    openmrs.add_patient(["PA"])
    openmrs.add_patient(["PB"])
    load(orthanc, StudySpec("split", patient_id="PA", other_patient_ids=("PB",)))
    assert sync_pass(settings_for(orthanc, openmrs, database)).counts[Outcome.AMBIGUOUS] == 1


def test_fhir_lookup_matches_exactly(orthanc, openmrs, database) -> None:
    """SYNC_PATIENT_LOOKUP=fhir uses the exact FHIR search and still checks each hit."""
    patient = openmrs.add_patient(["F-100"])
    openmrs.add_patient(["F-1000"])
    load(orthanc, StudySpec("fhir", patient_id="F-100"))
    settings = settings_for(orthanc, openmrs, database, sync_patient_lookup="fhir")
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    assert openmrs.attachments()[0].patient_uuid == patient
    lookups = [r for r in openmrs.requests if "identifier" in r.query]
    assert [r.path for r in lookups] == ["/ws/fhir2/R4/Patient"]
    assert openmrs.count_requests("GET", "/ws/rest/v1/patient") == 0


def test_captions_fit_with_non_ascii_and_long_descriptions(orthanc, openmrs, database) -> None:
    """Non-ASCII names and a 64-character description with astral characters still give a
    caption of at most 255 UTF-16 units that ends with the full link."""
    openmrs.add_patient(["NA-1"])
    description = "Échographie abdominale 🩻 contrôle " * 2
    spec = StudySpec(
        "nonascii", patient_id="NA-1", patient_name="Đặng^Thị Hồng", description=description[:64]
    )
    load(orthanc, spec)
    settings = settings_for(
        orthanc,
        openmrs,
        database,
        orthanc_public_url="https://pacs." + "very-long-hospital-name." * 4 + "example.org",
    )
    assert sync_pass(settings).counts[Outcome.SYNCED] == 1
    (attachment,) = openmrs.attachments()
    assert attachment.comment is not None
    assert java_length(attachment.comment) <= 255
    assert attachment.comment.endswith(f"index.html?study={study_uid(spec)}")
