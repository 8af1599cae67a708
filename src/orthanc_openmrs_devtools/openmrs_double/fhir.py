"""The FHIR R4 API as the fhir2 module serves it: Patient read and identifier search."""

from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from orthanc_openmrs_devtools.openmrs_double.auth import basic_credentials
from orthanc_openmrs_devtools.openmrs_double.errors import html_page
from orthanc_openmrs_devtools.openmrs_double.patient_views import age
from orthanc_openmrs_devtools.openmrs_double.wire import (
    FHIR,
    int_param,
    json_response,
    query_string,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from orthanc_openmrs_devtools.openmrs_double.auth import Accounts, Session
    from orthanc_openmrs_devtools.openmrs_double.model import IdType, Patient, Store
    from orthanc_openmrs_devtools.openmrs_double.wire import Request, Response

FHIR_JSON = "application/fhir+json;charset=utf-8"
FHIR_DEFAULT_COUNT = 10
FHIR_MAX_COUNT = 100


def _identifier_matches(patient: Patient, token: str, types: Mapping[str, IdType]) -> bool:
    # "TYPE|VALUE" compares the identifier type's name; the database collation ignores case.
    system, bar, value = token.rpartition("|")
    for ident in patient.active_ids():
        if ident.identifier.lower() != value.lower():
            continue
        if not bar or not system or types[ident.type_uuid].name.lower() == system.lower():
            return True
    return False


def _matches(patient: Patient, groups: list[list[str]], types: Mapping[str, IdType]) -> bool:
    """Whether an active patient has, for every group, an identifier matching one of its tokens."""
    return not patient.voided and all(
        any(_identifier_matches(patient, token, types) for token in group) for group in groups
    )


def _date_range(value: str) -> tuple[datetime, datetime]:
    """The instants a `_lastUpdated` value selects, as fhir2's date handling computes them:
    precision capped at seconds, and `gt` as inclusive as `ge` (`lt` as `le`)."""
    prefix, text = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f'Invalid date/time format: "{text}"') from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    start = instant.replace(microsecond=0)
    end = start.replace(microsecond=999_999)
    lowest, highest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    if prefix in ("gt", "ge"):
        return start, highest
    if prefix in ("lt", "le"):
        return lowest, end
    if prefix == "eq":
        return start, end
    raise ValueError(f'Invalid date/time prefix: "{prefix}"')


def _patient_resource(patient: Patient, types: Mapping[str, IdType]) -> dict[str, Any]:
    identifiers = [
        {
            "id": ident.uuid,
            "use": "official" if ident.preferred else "usual",
            "type": {
                "coding": [{"code": ident.type_uuid}],
                "text": types[ident.type_uuid].name,
            },
            "value": ident.identifier,
        }
        for ident in patient.active_ids()
    ]
    gender = {"M": "male", "F": "female", "O": "other"}.get(patient.gender, "unknown")
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient.uuid,
        "meta": {"lastUpdated": patient.last_updated.isoformat()},
        "identifier": identifiers,
        "active": not patient.voided,
        "name": [{"id": patient.name_uuid, "family": patient.family, "given": [patient.given]}],
        "gender": gender,
        "deceasedBoolean": False,
    }
    if patient.birthdate is not None:
        resource["birthDate"] = _birth_date(patient.birthdate, patient.birthdate_estimated)
    return resource


def _birth_date(birthdate: date, estimated: bool) -> str:
    """fhir2's BirthDateTranslator: an estimated birth date keeps only its year, or its year
    and month for a child of 5 or less (the cut-off of infant growth charts)."""
    if not estimated:
        return birthdate.isoformat()
    years = age(birthdate, datetime.now(UTC).date()) or 0
    return birthdate.isoformat()[: 4 if years > 5 else 7]


def _operation_outcome(status: int, code: str, text: str) -> Response:
    issue = {"severity": "error", "code": code, "diagnostics": text}
    return json_response(status, {"resourceType": "OperationOutcome", "issue": [issue]}, FHIR_JSON)


def _count(req: Request) -> int:
    # HAPI clamps _count to the maximum page size instead of refusing it.
    count = int_param(req, "_count")
    return FHIR_DEFAULT_COUNT if count is None or count <= 0 else min(count, FHIR_MAX_COUNT)


