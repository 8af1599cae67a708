from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from orthanc_openmrs.matching import (
    Candidate,
    MatchKind,
    candidate_ids,
    candidates,
    decide,
    parse_issuer_types,
)
from orthanc_openmrs.models import IssuedIds, OpenMRSPatient, PatientIdentifier

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


def _plain(values: Sequence[str], types: frozenset[str] = frozenset()) -> list[Candidate]:
    return [Candidate(v, types) for v in values]


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
    decision = decide(_plain(["1234"]), hits)
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
    decision = decide(_plain(["1234"]), hits)
    assert (decision.kind, decision.patient_uuid) == (MatchKind.MATCHED, "p")


def test_voided_identifier_or_patient_does_not_match() -> None:
    """A voided identifier, or a voided patient, never matches."""
    hits = {
        "X1": [
            _patient("a", ("X1", "OpenMRS ID", True)),
            _patient("b", ("X1", "OpenMRS ID", False), voided=True),
        ]
    }
    assert decide(_plain(["X1"]), hits).kind is MatchKind.UNMATCHED


def test_case_matters() -> None:
    """Identifiers compare exactly, case included."""
    hits = {"ab1": [_patient("a", ("AB1", "OpenMRS ID", False))]}
    assert decide(_plain(["ab1"]), hits).kind is MatchKind.UNMATCHED


def test_two_patients_are_ambiguous() -> None:
    """Two patients with the same identifier: ambiguous, naming both."""
    hits = {
        "X": [_patient("a", ("X", "OpenMRS ID", False)), _patient("b", ("X", "ID Card", False))]
    }
    decision = decide(_plain(["X"]), hits)
    assert decision.kind is MatchKind.AMBIGUOUS
    assert decision.patient_uuids == ("a", "b")


def test_candidates_pointing_at_different_patients_are_ambiguous() -> None:
    """PatientID names one patient and OtherPatientIDs another: ambiguous."""
    hits = {
        "P": [_patient("a", ("P", "OpenMRS ID", False))],
        "O": [_patient("b", ("O", "OpenMRS ID", False))],
    }
    assert decide(_plain(["P", "O"]), hits).kind is MatchKind.AMBIGUOUS


def test_candidates_agreeing_on_one_patient_match() -> None:
    """Two identifiers of the same patient: one match."""
    patient = _patient("a", ("P", "OpenMRS ID", False), ("O", "ID Card", False))
    decision = decide(_plain(["P", "O"]), {"P": [patient], "O": [patient]})
    assert (decision.kind, decision.patient_uuid) == (MatchKind.MATCHED, "a")


def test_identifier_type_filter() -> None:
    """With allowed types set, an identifier of another type does not count (by name or uuid)."""
    hits = {
        "X": [_patient("a", ("X", "ID Card", False)), _patient("b", ("X", "OpenMRS ID", False))]
    }
    assert decide(_plain(["X"], frozenset({"OpenMRS ID"})), hits).patient_uuid == "b"
    assert decide(_plain(["X"], frozenset({OPENMRS_ID})), hits).patient_uuid == "b"
    assert decide(_plain(["X"], frozenset({"Passport"})), hits).kind is MatchKind.UNMATCHED


def test_no_candidates_is_unmatched() -> None:
    """A study without any identifier value is unmatched, with that reason."""
    decision = decide(_plain([]), {})
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
        assert decide(_plain(["1234"], types), {"1234": kept}) == decide(
            _plain(["1234"], types), {"1234": hits}
        )


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


# -- issuers -----------------------------------------------------------------------------------

TAGS = ("PatientID", "OtherPatientIDs")
ISSUERS = {"HOSP_A": "OpenMRS ID", "CLINIC_B": "Legacy MRN"}


def _legacy(uuid: str, value: str) -> OpenMRSPatient:
    return OpenMRSPatient(uuid, (PatientIdentifier(value, "t-legacy", "Legacy MRN"),))


def test_mapped_issuer_limits_patient_id_to_its_type() -> None:
    """PatientID issued by a mapped issuer may equal only that issuer's identifier type: the
    patient holding the same number under another type no longer makes it ambiguous."""
    issued = IssuedIds(patient_id_issuer="HOSP_A ")
    found = candidates({"PatientID": "123"}, TAGS, frozenset(), ISSUERS, issued)
    assert found == (Candidate("123", frozenset({"OpenMRS ID"}), "HOSP_A"),)
    hits = {"123": [_patient("a", ("123", "OpenMRS ID", False)), _legacy("b", "123")]}
    assert (decide(found, hits).kind, decide(found, hits).patient_uuid) == (MatchKind.MATCHED, "a")
    unissued = candidates({"PatientID": "123"}, TAGS, frozenset(), ISSUERS, None)
    assert decide(unissued, hits).kind is MatchKind.AMBIGUOUS


