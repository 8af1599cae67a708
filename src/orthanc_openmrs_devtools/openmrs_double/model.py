"""What the double holds: the seeded values, patients, attachments and injected faults.

Nothing here locks; the double takes its one lock around every call into the store,
so the indexes the store keeps are only ever read or changed under that lock.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

OPENMRS_ID_TYPE_UUID = "05a29f94-c0ed-11e2-94be-8c13b969e334"
ID_CARD_TYPE_UUID = "b4143563-16cd-4439-b288-f83d61670fc8"

# The attachments module's global property: bigger images are re-encoded smaller.
DOWNSCALE_ABOVE_BYTES = 1_200_000


# --------------------------------------------------------------------------------------------
# Public values


@dataclass(frozen=True)
class Identifier:
    """A patient identifier to seed: its value, the name of its type, and its flags."""

    identifier: str
    type_name: str = "OpenMRS ID"
    voided: bool = False
    preferred: bool = False


@dataclass
class StoredAttachment:
    """An attachment as the server holds it (a complex obs and its file)."""

    uuid: str
    patient_uuid: str
    comment: str | None
    filename: str
    mime_type: str
    data: bytes
    obs_datetime: datetime
    voided: bool
    # True when an image upload was over 1,200,000 bytes: the real server would store a
    # down-scaled re-encoding instead of these bytes.
    downscaled: bool
    # time.time() when stored: obs_datetime keeps whole seconds, too coarse for latency
    # benchmarks that time an upload from send to storage.
    stored_at: float


@dataclass
class RecordedRequest:
    """One request as it arrived; status is 0 until answered, and stays 0 when dropped."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int = 0
    arrived: float = 0.0  # epoch seconds
    token_expires: float | None = None  # the `exp` of the JWT it carried, if any


# --------------------------------------------------------------------------------------------
# Internal state


@dataclass
class IdType:
    uuid: str
    name: str


@dataclass
class PatientId:
    uuid: str
    identifier: str
    type_uuid: str
    preferred: bool
    voided: bool


@dataclass
class Patient:
    uuid: str
    name_uuid: str
    given: str
    family: str
    gender: str
    birthdate: date | None
    voided: bool
    created: datetime
    identifiers: list[PatientId]
    # person.birthdate_estimated: the birth date was worked out from an age.
    birthdate_estimated: bool = False
    # patient.date_changed: set when a column of the patient or person row changes (a scalar
    # person edit, a void), never when only child rows (identifiers, names) do.
    changed: datetime | None = None

    @property
    def last_updated(self) -> datetime:
        """What FHIR2 filters `_lastUpdated` on and shows as `meta.lastUpdated`."""
        return self.changed or self.created

    @property
    def full_name(self) -> str:
        return f"{self.given} {self.family}".strip()

    def active_ids(self) -> list[PatientId]:
        return [i for i in self.identifiers if not i.voided]

    def main_id(self) -> PatientId | None:
        # The preferred active identifier, else the first active one (Patient.getPatientIdentifier).
        active = self.active_ids()
        return next((i for i in active if i.preferred), active[0] if active else None)

    def display(self) -> str:
        main = self.main_id()
        return "" if main is None else f"{main.identifier} - {self.full_name}"


@dataclass(frozen=True)
class FileData:
    """A file as it is to be stored: its name, MIME type and bytes."""

    filename: str
    mime_type: str
    data: bytes


@dataclass
class Faults:
    """What the next requests should suffer; see the double's fault-injection methods."""

    fail_uploads: int = 0
    fail_status: int = 500
    drop_uploads: int = 0
    outage: int | None = None


def now() -> datetime:
    # obs_datetime is a DATETIME column without fractions: what is read back has whole seconds.
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class SearchKeys:
    """A patient's identifiers and names, lower-cased once instead of on every search.

    The store rebuilds them whenever the patient or one of its identifiers changes.
    """

    patient: Patient
    active_ids: tuple[str, ...]
    # Voided ones too: the identifier-prefix search does not look at the voided flag.
    all_ids: tuple[str, ...]
    names: tuple[str, str]
    # Every identifier and both names in one string. Anything found in one of them is also
    # found here, so one `in` test rules out most patients before the exact comparison.
    text: str

    @classmethod
    def of(cls, patient: Patient) -> SearchKeys:
        all_ids = tuple(i.identifier.lower() for i in patient.identifiers)
        names = (patient.given.lower(), patient.family.lower())
        return cls(
            patient=patient,
            active_ids=tuple(i.identifier.lower() for i in patient.active_ids()),
            all_ids=all_ids,
            names=names,
            text="\n".join((*all_ids, *names)),
        )


