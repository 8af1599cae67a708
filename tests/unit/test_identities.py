from __future__ import annotations

from orthanc_openmrs.identities import Identity, Relation, decide, relate


def _id(orthanc_id: str, when: str, pid: str, uuid: str | None, made_from: str = "") -> Identity:
    return Identity(orthanc_id, when, pid, uuid, made_from)


OLD = _id("a", "20260101T100000", "P1", "ada")


def test_a_correction_made_by_orthanc_modify_is_superseded_by_the_newer() -> None:
    """The newer study made from this one by /modify wins, whoever it names."""
    newer = _id("b", "20260101T110000", "P2", "bob", made_from="a")
    verdict = relate(OLD, newer)
    assert verdict.relation is Relation.SUPERSEDED
    assert "Orthanc's /modify" in verdict.reason
    assert relate(newer, OLD).relation is Relation.PROCEED


def test_the_same_patient_id_means_one_study_and_the_newest_wins() -> None:
    """A trimmed PatientID equal on both: one study, the newer identity wins."""
    newer = _id("b", "20260101T110000", " P1 ", None)
    assert relate(OLD, newer).relation is Relation.SUPERSEDED


def test_two_patients_without_a_link_conflict_both_ways() -> None:
    """Two registered patients, no ModifiedFrom: a conflict for each identity."""
    newer = _id("b", "20260101T110000", "P2", "bob")
    assert relate(OLD, newer).relation is Relation.CONFLICT
    assert relate(newer, OLD).relation is Relation.CONFLICT


def test_an_identity_matching_nobody_never_takes_the_place() -> None:
    """A newer identity that matches nobody leaves the older one alone, and the reverse."""
    nobody = _id("b", "20260101T110000", "", None)
    assert relate(OLD, nobody).relation is Relation.PROCEED
    assert relate(nobody, OLD).relation is Relation.PROCEED


def test_a_conflict_outweighs_a_superseding_identity() -> None:
    """Of three identities, one of another patient: the conflict is what a person must see."""
    same = _id("b", "20260101T110000", "P1", "ada")
    other = _id("c", "20260101T090000", "P3", "cy")
    assert decide(OLD, [same, other]).relation is Relation.CONFLICT
    assert decide(OLD, [same]).other == same