def test_unmapped_or_missing_issuer_keeps_the_configured_types() -> None:
    """An issuer the setting does not map, or none, leaves PatientID to the configured types."""
    allowed = frozenset({"OpenMRS ID", "Legacy MRN"})
    for issuer in ("ELSEWHERE", ""):
        found = candidates({"PatientID": "123"}, TAGS, allowed, ISSUERS, IssuedIds(issuer))
        assert found == (Candidate("123", allowed),)


def test_other_ids_sequence_gives_issuers_and_candidates() -> None:
    """A value of OtherPatientIDs takes the issuer the sequence gives it; sequence items with
    a mapped issuer are candidates of their own; an item with an unmapped issuer is not."""
    issued = IssuedIds(
        others=(("L-9", "CLINIC_B"), ("N-1", "HOSP_A"), ("U-5", "ELSEWHERE"), ("", "HOSP_A"))
    )
    tags = {"PatientID": "P", "OtherPatientIDs": "L-9\\X-2"}
    assert candidates(tags, TAGS, frozenset(), ISSUERS, issued) == (
        Candidate("P"),
        Candidate("L-9", frozenset({"Legacy MRN"}), "CLINIC_B"),
        Candidate("X-2"),
        Candidate("N-1", frozenset({"OpenMRS ID"}), "HOSP_A"),
    )
    # Without OtherPatientIDs among the tags read, the sequence is not read either.
    assert candidates(tags, ("PatientID",), frozenset(), ISSUERS, issued) == (Candidate("P"),)


def test_a_value_with_a_known_issuer_is_not_also_compared_with_any_type() -> None:
    """PatientID 123 from HOSP_A repeated in OtherPatientIDs stays HOSP_A's identifier."""
    tags = {"PatientID": "123", "OtherPatientIDs": "123"}
    found = candidates(tags, TAGS, frozenset(), ISSUERS, IssuedIds("HOSP_A"))
    assert found == (Candidate("123", frozenset({"OpenMRS ID"}), "HOSP_A"),)


def test_one_value_from_two_issuers_is_ambiguous_across_them() -> None:
    """The same number from both facilities, naming a patient under each type: ambiguous."""
    issued = IssuedIds("HOSP_A", others=(("123", "CLINIC_B"),))
    found = candidates({"PatientID": "123"}, TAGS, frozenset(), ISSUERS, issued)
    hits = {"123": [_patient("a", ("123", "OpenMRS ID", False)), _legacy("b", "123")]}
    decision = decide(found, hits)
    assert decision.kind is MatchKind.AMBIGUOUS
    assert "'123' of HOSP_A (OpenMRS ID)" in decision.reason
    assert "'123' of CLINIC_B (Legacy MRN)" in decision.reason


def test_unmatched_reason_names_the_issuer() -> None:
    """The reason of an unmatched study says which issuer's identifier type was looked for."""
    found = candidates({"PatientID": "123"}, TAGS, frozenset(), ISSUERS, IssuedIds("CLINIC_B"))
    decision = decide(found, {"123": [_patient("a", ("123", "OpenMRS ID", False))]})
    assert decision.kind is MatchKind.UNMATCHED
    assert decision.reason == "no OpenMRS patient has the identifier '123' of CLINIC_B (Legacy MRN)"
    assert decision.candidates == ("123",)


def test_issuer_setting_parses_pairs() -> None:
    """`ISSUER=Type` pairs, spaces around them trimmed; a type may be a uuid or hold spaces."""
    assert parse_issuer_types(" HOSP_A = OpenMRS ID ,CLINIC_B=8d79403a-c2cc,") == {
        "HOSP_A": "OpenMRS ID",
        "CLINIC_B": "8d79403a-c2cc",
    }
    assert parse_issuer_types("") == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("HOSP_A", "'HOSP_A' is not ISSUER=identifier type"),
        ("=OpenMRS ID", "'=OpenMRS ID' is not ISSUER=identifier type"),
        ("HOSP_A=", "'HOSP_A=' is not ISSUER=identifier type"),
        ("A=OpenMRS ID,A=Legacy MRN", "issuer 'A' is mapped to two identifier types"),
    ],
)
def test_issuer_setting_refuses_what_is_not_a_pair(value: str, message: str) -> None:
    """An entry without an issuer, a type or the `=`, or an issuer mapped twice, is refused."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_issuer_types(value)
