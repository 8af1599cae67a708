from __future__ import annotations

from orthanc_openmrs.matching import MatchKind, candidate_ids, decide
from orthanc_openmrs.models import OpenMRSPatient, PatientIdentifier

OPENMRS_ID = "05a29f94-c0ed-11e2-94be-8c13b969e334"


def _patient(uuid: str, *idents: tuple[str, str, bool], voided: bool = False) -> OpenMRSPatient:
    return OpenMRSPatient(
        uuid,
        tuple(
            PatientIdentifier(i, OPENMRS_ID if t == "OpenMRS ID" else "t2", t, v)
            for i, t, v in idents
        ),
        voided=voided,
    )


def test_candidates_trim_padding_and_split_other_ids() -> None:
    """Leading/trailing spaces go; OtherPatientIDs values split on backslash; no repeats."""
    tags = {"PatientID": "  P001 ", "OtherPatientIDs": "A1\\ B2 \\\\P001"}
    assert candidate_ids(tags, ("PatientID", "OtherPatientIDs")) == ("P001", "A1", "B2")


def test_candidates_follow_configured_tags_only() -> None:
    """Only the configured tags are read, in their order."""
    tags = {"PatientID": "P1", "OtherPatientIDs": "O1"}
    assert candidate_ids(tags, ("OtherPatientIDs",)) == ("O1",)
    assert candidate_ids({}, ("PatientID",)) == ()


def test_substring_hit_is_not_a_match() -> None:
    """The fuzzy search's 12345 for 1234 is filtered out: unmatched."""
    hits = {"1234": [_patient("p", ("12345", "OpenMRS ID", False))]}
    decision = decide(["1234"], hits, frozenset())
    assert decision.kind is MatchKind.UNMATCHED
    assert "1234" in decision.reason


def test_exact_identifier_matches() -> None:
    """One patient with the identifier exactly: matched to that patient."""
    hits = {
        "1234": [
            _patient("other", ("12345", "OpenMRS ID", False)),
            _patient("p", ("1234", "OpenMRS ID", False)),
        ]
    }
    decision = decide(["1234"], hits, frozenset())
    assert (decision.kind, decision.patient_uuid) == (MatchKind.MATCHED, "p")


def test_voided_identifier_or_patient_does_not_match() -> None:
    """A voided identifier, or a voided patient, never matches."""
    hits = {
        "X1": [
            _patient("a", ("X1", "OpenMRS ID", True)),
            _patient("b", ("X1", "OpenMRS ID", False), voided=True),
        ]
    }
    assert decide(["X1"], hits, frozenset()).kind is MatchKind.UNMATCHED


def test_case_matters() -> None:
    """Identifiers compare exactly, case included."""
    hits = {"ab1": [_patient("a", ("AB1", "OpenMRS ID", False))]}
    assert decide(["ab1"], hits, frozenset()).kind is MatchKind.UNMATCHED


def test_two_patients_are_ambiguous() -> None:
    """Two patients with the same identifier: ambiguous, naming both."""
    hits = {
        "X": [_patient("a", ("X", "OpenMRS ID", False)), _patient("b", ("X", "ID Card", False))]
    }
    decision = decide(["X"], hits, frozenset())
    assert decision.kind is MatchKind.AMBIGUOUS
    assert decision.patient_uuids == ("a", "b")


def test_candidates_pointing_at_different_patients_are_ambiguous() -> None:
    """PatientID names one patient and OtherPatientIDs another: ambiguous."""
    hits = {
        "P": [_patient("a", ("P", "OpenMRS ID", False))],
        "O": [_patient("b", ("O", "OpenMRS ID", False))],
    }
    assert decide(["P", "O"], hits, frozenset()).kind is MatchKind.AMBIGUOUS


def test_candidates_agreeing_on_one_patient_match() -> None:
    """Two identifiers of the same patient: one match."""
    patient = _patient("a", ("P", "OpenMRS ID", False), ("O", "ID Card", False))
    decision = decide(["P", "O"], {"P": [patient], "O": [patient]}, frozenset())
    assert (decision.kind, decision.patient_uuid) == (MatchKind.MATCHED, "a")


def test_identifier_type_filter() -> None:
    """With allowed types set, an identifier of another type does not count (by name or uuid)."""
    hits = {
        "X": [_patient("a", ("X", "ID Card", False)), _patient("b", ("X", "OpenMRS ID", False))]
    }
    assert decide(["X"], hits, frozenset({"OpenMRS ID"})).patient_uuid == "b"
    assert decide(["X"], hits, frozenset({OPENMRS_ID})).patient_uuid == "b"
    assert decide(["X"], hits, frozenset({"Passport"})).kind is MatchKind.UNMATCHED


def test_no_candidates_is_unmatched() -> None:
    """A study without any identifier value is unmatched, with that reason."""
    decision = decide([], {}, frozenset())
    assert decision.kind is MatchKind.UNMATCHED
    assert "no patient identifier" in decision.reason


def test_worth_keeping_holds_only_what_decides() -> None:
    """A cached search keeps only the exact, non-voided identifiers of non-voided patients, and
    deciding on what it keeps gives the same answer as deciding on the whole search."""
    from orthanc_openmrs.matching import worth_keeping

    hits = [
        _patient("a", ("1234", "OpenMRS ID", False), ("X-9", "ID Card", False)),
        _patient("b", ("12345", "OpenMRS ID", False)),  # a near miss of the fuzzy search
        _patient("c", ("1234", "ID Card", True)),  # the identifier is voided
        _patient("d", ("1234", "ID Card", False), voided=True),
        _patient("e", ("1234", "ID Card", False)),
    ]
    kept = worth_keeping("1234", hits)
    assert [(p.uuid, [(i.identifier, i.type_name) for i in p.identifiers]) for p in kept] == [
        ("a", [("1234", "OpenMRS ID")]),
        ("e", [("1234", "ID Card")]),
    ]
    for types in (frozenset(), frozenset({"OpenMRS ID"}), frozenset({"t2"})):
        assert decide(["1234"], {"1234": kept}, types) == decide(["1234"], {"1234": hits}, types)


def test_worth_keeping_keeps_what_the_person_is() -> None:
    """A cached patient keeps its gender, birth date (and whether estimated) and family names,
    which the demographic check compares after the match."""
    from datetime import date

    from orthanc_openmrs.matching import worth_keeping

    patient = OpenMRSPatient(
        "a",
        (PatientIdentifier("1234", OPENMRS_ID, "OpenMRS ID"),),
        display="1234 - Ana Silva",
        gender="F",
        birthdate=date(1980, 1, 2),
        birthdate_estimated=True,
        family_names=("Silva",),
    )
    (kept,) = worth_keeping("1234", [patient])
    assert kept == patient
