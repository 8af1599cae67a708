"""Pure: what the pages show of a study, a patient and the service, as plain values for the
templates (which escape every one of them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from orthanc_openmrs.demographics import dicom_date
from orthanc_openmrs.models import NEEDS_A_PERSON, OpenMRSPatient, State
from orthanc_openmrs.store import StudyRow

PAGE_SIZE = 25
STATE_LABELS = {
    State.UNMATCHED: "No patient has its identifier",
    State.AMBIGUOUS: "Several patients have its identifier",
    State.MISMATCH: "Demographics disagree",
    State.CONFLICT: "Two Orthanc studies, two patients",
    State.FAILED: "Failed",
}


def shown_date(value: str) -> str:
    """A DICOM date as YYYY-MM-DD when it is one, else as it is."""
    parsed = dicom_date(value)
    return parsed.isoformat() if parsed else value.strip()


def shown_time(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def shown_name(value: str) -> str:
    """A DICOM PN (Family^Given^Middle) as people write it: Family, Given Middle."""
    group = value.split("=", 1)[0].strip()
    parts = [p.strip() for p in group.split("^")]
    if len(parts) < 2:
        return group
    rest = " ".join(p for p in parts[1:3] if p)
    return f"{parts[0]}, {rest}" if rest else parts[0]


@dataclass(frozen=True)
class Identity:
    """One side of the comparison: what DICOM or OpenMRS says of the patient."""

    identifiers: tuple[str, ...]
    name: str
    sex: str
    birth_date: str


def dicom_identity(row: StudyRow, tags: Mapping[str, str]) -> Identity:
    ids = [row.dicom_patient_id or tags.get("PatientID", "")]
    others = tags.get("OtherPatientIDs", "")
    ids += [f"{v.strip()} (OtherPatientIDs)" for v in others.split("\\") if v.strip()]
    return Identity(
        tuple(i for i in ids if i),
        shown_name(row.patient_name or tags.get("PatientName", "")),
        (row.patient_sex or tags.get("PatientSex", "")).strip(),
        shown_date(row.birth_date or tags.get("PatientBirthDate", "")),
    )


def openmrs_identity(patient: OpenMRSPatient) -> Identity:
    birth = patient.birthdate.isoformat() if patient.birthdate else ""
    if birth and patient.birthdate_estimated:
        birth += " (estimated)"
    ids = tuple(
        f"{i.identifier} ({i.type_name})" if i.type_name else i.identifier
        for i in patient.identifiers
        if not i.voided
    )
    name = patient.display.split(" - ", 1)[-1] if " - " in patient.display else patient.display
    return Identity(ids, name, patient.gender, birth)


def candidate_uuids(row: StudyRow) -> list[str]:
    """The candidate patients the ledger keeps ("uuid display"), by uuid."""
    return [c.split(" ", 1)[0] for c in row.candidate_patients if c.strip()]


def queue_states(chosen: str) -> tuple[State, ...]:
    """The states a filter names; every state needing a person when none (or a wrong one)."""
    for state in NEEDS_A_PERSON:
        if state.value == chosen:
            return (state,)
    return NEEDS_A_PERSON


@dataclass(frozen=True)
class Paging:
    page: int
    pages: int
    total: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * PAGE_SIZE


def paging(requested: str, total: int) -> Paging:
    pages = max(1, -(-total // PAGE_SIZE))
    try:
        page = int(requested)
    except ValueError:
        page = 1
    return Paging(min(max(page, 1), pages), pages, total)


def backfill(counts: Mapping[State, int]) -> tuple[int, int]:
    """(decided, total): how far the ledger's studies are through their first attempt."""
    total = sum(counts.values())
    return total - counts.get(State.PENDING, 0), total


def differences_between(dicom: Identity, openmrs: Identity) -> Sequence[str]:
    """The rows of the side-by-side comparison where both sides hold a value and disagree."""
    marks = []
    if dicom.sex in ("M", "F") and openmrs.sex in ("M", "F") and dicom.sex != openmrs.sex:
        marks.append("sex")
    if dicom.birth_date and openmrs.birth_date:
        estimated = openmrs.birth_date.endswith("(estimated)")
        theirs = openmrs.birth_date[:4] if estimated else openmrs.birth_date
        if dicom.birth_date[: len(theirs)] != theirs:
            marks.append("birth_date")
    return marks
