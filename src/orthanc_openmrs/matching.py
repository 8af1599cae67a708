"""Pure: DICOM patient identity -> exactly one OpenMRS patient, or the reason why not.

OpenMRS's REST identifier search is fuzzy (substrings, names), so every hit is checked here:
a patient matches a candidate only when one of its non-voided identifiers, of an allowed type,
equals the candidate exactly. The allowed types are the configured ones, or, for an identifier
whose issuer (IssuerOfPatientID) is mapped to a type, that type alone: two facilities sharing a
PACS may hand out the same numbers.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from orthanc_openmrs.models import IssuedIds, OpenMRSPatient, PatientIdentifier

# DICOM pads values with spaces (and some writers with NUL); the value itself never has them.
PADDING = " \x00"


class MatchKind(enum.Enum):
    MATCHED = "matched"
    UNMATCHED = "unmatched"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Candidate:
    """An identifier the study names, and the OpenMRS identifier types it may equal (empty:
    any); `issuer` is the IssuerOfPatientID whose mapping chose the types."""

    value: str
    types: frozenset[str] = frozenset()
    issuer: str = ""

    @property
    def shown(self) -> str:
        if not self.issuer:
            return repr(self.value)
        return f"{self.value!r} of {self.issuer} ({', '.join(sorted(self.types))})"


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
            value = part.strip(PADDING)
            if value:
                seen.setdefault(value, None)
    return tuple(seen)


def candidates(
    patient_tags: Mapping[str, str],
    tag_names: Sequence[str],
    allowed_types: frozenset[str],
    issuer_types: Mapping[str, str] | None = None,
    issued: IssuedIds | None = None,
) -> tuple[Candidate, ...]:
    """The identifiers the study names, each with the types it may equal.

    An identifier whose issuer `issuer_types` maps may equal only that type: PatientID by
    IssuerOfPatientID, a value of OtherPatientIDs by the issuer OtherPatientIDsSequence gives
    it; the sequence's items with a mapped issuer are candidates too (when OtherPatientIDs is
    read). Any other identifier may equal the `allowed_types`, as without issuers.
    """
    mapping = issuer_types or {}
    issued = issued or IssuedIds()
    others = [(v.strip(PADDING), i.strip(PADDING)) for v, i in issued.others]
    found: dict[tuple[str, str], Candidate] = {}

    def add(value: str, issuer: str) -> None:
        kind = mapping.get(issuer) if issuer else None
        candidate = (
            Candidate(value, frozenset({kind}), issuer) if kind else Candidate(value, allowed_types)
        )
        found.setdefault((candidate.value, candidate.issuer), candidate)

    for tag in tag_names:
        for value in candidate_ids(patient_tags, (tag,)):
            if tag == "PatientID":
                add(value, issued.patient_id_issuer.strip(PADDING))
                continue
            issuers = [i for v, i in others if v == value and i in mapping]
            for issuer in issuers or [""]:
                add(value, issuer)
        if tag == "OtherPatientIDs":
            for value, issuer in others:
                if value and issuer in mapping:
                    add(value, issuer)
    typed = {c.value for c in found.values() if c.issuer}
    # A value whose issuer the study gives is that issuer's wherever it appears again.
    return tuple(c for c in found.values() if c.issuer or c.value not in typed)


def values(found: Sequence[Candidate]) -> tuple[str, ...]:
    """The distinct identifier values, in order: what is looked up and recorded."""
    return tuple(dict.fromkeys(c.value for c in found))


def parse_issuer_types(setting: str) -> dict[str, str]:
    """`HOSP_A=OpenMRS ID,CLINIC_B=Legacy MRN` as {issuer: identifier type}; ValueError
    naming the first entry that is not ISSUER=TYPE, or an issuer mapped twice."""
    mapping: dict[str, str] = {}
    for entry in setting.split(","):
        if not entry.strip():
            continue
        issuer, equals, kind = (part.strip() for part in entry.partition("="))
        if not equals or not issuer or not kind:
            raise ValueError(f"{entry.strip()!r} is not ISSUER=identifier type")
        if mapping.setdefault(issuer, kind) != kind:
            raise ValueError(f"issuer {issuer!r} is mapped to two identifier types")
    return mapping


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
    candidates: Sequence[Candidate], hits: Mapping[str, Sequence[OpenMRSPatient]]
) -> MatchDecision:
    """Exactly one patient across all candidates: matched. None: unmatched. More: ambiguous."""
    if not candidates:
        return MatchDecision(MatchKind.UNMATCHED, "the study carries no patient identifier")
    found: dict[str, list[str]] = {}
    for candidate in candidates:
        searched = hits.get(candidate.value, ())
        for patient in exact_matches(candidate.value, searched, candidate.types):
            found.setdefault(patient.uuid, []).append(candidate.shown)
    shown = ", ".join(c.shown for c in candidates)
    named = values(candidates)
    if not found:
        return MatchDecision(
            MatchKind.UNMATCHED,
            f"no OpenMRS patient has the identifier {shown}",
            candidates=named,
        )
    if len(found) > 1:
        detail = "; ".join(f"{uuid} by {', '.join(ids)}" for uuid, ids in found.items())
        return MatchDecision(
            MatchKind.AMBIGUOUS,
            f"{len(found)} OpenMRS patients match {shown}: {detail}",
            candidates=named,
            patient_uuids=tuple(found),
        )
    ((uuid, ids),) = found.items()
    return MatchDecision(
        MatchKind.MATCHED,
        f"identifier {', '.join(ids)}",
        patient_uuid=uuid,
        candidates=named,
        patient_uuids=(uuid,),
    )
