"""Frozen values shared by the layers. JSON of the servers is parsed into these at the edge."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True)
class Change:
    """One row of Orthanc's changes log."""

    seq: int
    change_type: str
    resource_type: str
    orthanc_id: str


@dataclass(frozen=True)
class ChangesPage:
    changes: tuple[Change, ...]
    last: int
    done: bool


@dataclass(frozen=True)
class Study:
    """A study as Orthanc describes it (`GET /studies/{id}`)."""

    orthanc_id: str
    study_uid: str
    is_stable: bool
    last_update: str
    patient_tags: dict[str, str] = field(default_factory=dict)
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    accession: str = ""
    series_ids: tuple[str, ...] = ()

    @property
    def patient_id(self) -> str:
        return self.patient_tags.get("PatientID", "")

    @property
    def patient_name(self) -> str:
        return self.patient_tags.get("PatientName", "")


@dataclass(frozen=True)
class IssuedIds:
    """Who issued the study's patient identifiers, as one of its instances says (Orthanc does
    not index these tags): IssuerOfPatientID, for PatientID, and the (PatientID,
    IssuerOfPatientID) of each item of OtherPatientIDsSequence."""

    patient_id_issuer: str = ""
    others: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Series:
    orthanc_id: str
    series_uid: str
    number: str | None
    modality: str
    date: str | None
    time: str | None
    description: str
    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Instance:
    orthanc_id: str
    sop_uid: str
    number: str | None
    index_in_series: int | None


@dataclass(frozen=True)
class InstanceTags:
    """The few tags that decide how an instance is shown."""

    sop_class_uid: str
    rows: int | None
    columns: int | None
    window_center: str | None
    window_width: str | None
    number_of_frames: int


class InstanceKind(enum.Enum):
    IMAGE = "image"
    PDF = "pdf"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    identifier: str
    type_uuid: str
    type_name: str
    voided: bool = False


@dataclass(frozen=True, slots=True)
class OpenMRSPatient:
    uuid: str
    identifiers: tuple[PatientIdentifier, ...]
    display: str = ""
    voided: bool = False
    # What OpenMRS knows of the person, to cross-check with the study's DICOM values.
    gender: str = ""  # as OpenMRS holds it: "M", "F", "O", "U", or "" when unset
    birthdate: date | None = None
    # Only roughly known (an age was entered): just its year is worth comparing.
    birthdate_estimated: bool = False
    # Family names of the person's non-voided names; a second surname (familyName2) joined
    # to the first with a space, as it may be written in DICOM, is one of them too.
    family_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PatientChange:
    """A patient OpenMRS reports changed (created, edited, given or relieved of identifiers):
    its active identifiers, and when it changed as the server tells it."""

    uuid: str
    identifiers: tuple[str, ...]
    last_updated: str


@dataclass(frozen=True)
class Attachment:
    """An attachment as OpenMRS lists it."""

    uuid: str
    comment: str | None
    filename: str = ""


@dataclass(frozen=True)
class Preview:
    """The file uploaded to OpenMRS for a study."""

    data: bytes
    mime_type: str
    filename: str


class PreviewSource(enum.Enum):
    """Which path made a study's attachment, for the counts a person reads in `status`."""

    ORTHANC_WINDOW = "orthanc-window"  # Orthanc's /rendered with the file's own window
    ORTHANC_FULL_RANGE = "orthanc-full-range"  # Orthanc's /preview, min to max
    LOCAL_DECODE = "local-decode"  # decoded here with pydicom, in a limited child process
    CARD = "card"  # no image could be made: a card naming the study
    PDF = "pdf"  # the study's encapsulated PDF


class Outcome(enum.Enum):
    """What one attempt at one study came to."""

    SYNCED = "synced"
    ALREADY_THERE = "already there"
    REPLACED = "replaced"
    UNMATCHED = "unmatched"
    AMBIGUOUS = "ambiguous"
    MISMATCH = "mismatch"  # one patient matched, but what DICOM says of them contradicts it
    FAILED = "failed"
    NOT_STABLE = "not stable"
    GONE = "gone"
    SUPERSEDED = "superseded"
    CONFLICT = "conflict"  # another Orthanc study of this UID belongs to another patient


class State(enum.Enum):
    """Where a study stands in the ledger."""

    PENDING = "pending"
    SYNCED = "synced"
    UNMATCHED = "unmatched"
    AMBIGUOUS = "ambiguous"
    MISMATCH = "mismatch"  # the matched patient's birth date, sex or name disagrees with DICOM
    FAILED = "failed"
    GONE = "gone"
    IGNORED = "ignored"  # a person said: leave this study alone
    SUPERSEDED = "superseded"  # the same StudyInstanceUID lives on under a newer Orthanc identity
    # Two Orthanc studies of this UID belong to two patients, neither made from the other: a
    # collision, not a correction. Nothing is attached or voided until a person decides or one
    # of them leaves Orthanc.
    CONFLICT = "conflict"


NEEDS_A_PERSON = (State.UNMATCHED, State.AMBIGUOUS, State.MISMATCH, State.CONFLICT, State.FAILED)
# States in which a study waits for OpenMRS to learn (or correct) its patient: a change to a
# patient holding one of the study's identifiers is worth another attempt at once.
WAITING = (State.UNMATCHED, State.AMBIGUOUS, State.MISMATCH)


@dataclass(frozen=True)
class Voided:
    """An attachment the attempt voided in OpenMRS, and why."""

    attachment_uuid: str
    patient_uuid: str
    reason: str


@dataclass(frozen=True)
class Prior:
    """What the ledger knew of a study before this attempt."""

    state: State
    patient_uuid: str = ""
    attachment_uuid: str = ""
    instance_id: str = ""
    manual_patient_uuid: str = ""
    study_uid: str = ""
    # The other Orthanc studies with this StudyInstanceUID, as the ledger knows them; None when
    # the ledger cannot vouch for knowing them all (Orthanc is asked instead).
    same_uid: tuple[str, ...] | None = None

    @property
    def synced(self) -> bool:
        """The ledger knows an attachment this study has in OpenMRS (even if a later attempt,
        such as a replacement, failed): it is rechecked, never uploaded from scratch."""
        return bool(self.attachment_uuid) and self.state not in (State.GONE, State.SUPERSEDED)


@dataclass(frozen=True)
class StudyResult:
    """The result of one attempt, ready to be recorded."""

    orthanc_id: str
    outcome: Outcome
    reason: str = ""
    retryable: bool = True
    study_uid: str = ""
    dicom_patient_id: str = ""
    patient_uuid: str = ""
    attachment_uuid: str = ""
    instance_id: str = ""
    caption: str = ""
    last_update: str = ""
    candidates: tuple[str, ...] = ()
    # DICOM identity, for the people who review what could not be matched
    patient_name: str = ""
    birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    description: str = ""
    candidate_patients: tuple[str, ...] = ()  # "uuid display" of each matching patient
    voided: tuple[Voided, ...] = ()
    created: bool = False  # this attempt uploaded the attachment
    preview_source: str = ""  # a PreviewSource value, when this attempt chose the file


@dataclass(frozen=True)
class OrthancSystem:
    """What Orthanc says of itself (`/system`, `/plugins`)."""

    version: str
    plugins: tuple[str, ...]


@dataclass(frozen=True)
class OpenMRSModule:
    module_id: str  # "webservices.rest", "attachments", "fhir2"
    version: str
    started: bool


@dataclass(frozen=True)
class OpenMRSUser:
    """The logged-in user as the session resource shows it."""

    username: str
    privileges: frozenset[str]
    roles: frozenset[str]
