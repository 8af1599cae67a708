"""Issuer-aware matching against a real Orthanc and the double: two facilities sharing one
PACS hand out the same numbers, and SYNC_ISSUER_TYPES tells them apart."""

from __future__ import annotations

from orthanc_openmrs.models import Outcome, State
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.openmrs_double import Identifier
from support import ledger, load, pass_cost, settings_for, sync_pass

ISSUERS = "HOSP_A=OpenMRS ID,CLINIC_B=Legacy MRN"


def test_issuer_picks_the_identifier_type_of_a_shared_number(orthanc, openmrs, database) -> None:
    """MRN 123 is an OpenMRS ID of one patient and a Legacy MRN of another: a study issued by
    HOSP_A (mapped to OpenMRS ID) goes to the first, one whose OtherPatientIDsSequence says
    CLINIC_B to the second; an unmapped issuer stays ambiguous, and so does every study while
    the setting is off."""
    openmrs.add_identifier_type("Legacy MRN")
    hospital = openmrs.add_patient([Identifier("123", type_name="OpenMRS ID")])
    clinic = openmrs.add_patient([Identifier("123", type_name="Legacy MRN")])
    ids = load(
        orthanc,
        StudySpec("hosp", patient_id="123", issuer="HOSP_A"),
        StudySpec("else", patient_id="123", issuer="ELSEWHERE"),
        StudySpec("clin", patient_id="PACS-9", other_ids_sequence=(("123", "CLINIC_B"),)),
    )
    off = settings_for(orthanc, openmrs, database)
    before = sync_pass(off)
    assert (before.counts[Outcome.AMBIGUOUS], before.counts[Outcome.UNMATCHED]) == (2, 1)

    on = settings_for(orthanc, openmrs, database, sync_issuer_types=ISSUERS)
    after = sync_pass(on)
    assert (after.counts[Outcome.SYNCED], after.counts[Outcome.AMBIGUOUS]) == (2, 1)
    store = ledger(on)
    rows = {key: store.get(orthanc_id) for key, orthanc_id in ids.items()}
    assert {key: (r.state, r.patient_uuid) for key, r in rows.items() if r} == {
        "hosp": (State.SYNCED, hospital),
        "clin": (State.SYNCED, clinic),
        "else": (State.AMBIGUOUS, ""),
    }
    assert sorted(a.patient_uuid for a in openmrs.attachments()) == sorted([hospital, clinic])


def test_unmatched_reason_names_the_issuers_type(orthanc, openmrs, database) -> None:
    """A HOSP_A study whose number exists only as another type is unmatched, and says why."""
    openmrs.add_identifier_type("Legacy MRN")
    openmrs.add_patient([Identifier("777", type_name="Legacy MRN")])
    ids = load(orthanc, StudySpec("only", patient_id="777", issuer="HOSP_A"))
    settings = settings_for(orthanc, openmrs, database, sync_issuer_types=ISSUERS)
    assert sync_pass(settings).counts[Outcome.UNMATCHED] == 1
    row = ledger(settings).get(ids["only"])
    assert row is not None
    assert row.reason == "no OpenMRS patient has the identifier '777' of HOSP_A (OpenMRS ID)"


def test_issuers_cost_one_orthanc_request_a_study(orthanc, openmrs, database) -> None:
    """With SYNC_ISSUER_TYPES set, a plain study costs one Orthanc request more (the patient
    module of one instance), whatever its size; OpenMRS sees no more requests."""
    openmrs.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"c{i}", issuer="HOSP_A") for i in range(4)])
    settings = settings_for(orthanc, openmrs, database, sync_workers=1, sync_issuer_types=ISSUERS)
    summary, orthanc_cost, openmrs_cost = pass_cost(settings)
    assert summary.counts[Outcome.SYNCED] == 4
    assert 4 * 6 <= orthanc_cost <= 4 * 6 + 1  # + the one changes poll of the pass
    assert openmrs_cost == 1 + 1 + 4 * 2  # the patient-change poll, a lookup, list + upload