class FhirApi:
    """The /ws/fhir2/R4 endpoints; remembers each search so its pages can be fetched."""

    def __init__(self, store: Store, accounts: Accounts) -> None:
        self._store = store
        self._accounts = accounts
        self._searches: dict[str, list[str]] = {}

    def answer(self, req: Request, session: Session) -> Response:
        sub = req.path[len(FHIR) :]
        public = sub == "/metadata" or sub.startswith("/.well-known")
        if session.user is None and not public:
            creds = basic_credentials(req.headers.get("authorization"))
            # Unlike REST, a failed login is refused at once.
            if creds is None or creds == "invalid" or not self._accounts.authenticate(*creds):
                return html_page(401, "Not authenticated")
            session.user = creds[0]
        if req.method != "GET":
            return _operation_outcome(405, "not-supported", f"{req.method} is not supported")
        return self._route(req, sub)

    def _route(self, req: Request, sub: str) -> Response:
        if sub == "/metadata":
            return json_response(
                200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}, FHIR_JSON
            )
        if sub in ("", "/") and req.param("_getpages"):
            return self._page(req)
        if sub == "/Patient":
            return self._patient_search(req)
        if sub.startswith("/Patient/"):
            patient = self._store.patients.get(sub.removeprefix("/Patient/"))
            if patient is None or patient.voided:
                text = f"Resource Patient/{sub.removeprefix('/Patient/')} is not known"
                return _operation_outcome(404, "processing", text)
            return json_response(200, _patient_resource(patient, self._store.types), FHIR_JSON)
        return _operation_outcome(404, "not-supported", f"Unknown resource type '{sub.strip('/')}'")

    def _patient_search(self, req: Request) -> Response:
        # Repeating the parameter means AND; a comma inside one value means OR.
        groups = [value.split(",") for value in req.query.get("identifier", [])]
        ids = [set(value.split(",")) for value in req.query.get("_id", [])]
        try:
            ranges = [_date_range(value) for value in req.query.get("_lastUpdated", [])]
        except ValueError as exc:
            return _operation_outcome(400, "processing", str(exc))
        types = self._store.types
        patients = self._store.patients
        matched = {
            uuid
            for uuid in self._candidates(groups)
            if _matches(patients[uuid], groups, types)
            and all(uuid in group for group in ids)
            and all(low <= patients[uuid].last_updated <= high for low, high in ranges)
        }
        # Creation order, as when every patient was tested in turn; a pass over uuids is cheap.
        found = [uuid for uuid in patients if uuid in matched]
        search_id = str(uuidlib.uuid4())
        self._searches[search_id] = found
        return self._bundle(req, search_id, 0, _count(req))

    def _candidates(self, groups: list[list[str]]) -> Iterable[str]:
        """The uuids that may match: a match holds a value of the first group (any case)."""
        if not groups:
            return self._store.patients.keys()
        found: set[str] = set()
        for token in groups[0]:
            found |= self._store.uuids_with_id(token.rpartition("|")[2])
        return found

    def _page(self, req: Request) -> Response:
        search_id = req.param("_getpages") or ""
        if search_id not in self._searches:
            return _operation_outcome(410, "processing", f'Search ID "{search_id}" does not exist')
        offset = max(int_param(req, "_getpagesoffset") or 0, 0)
        return self._bundle(req, search_id, offset, _count(req))

    def _bundle(self, req: Request, search_id: str, offset: int, count: int) -> Response:
        found = self._searches[search_id]
        fhir_base = req.base + FHIR
        links = [{"relation": "self", "url": req.url + query_string(req)}]
        if offset + count < len(found):
            next_url = (
                f"{fhir_base}?_getpages={search_id}&_getpagesoffset={offset + count}"
                f"&_count={count}&_bundletype=searchset"
            )
            links.append({"relation": "next", "url": next_url})
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": str(uuidlib.uuid4()),
            "meta": {"lastUpdated": datetime.now(UTC).isoformat()},
            "type": "searchset",
            "total": len(found),
            "link": links,
        }
        entries = [
            {
                "fullUrl": f"{fhir_base}/Patient/{uuid}",
                "resource": _patient_resource(self._store.patients[uuid], self._store.types),
                "search": {"mode": "match"},
            }
            for uuid in found[offset : offset + count]
            if uuid in self._store.patients
        ]
        if entries:
            bundle["entry"] = entries
        return json_response(200, bundle, FHIR_JSON)
