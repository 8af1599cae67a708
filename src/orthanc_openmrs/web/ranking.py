"""Pure: OpenMRS's search hits, ordered by how well each agrees with the study's DICOM header.

OpenMRS's own search is fuzzy (names and identifiers, partial matches); this puts first the
patient whose identifier equals one of the study's and whose birth date, sex and family name
agree, and says for each hit what agrees and what differs, with both values. It decides
nothing: the person chooses, and linking asks them to confirm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orthanc_openmrs.demographics import Check, cross_check
from orthanc_openmrs.matching import candidate_ids
from orthanc_openmrs.models import OpenMRSPatient

_AGREES = {
    Check.BIRTHDATE: "birth date agrees",
    Check.SEX: "sex agrees",
    Check.FAMILY_NAME: "family name agrees",
}
# An equal identifier says more than any one demographic value; a difference weighs more
# than an agreement, so a patient contradicting the header never outranks a silent one.
_IDENTIFIER, _AGREEMENT, _DIFFERENCE = 3, 1, -2


@dataclass(frozen=True)
class Ranked:
    patient: OpenMRSPatient
    score: int
    agreements: tuple[str, ...]
    differences: tuple[str, ...]


def study_identifiers(patient_tags: Mapping[str, str]) -> tuple[str, ...]:
    """The identifier values a study carries: PatientID, then each of OtherPatientIDs."""
    return candidate_ids(patient_tags, ("PatientID", "OtherPatientIDs"))


def rank(patient_tags: Mapping[str, str], hits: Sequence[OpenMRSPatient]) -> list[Ranked]:
    """The hits, best first (ties keep OpenMRS's order); voided patients left out."""
    wanted = set(study_identifiers(patient_tags))
    ranked = []
    for patient in hits:
        if patient.voided:
            continue
        agreements: list[str] = []
        differences: list[str] = []
        score = 0
        equal = [
            i.identifier for i in patient.identifiers if not i.voided and i.identifier in wanted
        ]
        if equal:
            agreements.append(f"identifier {equal[0]} equals the study's")
            score += _IDENTIFIER
        elif wanted:
            # Said, not scored: a typo at the modality is what the person is here to resolve,
            # but linking across it must be a choice made knowingly.
            ours = ", ".join(study_identifiers(patient_tags))
            theirs = ", ".join(i.identifier for i in patient.identifiers if not i.voided)
            differences.append(
                f"no identifier equals the study's: DICOM {ours}, OpenMRS {theirs or 'none'}"
            )
        for check in Check:
            decision = cross_check(patient_tags, patient, frozenset({check}))
            if check not in decision.compared:
                continue  # one side does not say: neither for nor against
            if decision.differences:
                differences.extend(decision.differences)
                score += _DIFFERENCE
            else:
                agreements.append(_AGREES[check])
                score += _AGREEMENT
        ranked.append(Ranked(patient, score, tuple(agreements), tuple(differences)))
    order = sorted(range(len(ranked)), key=lambda i: (-ranked[i].score, i))
    return [ranked[i] for i in order]
