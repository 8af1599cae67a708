"""Patients and identifier types as REST resources: their properties and named views."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from orthanc_openmrs_devtools.openmrs_double.auth import ADMIN_UUID
from orthanc_openmrs_devtools.openmrs_double.representation import Node
from orthanc_openmrs_devtools.openmrs_double.wire import REST, format_datetime

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orthanc_openmrs_devtools.openmrs_double.model import IdType, Patient, PatientId


def _views(*props: str) -> dict[str, tuple[str, ...]]:
    """Views of a resource whose default and full representations list the same properties.

    Default adds the link to the full representation; full adds the audit info instead.
    """
    return {
        "ref": ("uuid", "display", "links"),
        "default": (*props, "links:full", "resourceVersion"),
        "full": (*props, "auditInfo", "links", "resourceVersion"),
    }


_TYPE_VIEWS = _views(
    "uuid", "display", "name", "description", "format", "formatDescription", "required",
    "validator", "locationBehavior", "uniquenessBehavior", "retired",
)  # fmt: skip
_IDENTIFIER_VIEWS = _views(
    "display", "uuid", "identifier", "identifierType:ref", "location", "preferred", "voided",
)  # fmt: skip
_NAME_VIEWS = _views(
    "display", "uuid", "givenName", "middleName", "familyName", "familyName2", "voided",
)  # fmt: skip
_PERSON_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "uuid", "display", "gender", "age", "birthdate", "birthdateEstimated", "dead",
        "deathDate", "causeOfDeath", "preferredName:ref", "preferredAddress", "attributes",
        "voided", "birthtime", "deathdateEstimated", "links:full", "resourceVersion",
    ),
    "full": (
        "uuid", "display", "gender", "age", "birthdate", "birthdateEstimated", "dead",
        "deathDate", "causeOfDeath", "preferredName:default", "preferredAddress",
        "names:default", "addresses", "attributes", "voided", "auditInfo", "birthtime",
        "deathdateEstimated", "links", "resourceVersion",
    ),
}  # fmt: skip
_PATIENT_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "uuid", "display", "identifiers:ref", "person:default", "voided", "links:full",
        "resourceVersion",
    ),
    "full": (
        "uuid", "display", "identifiers:default", "person:full", "voided", "auditInfo", "links",
        "resourceVersion",
    ),
}  # fmt: skip


def _audit(base: str, created: datetime, changed: datetime | None = None) -> dict[str, Any]:
    creator = {
        "uuid": ADMIN_UUID,
        "display": "admin",
        "links": [
            {"rel": "self", "uri": f"{base}{REST}user/{ADMIN_UUID}", "resourceAlias": "user"}
        ],
    }
    return {
        "creator": creator,
        "dateCreated": format_datetime(created),
        "changedBy": None if changed is None else creator,
        "dateChanged": None if changed is None else format_datetime(changed),
    }


def type_node(kind: IdType, base: str, created: datetime) -> Node:
    props = {
        "uuid": kind.uuid,
        "display": kind.name,
        "name": kind.name,
        "description": None,
        "format": None,
        "formatDescription": None,
        "required": False,
        "validator": None,
        "locationBehavior": None,
        "uniquenessBehavior": None,
        "retired": False,
        "auditInfo": _audit(base, created),
        "resourceVersion": "2.0",
    }
    uri = f"{base}{REST}patientidentifiertype/{kind.uuid}"
    return Node(uri, "patientidentifiertype", props, _TYPE_VIEWS)


def _identifier_node(ident: PatientId, patient: Patient, kind: IdType, base: str) -> Node:
    props = {
        "uuid": ident.uuid,
        "display": f"{kind.name} = {ident.identifier}",
        "identifier": ident.identifier,
        "identifierType": type_node(kind, base, patient.created),
        "location": None,
        "preferred": ident.preferred,
        "voided": ident.voided,
        "auditInfo": _audit(base, patient.created),
        "resourceVersion": "1.8",
    }
    uri = f"{base}{REST}patient/{patient.uuid}/identifier/{ident.uuid}"
    return Node(uri, "identifier", props, _IDENTIFIER_VIEWS)


def _name_node(patient: Patient, base: str) -> Node:
    props = {
        "uuid": patient.name_uuid,
        "display": patient.full_name,
        "givenName": patient.given,
        "middleName": None,
        "familyName": patient.family,
        "familyName2": None,
        "voided": False,
        "auditInfo": _audit(base, patient.created),
        "resourceVersion": "1.8",
    }
    uri = f"{base}{REST}person/{patient.uuid}/name/{patient.name_uuid}"
    return Node(uri, "name", props, _NAME_VIEWS)


def age(birthdate: date | None, today: date) -> int | None:
    if birthdate is None:
        return None
    before_birthday = (today.month, today.day) < (birthdate.month, birthdate.day)
    return today.year - birthdate.year - before_birthday


def _person_node(patient: Patient, base: str) -> Node:
    name = _name_node(patient, base)
    birth = patient.birthdate
    props = {
        "uuid": patient.uuid,
        "display": patient.full_name,
        "gender": patient.gender,
        "age": age(birth, datetime.now(UTC).date()),
        "birthdate": None if birth is None else f"{birth.isoformat()}T00:00:00.000+0000",
        "birthdateEstimated": patient.birthdate_estimated,
        "dead": False,
        "deathDate": None,
        "causeOfDeath": None,
        "preferredName": name,
        "preferredAddress": None,
        "names": [name],
        "addresses": [],
        "attributes": [],
        "voided": patient.voided,
        "auditInfo": _audit(base, patient.created, patient.changed),
        "birthtime": None,
        "deathdateEstimated": False,
        "resourceVersion": "1.11",
    }
    return Node(f"{base}{REST}person/{patient.uuid}", "person", props, _PERSON_VIEWS)


def patient_node(patient: Patient, types: Mapping[str, IdType], base: str) -> Node:
    identifiers = [
        _identifier_node(ident, patient, types[ident.type_uuid], base)
        for ident in patient.active_ids()
    ]
    props = {
        "uuid": patient.uuid,
        "display": patient.display(),
        "identifiers": identifiers,
        "person": _person_node(patient, base),
        "voided": patient.voided,
        "auditInfo": _audit(base, patient.created, patient.changed),
        "resourceVersion": "1.8",
    }
    views = dict(_PATIENT_VIEWS)
    if patient.voided:
        # The reference representation flags voided patients, and only them.
        views["ref"] = ("uuid", "display", "voided", "links")
    return Node(f"{base}{REST}patient/{patient.uuid}", "patient", props, views)
