"""Pure: DICOM patient identity -> exactly one OpenMRS patient, or the reason why not.

OpenMRS's REST identifier search is fuzzy (substrings, names), so every hit is checked here:
a patient matches a candidate only when one of its non-voided identifiers, of an allowed type,
equals the candidate exactly.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from orthanc_openmrs.models import OpenMRSPatient, PatientIdentifier

# DICOM pads values with spaces (and some writers with NUL); the value itself never has them.
_PADDING = " \x00"


class MatchKind(enum.Enum):
    MATCHED = "matched"
    UNMATCHED = "unmatched"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class MatchDecision:
    kind: MatchKind
    reason: str
    patient_uuid: str = ""
    candidates: tuple[str, ...] = ()
    patient_uuids: tuple[str, ...] = ()


def candidate_ids(patient_tags: Mapping[str, str], tag_names: Sequence[str]) -> tuple[str, ...]:
    """The identifiers the study names, in tag order, without padding or repeats."""
    seen: dict[str, None] = {}
    for tag in tag_names:
        raw = patient_tags.get(tag) or ""
        for part in raw.split("\\"):
            value = part.strip(_PADDING)
            if value:
                seen.setdefault(value, None)
    return tuple(seen)


def identifier_counts(identifier: PatientIdentifier, allowed_types: frozenset[str]) -> bool:
    if identifier.voided:
        return False
    if not allowed_types:
        return True
    return identifier.type_name in allowed_types or identifier.type_uuid in allowed_types


def exact_matches(
    candidate: str, hits: Iterable[OpenMRSPatient], allowed_types: frozenset[str]
) -> list[OpenMRSPatient]:
    return [
        patient
        for patient in hits
        if not patient.voided
        and any(
            ident.identifier == candidate and identifier_counts(ident, allowed_types)
            for ident in patient.identifiers
        )
    ]


def worth_keeping(candidate: str, hits: Iterable[OpenMRSPatient]) -> list[OpenMRSPatient]:
    """What `decide` and the demographic check can use of a search for `candidate`: patients
    not voided, with only their non-voided identifiers equal to it, and what they say of the
    person. The fuzzy search also returns near misses and whole identifier lists, which would
    only weigh on a cache of search results."""
    kept = []
    for patient in hits:
        same = tuple(
            PatientIdentifier(
                candidate, sys.intern(i.type_uuid), sys.intern(i.type_name), voided=False
            )
            for i in patient.identifiers
            if i.identifier == candidate and not i.voided
        )
        if same and not patient.voided:
            kept.append(replace(patient, identifiers=same, gender=sys.intern(patient.gender)))
    return kept


def decide(
    candidates: Sequence[str],
    hits: Mapping[str, Sequence[OpenMRSPatient]],
    allowed_types: frozenset[str],
) -> MatchDecision:
    """Exactly one patient across all candidates: matched. None: unmatched. More: ambiguous."""
    if not candidates:
        return MatchDecision(MatchKind.UNMATCHED, "the study carries no patient identifier")
    found: dict[str, list[str]] = {}
    for candidate in candidates:
        for patient in exact_matches(candidate, hits.get(candidate, ()), allowed_types):
            found.setdefault(patient.uuid, []).append(candidate)
    shown = ", ".join(repr(c) for c in candidates)
    if not found:
        return MatchDecision(
            MatchKind.UNMATCHED,
            f"no OpenMRS patient has the identifier {shown}",
            candidates=tuple(candidates),
        )
    if len(found) > 1:
        detail = "; ".join(f"{uuid} by {', '.join(ids)}" for uuid, ids in found.items())
        return MatchDecision(
            MatchKind.AMBIGUOUS,
            f"{len(found)} OpenMRS patients match {shown}: {detail}",
            candidates=tuple(candidates),
            patient_uuids=tuple(found),
        )
    ((uuid, ids),) = found.items()
    return MatchDecision(
        MatchKind.MATCHED,
        f"identifier {', '.join(repr(i) for i in ids)}",
        patient_uuid=uuid,
        candidates=tuple(candidates),
        patient_uuids=(uuid,),
    )
