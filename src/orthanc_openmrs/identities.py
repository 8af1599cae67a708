"""Pure: two Orthanc studies with one StudyInstanceUID, and which of them the chart shows.

Orthanc files a study under PatientID and StudyInstanceUID together, so one UID lives on under
two Orthanc studies after a patient identity is corrected (Orthanc keeps the original unless
told otherwise), but also when two studies collide: modalities or anonymisers that reuse UIDs,
test data copied between patients. Deciding as a careful person would:

- The same patient on both (the same trimmed PatientID, or both match the same OpenMRS
  patient), or one made from the other by Orthanc's own /modify (its ModifiedFrom metadata):
  one study for the chart, and the newer identity wins.
- An identity that matches nobody never takes the other's place: each goes its own way.
- Different patients, neither made from the other, both still in Orthanc: a conflict. Nothing
  is attached or voided for the UID until a person decides or one of them leaves Orthanc.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    orthanc_id: str
    last_update: str
    patient_id: str
    patient_uuid: str | None  # the one OpenMRS patient its identifiers match, if exactly one
    made_from: str = ""  # Orthanc's ModifiedFrom: the study this one was made from

    @property
    def order(self) -> tuple[str, str]:
        return (self.last_update, self.orthanc_id)


class Relation(enum.Enum):
    PROCEED = "proceed"  # this identity goes its own way
    SUPERSEDED = "superseded"  # the other, newer identity of the same study wins
    CONFLICT = "conflict"  # two patients' studies share the UID


@dataclass(frozen=True)
class Verdict:
    relation: Relation
    reason: str = ""
    other: Identity | None = None


def relate(this: Identity, other: Identity) -> Verdict:
    """How `this` identity stands towards `other`, which holds the same UID."""
    newer = other.order > this.order
    linked = other.made_from == this.orthanc_id or this.made_from == other.orthanc_id
    same_id = bool(this.patient_id.strip()) and this.patient_id.strip() == other.patient_id.strip()
    same_patient = this.patient_uuid is not None and this.patient_uuid == other.patient_uuid
    if linked or same_id or same_patient:
        if not newer:
            return Verdict(Relation.PROCEED)
        why = (
            "made from this one by Orthanc's /modify (a correction)"
            if linked
            else "of the same patient"
        )
        reason = (
            f"the same StudyInstanceUID is in Orthanc as the newer study {other.orthanc_id}, {why}"
        )
        return Verdict(Relation.SUPERSEDED, reason, other)
    if other.patient_uuid is None or this.patient_uuid is None:
        return Verdict(Relation.PROCEED)  # one matching nobody never takes the other's place
    reason = (
        f"the same StudyInstanceUID is in Orthanc as study {other.orthanc_id} of another patient "
        f"(PatientID {other.patient_id!r}, OpenMRS {other.patient_uuid}; this one "
        f"{this.patient_id!r}, OpenMRS {this.patient_uuid}), neither made from the other: "
        "a person must decide (link one to its patient), or delete the wrong one from Orthanc"
    )
    return Verdict(Relation.CONFLICT, reason, other)


def decide(this: Identity, others: list[Identity]) -> Verdict:
    """The first conflict, else the newest identity this one gives way to, else proceed."""
    verdicts = [relate(this, other) for other in others]
    for verdict in verdicts:
        if verdict.relation is Relation.CONFLICT:
            return verdict
    superseding = [v for v in verdicts if v.relation is Relation.SUPERSEDED and v.other]
    if superseding:
        return max(superseding, key=lambda v: v.other.order if v.other else ("", ""))
    return Verdict(Relation.PROCEED)