class Store:
    """Identifier types, patients and attachments, with the rules that apply when seeding.

    Patients and attachments are changed only through the methods here, which keep the
    indexes in step: each patient's search keys, patients by active identifier, and each
    patient's attachments. A patient's listing then touches only its own attachments, and a
    search compares strings lower-cased once rather than on every request.
    """

    def __init__(self) -> None:
        self.created = now()
        self.types: dict[str, IdType] = {}
        self._patients: dict[str, Patient] = {}
        # Same keys in the same order as _patients: replacing a patient keeps its place in both.
        self._search_keys: dict[str, SearchKeys] = {}
        # Lower-cased active identifier -> uuids of the patients holding it.
        self._uuids_by_id: dict[str, set[str]] = {}
        # Attachments in upload order, all of them and per patient uuid.
        self._attachments: dict[str, StoredAttachment] = {}
        self._attachments_of: dict[str, dict[str, StoredAttachment]] = {}

    # -- identifier types -------------------------------------------------------------------

    def add_identifier_type(self, name: str, uuid: str | None = None) -> str:
        if any(t.name == name for t in self.types.values()):
            raise ValueError(f"identifier type {name!r} already exists")
        kind = IdType(uuid or str(uuidlib.uuid4()), name)
        self.types[kind.uuid] = kind
        return kind.uuid

    def find_type(self, key: str) -> IdType | None:
        """A type by uuid, or failing that by name."""
        return self.types.get(key) or next((t for t in self.types.values() if t.name == key), None)

    # -- patients ---------------------------------------------------------------------------

    @property
    def patients(self) -> Mapping[str, Patient]:
        """Patients by uuid, in creation order; read-only, see add_patient."""
        return self._patients

    def search_keys(self) -> Iterable[SearchKeys]:
        """Every patient's search keys, in the patients' order."""
        return self._search_keys.values()

    def uuids_with_id(self, identifier: str) -> frozenset[str]:
        """Uuids of the patients, voided ones too, with this active identifier (ignoring case)."""
        return frozenset(self._uuids_by_id.get(identifier.lower(), ()))

    def add_patient(self, patient: Patient) -> None:
        """Store a patient; one with a uuid already known replaces it, in its place."""
        self._patients[patient.uuid] = patient
        self._index_patient(patient)

    def new_identifiers(self, identifiers: Sequence[Identifier | str]) -> list[PatientId]:
        """A new patient's identifiers; a plain string is an "OpenMRS ID"."""
        idents = [self._new_identifier(i) for i in identifiers]
        if idents and not any(i.preferred for i in idents):
            # OpenMRS always has one preferred identifier; the first one by default.
            idents[0].preferred = True
        return idents

    def _new_identifier(self, spec: Identifier | str) -> PatientId:
        ident = Identifier(spec) if isinstance(spec, str) else spec
        kind = next((t for t in self.types.values() if t.name == ident.type_name), None)
        if kind is None:
            raise ValueError(f"unknown identifier type {ident.type_name!r}")
        return PatientId(
            str(uuidlib.uuid4()), ident.identifier, kind.uuid, ident.preferred, ident.voided
        )

    def void_identifier(self, patient_uuid: str, identifier: str) -> None:
        # Only the identifier row changes: the patient's date_changed stays.
        patient = self._patients[patient_uuid]
        for ident in patient.identifiers:
            if ident.identifier == identifier:
                ident.voided = True
        self._index_patient(patient)

    def add_identifier(self, patient_uuid: str, spec: Identifier | str) -> None:
        # savePatientIdentifier inserts a child row: the patient's date_changed stays.
        patient = self._patients[patient_uuid]
        ident = self._new_identifier(spec)
        patient.identifiers.append(ident)
        self._index_patient(patient)

    def edit_person(
        self, patient_uuid: str, *, gender: str | None = None, birthdate: date | None = None
    ) -> None:
        """A scalar edit of the person (POST /person/{uuid}): the row is dirty, so Hibernate's
        AuditableInterceptor sets date_changed on person and patient."""
        patient = self._patients[patient_uuid]
        before = (patient.gender, patient.birthdate)
        patient.gender = patient.gender if gender is None else gender
        patient.birthdate = patient.birthdate if birthdate is None else birthdate
        if (patient.gender, patient.birthdate) != before:
            patient.changed = now()

    def void_patient(self, patient_uuid: str) -> None:
        """voidPatient: the patient and, through the void handlers, its identifiers."""
        patient = self._patients[patient_uuid]
        if patient.voided:
            return
        patient.voided = True
        for ident in patient.identifiers:
            ident.voided = True
        patient.changed = now()
        self._index_patient(patient)

    def merge_patients(self, preferred_uuid: str, other_uuid: str) -> dict[str, str]:
        """PatientServiceImpl.mergePatients, for what the double holds; returns the uuids of the
        encounterless attachments it moved, old -> new.

        Active identifiers are copied to the preferred patient as new, non-preferred rows
        (child rows: its date_changed moves only if a demographic is copied too). Encounterless
        obs are saved again for the preferred patient, which makes new obs with new uuids and
        the same caption and file, and voids the old ones. The other patient is voided."""
        winner, loser = self._patients[preferred_uuid], self._patients[other_uuid]
        if winner is loser:
            raise ValueError("a patient cannot be merged with itself")
        have = {(i.identifier, i.type_uuid) for i in winner.active_ids()}
        for ident in loser.active_ids():
            if (ident.identifier, ident.type_uuid) not in have:
                winner.identifiers.append(
                    PatientId(str(uuidlib.uuid4()), ident.identifier, ident.type_uuid, False, False)
                )
        moved = {}
        for att in list(self._attachments_of.get(loser.uuid, {}).values()):
            if att.voided:
                continue
            copy = self.store_attachment(
                winner.uuid,
                att.comment,
                FileData(att.filename, att.mime_type, att.data),
                att.obs_datetime,
            )
            att.voided = True
            moved[att.uuid] = copy.uuid
        if winner.gender not in ("M", "F") and loser.gender in ("M", "F"):
            winner.gender = loser.gender
            winner.changed = now()
        if winner.birthdate is None and loser.birthdate is not None:
            winner.birthdate = loser.birthdate
            winner.changed = now()
        self._index_patient(winner)
        self.void_patient(loser.uuid)
        return moved

    def _index_patient(self, patient: Patient) -> None:
        """(Re)build the patient's search keys, dropping what its previous keys had indexed."""
        old = self._search_keys.get(patient.uuid)
        if old is not None:
            # A set: two identifiers of one patient may differ only in case.
            for value in set(old.active_ids):
                holders = self._uuids_by_id[value]
                holders.discard(patient.uuid)
                if not holders:
                    del self._uuids_by_id[value]
        keys = SearchKeys.of(patient)
        self._search_keys[patient.uuid] = keys
        for value in keys.active_ids:
            self._uuids_by_id.setdefault(value, set()).add(patient.uuid)

    # -- attachments ------------------------------------------------------------------------
    # A stored attachment's patient never changes, and voiding only sets a flag that the
    # listing reads: only storing and purging touch the per-patient index.

    @property
    def attachments(self) -> Mapping[str, StoredAttachment]:
        """Attachments by uuid, in upload order; read-only, see store and purge_attachment."""
        return self._attachments

    def store_attachment(
        self, patient_uuid: str, comment: str | None, file: FileData, obs_datetime: datetime
    ) -> StoredAttachment:
        image = file.mime_type.startswith("image/")
        att = StoredAttachment(
            uuid=str(uuidlib.uuid4()),
            patient_uuid=patient_uuid,
            comment=comment,
            filename=file.filename,
            mime_type=file.mime_type,
            data=file.data,
            obs_datetime=obs_datetime,
            voided=False,
            downscaled=image and len(file.data) > DOWNSCALE_ABOVE_BYTES,
            stored_at=time.time(),
        )
        self._attachments[att.uuid] = att
        self._attachments_of.setdefault(patient_uuid, {})[att.uuid] = att
        return att

    def purge_attachment(self, uuid: str) -> None:
        """Remove an attachment for good (DELETE with purge); voiding just sets its flag."""
        att = self._attachments.pop(uuid)
        del self._attachments_of[att.patient_uuid][uuid]

    def newest_first(
        self, patient_uuid: str | None, include_voided: bool
    ) -> list[StoredAttachment]:
        """One patient's attachments (None: everyone's), latest obs_datetime first."""
        if patient_uuid is None:
            pool: Mapping[str, StoredAttachment] = self._attachments
        else:
            pool = self._attachments_of.get(patient_uuid, {})
        # Ties on obs_datetime (whole seconds) put the later upload first. The pool is in
        # upload order, so a position in it orders uploads as a position among all would.
        ranked = sorted(
            enumerate(pool.values()),
            key=lambda pair: (pair[1].obs_datetime, pair[0]),
            reverse=True,
        )
        return [att for _, att in ranked if include_voided or not att.voided]
