"""A stand-in for an OpenMRS server's REST and FHIR APIs, for tests and local trials.

It answers the calls the service makes (patient lookup, attachment upload, list, void and
purge, session) with the URLs, status codes, bodies and quirks of a real OpenMRS 2.6-2.8 with
the attachments module. The quirks are the point: a fuzzy patient search that returns
neighbours, captions measured in UTF-16 units, a "Session timed out" 401 after which the
upload was stored anyway, and error bodies shaped by the REST module. Two generations of the
server stack are modelled: "A" (REST 2.4x, attachments 3.x, platform 2.6/2.7) and "B"
(REST 3.x, attachments 4.0, platform 2.8).

Tests seed state and inject faults through methods; every request is recorded. One lock
guards all state, so the seeding methods are safe to call while the server is running.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
import socket
import threading
import time
import uuid as uuidlib
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from email.message import Message
    from types import TracebackType

__all__ = [
    "ID_CARD_TYPE_UUID",
    "OPENMRS_ID_TYPE_UUID",
    "Identifier",
    "OpenMRSDouble",
    "RecordedRequest",
    "StoredAttachment",
]

OPENMRS_ID_TYPE_UUID = "05a29f94-c0ed-11e2-94be-8c13b969e334"
ID_CARD_TYPE_UUID = "b4143563-16cd-4439-b288-f83d61670fc8"

CONTEXT_PATH = "/openmrs"
_REST = "/ws/rest/v1/"
_FHIR = "/ws/fhir2/R4"
_JSON = "application/json;charset=UTF-8"
_FHIR_JSON = "application/fhir+json;charset=utf-8"

# Defaults of the global properties that shape the answers (attachments, REST, core).
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
DOWNSCALE_ABOVE_BYTES = 1_200_000
MAX_COMMENT_LENGTH = 255
DEFAULT_LIMIT = 50
ABSOLUTE_LIMIT = 100
MIN_SEARCH_CHARACTERS = 2
FAILED_LOGINS_BEFORE_LOCKOUT = 7
LOCKOUT_SECONDS = 300.0
FHIR_DEFAULT_COUNT = 10
FHIR_MAX_COUNT = 100
_DENIED_FILE_NAMES = frozenset({"eicar.txt"})
# The module records the part's MIME type only when its own extension map knows it;
# anything else (webp, json, csv, OOXML...) is stored as application/octet-stream.
_KNOWN_MIME_TYPES = frozenset(
    {
        "application/pdf",
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/bmp",
        "image/tiff",
        "text/plain",
        "text/html",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/zip",
        "audio/mpeg",
        "video/mp4",
    }
)
# Query parameters the REST module strips before it picks a search handler.
_SPECIAL_PARAMS = frozenset(
    {"v", "limit", "startIndex", "includeAll", "jsessionid", "s", "t", "totalCount"}
)
_TRUE_WORDS = frozenset({"true", "on", "yes", "1"})

_ADMIN_UUID = "45ce6c2e-dd5a-11e6-9d9c-0242ac150002"
_ADMIN_PERSON_UUID = "24252571-dd5a-11e6-9d9c-0242ac150002"
_SYSTEM_DEVELOPER_UUID = "8d94f852-c2cc-11de-8d13-0010c6dffd0f"

# "Class:line" codes as the REST error handler reports the throwing frame.
_CODE_AUTH = "org.openmrs.aop.AuthorizationAdvice:43"
_CODE_ATTACHMENT = "org.openmrs.module.attachments.rest.AttachmentResource:{line}"
_CODE_CRUD = "org.openmrs.module.webservices.rest.web.resource.impl.DelegatingCrudResource:{line}"
_CODE_CONTEXT = "org.openmrs.module.webservices.rest.web.RequestContext:{line}"
_CODE_RESTUTIL = "org.openmrs.module.webservices.rest.web.RestUtil:{line}"
_CODE_VALIDATE = "org.openmrs.validator.ValidateUtil:{line}"
_CODE_MISSING_PART = (
    "org.springframework.web.multipart.support.RequestPartServletServerHttpRequest:{line}"
)
_CODE_RESOURCE = "org.openmrs.module.webservices.rest.web.RestServiceImpl:{line}"
_CODE_METHOD = "org.springframework.web.servlet.mvc.method.RequestMappingInfoHandlerMapping:{line}"
_CODE_CONVERSION = "org.openmrs.module.webservices.rest.web.ConversionUtil:{line}"


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


@dataclass
class RecordedRequest:
    """One request as it arrived; status is 0 until answered, and stays 0 when dropped."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int = 0


# --------------------------------------------------------------------------------------------
# Internal state


@dataclass
class _IdType:
    uuid: str
    name: str


@dataclass
class _PatientId:
    uuid: str
    identifier: str
    type_uuid: str
    preferred: bool
    voided: bool


@dataclass
class _Patient:
    uuid: str
    name_uuid: str
    given: str
    family: str
    gender: str
    birthdate: date | None
    voided: bool
    created: datetime
    identifiers: list[_PatientId]

    @property
    def full_name(self) -> str:
        return f"{self.given} {self.family}".strip()

    def active_ids(self) -> list[_PatientId]:
        return [i for i in self.identifiers if not i.voided]

    def main_id(self) -> _PatientId | None:
        # The preferred active identifier, else the first active one (Patient.getPatientIdentifier).
        active = self.active_ids()
        return next((i for i in active if i.preferred), active[0] if active else None)

    def display(self) -> str:
        main = self.main_id()
        return "" if main is None else f"{main.identifier} - {self.full_name}"


@dataclass
class _Session:
    user: str | None = None


@dataclass
class _Account:
    failures: int = 0
    locked_at: float | None = None


# --------------------------------------------------------------------------------------------
# Errors and responses


class _RestError(Exception):
    """An exception as the REST module's error handler reports it (status, message, code)."""

    def __init__(
        self,
        status: int,
        message: str | None,
        code: str,
        *,
        reason: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.reason = reason
        self.body = body


def _not_supported() -> _RestError:
    return _RestError(
        400,
        None,
        _CODE_CRUD.format(line=519),
        reason="The Resource Does not Support the Requested Operation",
    )


def _not_found() -> _RestError:
    return _RestError(
        404, None, _CODE_CRUD.format(line=97), reason="Object with given uuid doesn't exist"
    )


def _attachment_error(status: int, message: str | None, line: int) -> _RestError:
    return _RestError(status, message, _CODE_ATTACHMENT.format(line=line))


def _not_logged_in(privilege: str) -> _RestError:
    return _RestError(
        401, f"Privileges required: {privilege}", _CODE_AUTH, reason="User is not logged in"
    )


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Close the connection without answering (the request's work is already done).
    drop: bool = False


def _json(status: int, payload: Any, content_type: str = _JSON) -> _Response:
    # Jackson writes compact JSON and leaves non-ASCII characters as they are.
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return _Response(status, body, content_type)


def _html_page(status: int, message: str) -> _Response:
    """A servlet container error page, which is what sendError() produces."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = f"HTTP Status {status} \u2013 {phrase}"  # Tomcat's en dash
    page = (
        f'<!doctype html><html lang="en"><head><title>{title}</title></head><body>'
        f'<h1>{title}</h1><hr class="line" /><p><b>Type</b> Status Report</p>'
        f"<p><b>Message</b> {escape(message)}</p>"
        f'<hr class="line" /><h3>Apache Tomcat/9.0.83</h3></body></html>'
    )
    return _Response(status, page.encode(), "text/html;charset=utf-8", [("Content-Language", "en")])


def _format_datetime(moment: datetime) -> str:
    """Java's yyyy-MM-dd'T'HH:mm:ss.SSSZ in a JVM running on UTC."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


def _now() -> datetime:
    # obs_datetime is a DATETIME column without fractions: what is read back has whole seconds.
    return datetime.now(UTC).replace(microsecond=0)


def _java_length(text: str) -> int:
    # Deliberately not shared with the client's own helper: the double is what checks it.
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------------------------
# Requests and multipart bodies


@dataclass(frozen=True)
class _Request:
    method: str
    path: str  # relative to the context path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    base: str  # scheme, host and context path as the client addressed them

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def url(self) -> str:
        return self.base + self.path


@dataclass(frozen=True)
class _Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def _header_param(message: Message, name: str, header: str) -> str | None:
    value = message.get_param(name, header=header)
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)


def _parse_multipart(content_type: str, body: bytes) -> list[_Part]:
    """Split a multipart/form-data body into parts, keeping each part's bytes exact."""
    boundary = _header_param(
        HeaderParser().parsestr(f"Content-Type: {content_type}\n\n"), "boundary", "content-type"
    )
    if not boundary:
        return []
    # Every delimiter but the first is preceded by CRLF; prefixing one makes them uniform.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(_part_from(head, data))
    return parts


def _part_from(head: bytes, data: bytes) -> _Part:
    # Browsers and httpx put raw UTF-8 in filename="..."; decode it as such.
    headers = HeaderParser().parsestr(head.decode("utf-8", "replace").strip() + "\n\n")
    return _Part(
        name=_header_param(headers, "name", "content-disposition"),
        filename=_header_param(headers, "filename", "content-disposition"),
        content_type=headers.get("content-type"),
        data=data,
    )


# --------------------------------------------------------------------------------------------
# Representations: ref / default / full / custom:(...)


@dataclass(frozen=True)
class _Field:
    name: str
    spec: _Spec | None


_Spec: TypeAlias = "str | tuple[_Field, ...]"


class _SpecParser:
    """Reads a custom representation such as ``(uuid,identifiers:(identifier,voided))``."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def parse(self) -> tuple[_Field, ...]:
        fields = self._list()
        if self._pos != len(self._text):
            raise ValueError(f"unexpected text at {self._pos}: {self._text[self._pos :]!r}")
        return fields

    def _list(self) -> tuple[_Field, ...]:
        self._expect("(")
        fields = [self._field()]
        while self._peek() == ",":
            self._pos += 1
            fields.append(self._field())
        self._expect(")")
        return tuple(fields)

    def _field(self) -> _Field:
        name = self._word()
        if self._peek() != ":":
            return _Field(name, None)
        self._pos += 1
        if self._peek() == "(":
            return _Field(name, self._list())
        return _Field(name, self._word())

    def _word(self) -> str:
        start = self._pos
        while self._pos < len(self._text) and self._text[self._pos] not in ",():":
            self._pos += 1
        word = self._text[start : self._pos].strip()
        if not word:
            raise ValueError(f"a property name is missing at {start}")
        return word

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise ValueError(f"expected {char!r} at {self._pos}")
        self._pos += 1


@dataclass(frozen=True)
class _Node:
    """Everything a resource could show; a view picks which properties, in which order.

    A view entry is a property name, or "name:subview" for a nested resource; "links:full"
    adds the link to the full representation, as default representations do.
    """

    uri: str
    alias: str
    props: Mapping[str, Any]
    views: Mapping[str, tuple[str, ...]]


def _links(node: _Node, *, with_full: bool) -> list[dict[str, str]]:
    links = [{"rel": "self", "uri": node.uri, "resourceAlias": node.alias}]
    if with_full:
        links.append({"rel": "full", "uri": node.uri + "?v=full", "resourceAlias": node.alias})
    return links


def _render(node: _Node, spec: _Spec) -> dict[str, Any]:
    if isinstance(spec, str):
        return _render_view(node, spec)
    out: dict[str, Any] = {}
    for wanted in spec:
        if wanted.name == "links":
            out["links"] = _links(node, with_full=False)
        elif wanted.name in node.props:
            # A nested resource named without a sub-representation is shown as "default".
            out[wanted.name] = _render_value(node.props[wanted.name], wanted.spec or "default")
        else:
            raise _RestError(
                400,
                f"Unknown property '{wanted.name}' on {node.alias}",
                _CODE_CONVERSION.format(line=426),
                reason="Unable to convert object into response content",
            )
    return out


def _render_view(node: _Node, view: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in node.views[view]:
        name, _, sub = entry.partition(":")
        if name == "links":
            out["links"] = _links(node, with_full=sub == "full")
        else:
            out[name] = _render_value(node.props[name], sub or "ref")
    return out


def _render_value(value: Any, spec: _Spec) -> Any:
    if isinstance(value, _Node):
        return _render(value, spec)
    if isinstance(value, list):
        return [_render_value(item, spec) for item in value]
    return value


_TYPE_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "uuid", "display", "name", "description", "format", "formatDescription", "required",
        "validator", "locationBehavior", "uniquenessBehavior", "retired", "links:full",
        "resourceVersion",
    ),
    "full": (
        "uuid", "display", "name", "description", "format", "formatDescription", "required",
        "validator", "locationBehavior", "uniquenessBehavior", "retired", "auditInfo", "links",
        "resourceVersion",
    ),
}  # fmt: skip
_IDENTIFIER_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "display", "uuid", "identifier", "identifierType:ref", "location", "preferred", "voided",
        "links:full", "resourceVersion",
    ),
    "full": (
        "display", "uuid", "identifier", "identifierType:ref", "location", "preferred", "voided",
        "auditInfo", "links", "resourceVersion",
    ),
}  # fmt: skip
_NAME_VIEWS = {
    "ref": ("uuid", "display", "links"),
    "default": (
        "display", "uuid", "givenName", "middleName", "familyName", "familyName2", "voided",
        "links:full", "resourceVersion",
    ),
    "full": (
        "display", "uuid", "givenName", "middleName", "familyName", "familyName2", "voided",
        "auditInfo", "links", "resourceVersion",
    ),
}  # fmt: skip
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


def _audit(base: str, created: datetime) -> dict[str, Any]:
    creator = {
        "uuid": _ADMIN_UUID,
        "display": "admin",
        "links": [
            {"rel": "self", "uri": f"{base}{_REST}user/{_ADMIN_UUID}", "resourceAlias": "user"}
        ],
    }
    return {
        "creator": creator,
        "dateCreated": _format_datetime(created),
        "changedBy": None,
        "dateChanged": None,
    }


def _type_node(kind: _IdType, base: str, created: datetime) -> _Node:
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
    uri = f"{base}{_REST}patientidentifiertype/{kind.uuid}"
    return _Node(uri, "patientidentifiertype", props, _TYPE_VIEWS)


def _identifier_node(ident: _PatientId, patient: _Patient, kind: _IdType, base: str) -> _Node:
    props = {
        "uuid": ident.uuid,
        "display": f"{kind.name} = {ident.identifier}",
        "identifier": ident.identifier,
        "identifierType": _type_node(kind, base, patient.created),
        "location": None,
        "preferred": ident.preferred,
        "voided": ident.voided,
        "auditInfo": _audit(base, patient.created),
        "resourceVersion": "1.8",
    }
    uri = f"{base}{_REST}patient/{patient.uuid}/identifier/{ident.uuid}"
    return _Node(uri, "identifier", props, _IDENTIFIER_VIEWS)


def _name_node(patient: _Patient, base: str) -> _Node:
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
    uri = f"{base}{_REST}person/{patient.uuid}/name/{patient.name_uuid}"
    return _Node(uri, "name", props, _NAME_VIEWS)


def _age(birthdate: date | None, today: date) -> int | None:
    if birthdate is None:
        return None
    before_birthday = (today.month, today.day) < (birthdate.month, birthdate.day)
    return today.year - birthdate.year - before_birthday


def _person_node(patient: _Patient, base: str) -> _Node:
    name = _name_node(patient, base)
    birth = patient.birthdate
    props = {
        "uuid": patient.uuid,
        "display": patient.full_name,
        "gender": patient.gender,
        "age": _age(birth, datetime.now(UTC).date()),
        "birthdate": None if birth is None else f"{birth.isoformat()}T00:00:00.000+0000",
        "birthdateEstimated": False,
        "dead": False,
        "deathDate": None,
        "causeOfDeath": None,
        "preferredName": name,
        "preferredAddress": None,
        "names": [name],
        "addresses": [],
        "attributes": [],
        "voided": patient.voided,
        "auditInfo": _audit(base, patient.created),
        "birthtime": None,
        "deathdateEstimated": False,
        "resourceVersion": "1.11",
    }
    return _Node(f"{base}{_REST}person/{patient.uuid}", "person", props, _PERSON_VIEWS)


def _patient_node(patient: _Patient, types: Mapping[str, _IdType], base: str) -> _Node:
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
        "auditInfo": _audit(base, patient.created),
        "resourceVersion": "1.8",
    }
    views = dict(_PATIENT_VIEWS)
    if patient.voided:
        # The reference representation flags voided patients, and only them.
        views["ref"] = ("uuid", "display", "voided", "links")
    return _Node(f"{base}{_REST}patient/{patient.uuid}", "patient", props, views)


# --------------------------------------------------------------------------------------------
# Patient search (the platform's generic search, and the identifier-prefix variant)


def _name_matches(patient: _Patient, tokens: Sequence[str]) -> bool:
    parts = [patient.given.lower(), patient.family.lower()]
    return all(any(token in part for part in parts) for token in tokens)


def _fuzzy_search(patients: Iterable[_Patient], query: str) -> list[_Patient]:
    """Identifier hits ("anywhere" n-gram mode, exact ones first), then name hits."""
    needle = query.strip().lower()
    if len(needle) < MIN_SEARCH_CHARACTERS:
        return []
    exact: list[_Patient] = []
    partial: list[_Patient] = []
    by_name: list[_Patient] = []
    for patient in patients:
        if patient.voided:
            continue
        values = [i.identifier.lower() for i in patient.active_ids()]
        if needle in values:
            exact.append(patient)
        elif any(needle in value for value in values):
            partial.append(patient)
        elif _name_matches(patient, needle.split()):
            by_name.append(patient)
    return exact + partial + by_name


def _prefix_search(patients: Iterable[_Patient], query: str, include_all: bool) -> list[_Patient]:
    # searchType=start is a SQL LIKE 'X%' that does not look at the identifier's voided flag.
    needle = query.lower()
    return [
        p
        for p in patients
        if (include_all or not p.voided)
        and any(i.identifier.lower().startswith(needle) for i in p.identifiers)
    ]


# --------------------------------------------------------------------------------------------
# Request context (representation and paging), shared by every REST read


@dataclass(frozen=True)
class _Context:
    spec: _Spec
    limit: int
    start: int
    total_count: bool


@dataclass(frozen=True)
class _Call:
    req: _Request
    user: str | None
    stale: bool  # the response is already a "Session timed out" 401


def _int_param(req: _Request, name: str) -> int | None:
    # The REST module ignores values it cannot parse as an integer.
    raw = req.param(name)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _representation(raw: str | None, default_view: str, generation: str) -> _Spec:
    if raw is None:
        return default_view
    if raw == "":
        raise _RestError(500, "?v=(empty string) is not allowed", _CODE_RESTUTIL.format(line=270))
    if raw == default_view and generation == "A":
        message = f"Do not specify ?v={raw} because it is the default behavior for this request"
        raise _RestError(500, message, _CODE_RESTUTIL.format(line=274))
    if raw in ("ref", "default", "full"):
        return raw
    if raw.startswith("custom:"):
        try:
            return _SpecParser(raw.removeprefix("custom:")).parse()
        except ValueError as exc:
            raise _RestError(500, str(exc), _CODE_CONVERSION.format(line=160)) from exc
    raise _RestError(
        400,
        f"Unknown representation: {raw}",
        _CODE_CONVERSION.format(line=112),
        reason="Unable to convert object into response content",
    )


def _request_context(req: _Request, default_view: str, generation: str) -> _Context:
    spec = _representation(req.param("v"), default_view, generation)
    limit = _int_param(req, "limit")
    if limit is not None and limit <= 0:
        message = "If you specify a number of results to return, it must be >0 and not null"
        raise _RestError(500, message, _CODE_CONTEXT.format(line=119))
    if limit is not None and limit > ABSOLUTE_LIMIT:
        message = f"Administrator has set absolute limit at {ABSOLUTE_LIMIT}"
        raise _RestError(500, message, _CODE_CONTEXT.format(line=121))
    start = _int_param(req, "startIndex") or 0
    total = (req.param("totalCount") or "").lower() == "true"
    return _Context(spec, limit or DEFAULT_LIMIT, max(start, 0), total)


def _query_without_start(req: _Request) -> str:
    # The REST module rebuilds the query as "k=v&" pairs, URL-encoding only the values.
    pairs = [
        f"{name}={quote_plus(value, safe='*')}&"
        for name, values in req.query.items()
        if name != "startIndex"
        for value in values
    ]
    return "?" + "".join(pairs)


def _page(req: _Request, ctx: _Context, items: Sequence[Any], render: Any) -> dict[str, Any]:
    """One page of results with next/prev links, as the REST module's paging builds them."""
    chosen = items[ctx.start : ctx.start + ctx.limit]
    body: dict[str, Any] = {"results": [render(item) for item in chosen]}
    links = []
    if len(items) > ctx.start + ctx.limit:
        uri = f"{req.url}{_query_without_start(req)}startIndex={ctx.start + ctx.limit}"
        links.append({"rel": "next", "uri": uri})
    if ctx.start > 0:
        prev = max(ctx.start - ctx.limit, 0)
        suffix = f"startIndex={prev}" if prev > 0 else ""
        links.append({"rel": "prev", "uri": f"{req.url}{_query_without_start(req)}{suffix}"})
    if links:
        body["links"] = links
    if ctx.total_count:
        body["totalCount"] = len(items)
    return body


# --------------------------------------------------------------------------------------------
# Attachments as the REST module shows them


def _content_family(mime_type: str) -> str:
    if mime_type.startswith("image/"):
        return "IMAGE"
    return "PDF" if mime_type == "application/pdf" else "OTHER"


def _split_extension(filename: str) -> tuple[str, str]:
    # An extension is what follows the last dot, unless that dot is first or last.
    stem, dot, ext = filename.rpartition(".")
    if not dot or not stem or not ext:
        return filename, ""
    return stem, ext


def _saved_name(att: StoredAttachment) -> str:
    """Generation A's file on disk: <title>_<obs uuid>.<ext>, 'dat' when there is none."""
    stem, ext = _split_extension(att.filename)
    return f"{stem}_{att.uuid}.{ext or 'dat'}"


def _listed_filename(att: StoredAttachment, generation: str) -> str:
    if generation == "B":
        return att.filename
    stem, ext = _split_extension(att.filename)
    return f"{stem}.{ext or 'dat'}"


def _attachment_json(att: StoredAttachment, base: str, generation: str) -> dict[str, Any]:
    uri = f"{base}{_REST}attachment/{att.uuid}"
    return {
        "uuid": att.uuid,
        "dateTime": _format_datetime(att.obs_datetime),
        "filename": _listed_filename(att, generation),
        "comment": att.comment,
        "bytesMimeType": att.mime_type,
        "bytesContentFamily": _content_family(att.mime_type),
        "links": [{"rel": "self", "uri": uri, "resourceAlias": "attachment"}],
    }


def _is_decodable_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # Pillow raises many kinds; any of them means "cannot decode"
        return False
    return True


def _caption_too_long(generation: str) -> _RestError:
    reason = "This value exceeds the maximum length of 255 permitted for this field."
    if generation == "B":
        body = {
            "error": {
                "message": "Invalid Submission",
                "code": "webservices.rest.error.invalid.submission",
                "globalErrors": [],
                "fieldErrors": {
                    "comment": [{"code": "error.exceededMaxLengthOfField", "message": reason}]
                },
            }
        }
        return _RestError(400, "Invalid Submission", "", body=body)
    message = f"'obs id is null' failed to validate with reason: comment: {reason}"
    return _RestError(500, message, _CODE_VALIDATE.format(line=193))


# --------------------------------------------------------------------------------------------
# FHIR


def _fhir_identifier_matches(patient: _Patient, token: str, types: Mapping[str, _IdType]) -> bool:
    # "TYPE|VALUE" compares the identifier type's name; the database collation ignores case.
    system, bar, value = token.rpartition("|")
    for ident in patient.active_ids():
        if ident.identifier.lower() != value.lower():
            continue
        if not bar or not system or types[ident.type_uuid].name.lower() == system.lower():
            return True
    return False


def _fhir_patient(patient: _Patient, types: Mapping[str, _IdType]) -> dict[str, Any]:
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
        "meta": {"lastUpdated": patient.created.isoformat()},
        "identifier": identifiers,
        "active": not patient.voided,
        "name": [{"id": patient.name_uuid, "family": patient.family, "given": [patient.given]}],
        "gender": gender,
        "deceasedBoolean": False,
    }
    if patient.birthdate is not None:
        resource["birthDate"] = patient.birthdate.isoformat()
    return resource


def _operation_outcome(status: int, code: str, text: str) -> _Response:
    issue = {"severity": "error", "code": code, "diagnostics": text}
    return _json(status, {"resourceType": "OperationOutcome", "issue": [issue]}, _FHIR_JSON)


def _basic_credentials(header: str | None) -> tuple[str, str] | Literal["invalid"] | None:
    """The user and password of a Basic header; None when there is none."""
    if header is None or not header.startswith("Basic"):
        return None
    token = header[len("Basic") :].strip()
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "invalid"
    if not decoded or ":" not in decoded:
        return "invalid"
    # Java's split(":") then [0] and [1]: a password containing ':' is cut at that colon.
    parts = decoded.split(":")
    return parts[0], parts[1] if len(parts) > 1 else ""


# --------------------------------------------------------------------------------------------
# The double


class OpenMRSDouble:
    """An OpenMRS server on loopback, with seeded data, fault injection and a request log."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "Admin123",  # noqa: S107 - the reference distro's demo login
        generation: Literal["A", "B"] = "A",
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.generation: Literal["A", "B"] = generation
        # Seconds slept before each request is handled; may be changed at any time.
        self.latency = latency
        self._username = username
        self._password = password
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._created = _now()
        self._types: dict[str, _IdType] = {}
        self._patients: dict[str, _Patient] = {}
        self._attachments: dict[str, StoredAttachment] = {}
        self._sessions: dict[str, _Session] = {}
        self._accounts: dict[str, _Account] = {}
        self._requests: list[RecordedRequest] = []
        self._fhir_searches: dict[str, list[str]] = {}
        self._fail_uploads = 0
        self._fail_status = 500
        self._drop_uploads = 0
        self._outage: int | None = None
        self.add_identifier_type("OpenMRS ID", OPENMRS_ID_TYPE_UUID)
        self.add_identifier_type("ID Card", ID_CARD_TYPE_UUID)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the configured host and port (0 picks a free one) in a background thread."""
        if self._server is not None:
            return
        self._server = _Server((self._host, self._port), _Handler, self)
        self._thread = threading.Thread(
            # A short poll interval keeps stop() quick; the default makes it take 0.5 s.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openmrs-double",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections, so clients see the server go away."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL including the context path, e.g. http://127.0.0.1:8080/openmrs."""
        if self._server is None:
            raise RuntimeError("the OpenMRS double is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{CONTEXT_PATH}"

    # -- seeding -------------------------------------------------------------------------

    def add_identifier_type(self, name: str, uuid: str | None = None) -> str:
        """Create a patient identifier type; returns its uuid."""
        with self._lock:
            if any(t.name == name for t in self._types.values()):
                raise ValueError(f"identifier type {name!r} already exists")
            kind = _IdType(uuid or str(uuidlib.uuid4()), name)
            self._types[kind.uuid] = kind
            return kind.uuid

    def add_patient(
        self,
        identifiers: Sequence[Identifier | str],
        *,
        given: str = "Test",
        family: str = "Patient",
        voided: bool = False,
        uuid: str | None = None,
        gender: str = "U",
        birthdate: date | None = None,
    ) -> str:
        """Create a patient; a plain string is an "OpenMRS ID". Returns the patient's uuid."""
        with self._lock:
            idents = [self._new_identifier(i) for i in identifiers]
            if idents and not any(i.preferred for i in idents):
                # OpenMRS always has one preferred identifier; the first one by default.
                idents[0].preferred = True
            patient = _Patient(
                uuid=uuid or str(uuidlib.uuid4()),
                name_uuid=str(uuidlib.uuid4()),
                given=given,
                family=family,
                gender=gender,
                birthdate=birthdate,
                voided=voided,
                created=_now(),
                identifiers=idents,
            )
            self._patients[patient.uuid] = patient
            return patient.uuid

    def _new_identifier(self, spec: Identifier | str) -> _PatientId:
        ident = Identifier(spec) if isinstance(spec, str) else spec
        kind = next((t for t in self._types.values() if t.name == ident.type_name), None)
        if kind is None:
            raise ValueError(f"unknown identifier type {ident.type_name!r}")
        return _PatientId(
            str(uuidlib.uuid4()), ident.identifier, kind.uuid, ident.preferred, ident.voided
        )

    def void_identifier(self, patient_uuid: str, identifier: str) -> None:
        """Void every identifier of the patient with that value."""
        with self._lock:
            for ident in self._patients[patient_uuid].identifiers:
                if ident.identifier == identifier:
                    ident.voided = True

    def add_attachment(
        self,
        patient_uuid: str,
        comment: str | None,
        *,
        filename: str = "seed.png",
        mime_type: str = "image/png",
        data: bytes = b"",
        obs_datetime: datetime | None = None,
    ) -> str:
        """Store an attachment directly, as if uploaded earlier; returns its uuid."""
        with self._lock:
            if patient_uuid not in self._patients:
                raise ValueError(f"unknown patient {patient_uuid}")
            return self._store_attachment(
                patient_uuid, comment, filename, mime_type, data, obs_datetime or _now()
            )

    def _store_attachment(
        self,
        patient_uuid: str,
        comment: str | None,
        filename: str,
        mime_type: str,
        data: bytes,
        obs_datetime: datetime,
    ) -> str:
        att = StoredAttachment(
            uuid=str(uuidlib.uuid4()),
            patient_uuid=patient_uuid,
            comment=comment,
            filename=filename,
            mime_type=mime_type,
            data=data,
            obs_datetime=obs_datetime,
            voided=False,
            downscaled=mime_type.startswith("image/") and len(data) > DOWNSCALE_ABOVE_BYTES,
        )
        self._attachments[att.uuid] = att
        return att.uuid

    def attachments(
        self, patient_uuid: str | None = None, *, include_voided: bool = False
    ) -> list[StoredAttachment]:
        """Copies of the stored attachments, newest first (the server's listing order)."""
        with self._lock:
            return [replace(a) for a in self._newest_first(patient_uuid, include_voided)]

    def _newest_first(
        self, patient_uuid: str | None, include_voided: bool
    ) -> list[StoredAttachment]:
        # Ties on obs_datetime (whole seconds) put the later upload first.
        ranked = sorted(
            enumerate(self._attachments.values()),
            key=lambda pair: (pair[1].obs_datetime, pair[0]),
            reverse=True,
        )
        return [
            att
            for _, att in ranked
            if (patient_uuid is None or att.patient_uuid == patient_uuid)
            and (include_voided or not att.voided)
        ]

    # -- fault injection -----------------------------------------------------------------

    def fail_next_uploads(self, count: int, status: int = 500) -> None:
        """Answer the next `count` uploads with `status` and an error body; store nothing."""
        with self._lock:
            self._fail_uploads = count
            self._fail_status = status

    def drop_after_commit(self, count: int) -> None:
        """Store the next `count` successful uploads, then close the socket without answering."""
        with self._lock:
            self._drop_uploads = count

    def expire_sessions(self) -> None:
        """Make every existing JSESSIONID stale, as after a session timeout or a restart."""
        with self._lock:
            self._sessions.clear()

    def set_outage(self, status: int | None) -> None:
        """While set, answer every request with this status and an HTML page; None ends it."""
        with self._lock:
            self._outage = status

    # -- observation ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the request log, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count_requests(self, method: str | None = None, path_prefix: str = "") -> int:
        """How many requests match; the path is relative to the context path."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
            )

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def failed_logins(self, username: str) -> int:
        with self._lock:
            account = self._accounts.get(username)
            return 0 if account is None else account.failures

    def is_locked(self, username: str) -> bool:
        with self._lock:
            account = self._accounts.get(username)
            return account is not None and self._lock_active(account)

    # -- request entry (called by the HTTP handler) --------------------------------------

    def _record(self, method: str, path: str, query: dict[str, list[str]]) -> RecordedRequest:
        relative = path.removeprefix(CONTEXT_PATH) if path.startswith(CONTEXT_PATH + "/") else path
        record = RecordedRequest(method, relative, query)
        with self._lock:
            self._requests.append(record)
        return record

    def _finish(self, record: RecordedRequest, response: _Response) -> None:
        with self._lock:
            record.status = 0 if response.drop else response.status

    def _answer(self, req: _Request) -> _Response:
        with self._lock:
            if self._outage is not None:
                return _html_page(self._outage, "The server is temporarily unavailable")
            if not (req.path.startswith("/ws/rest/") or req.path.startswith(_FHIR)):
                return _html_page(404, f"The requested resource [{req.path}] is not available")
            session, new_id, stale = self._session_for(req)
            if req.path.startswith("/ws/rest/"):
                response = self._rest_entry(req, session, stale)
            else:
                response = self._fhir_entry(req, session)
            if new_id is not None:
                cookie = f"JSESSIONID={new_id}; Path={CONTEXT_PATH}; HttpOnly"
                response.headers.append(("Set-Cookie", cookie))
            return response

    def _session_for(self, req: _Request) -> tuple[_Session, str | None, bool]:
        """The request's session; a missing or stale cookie gets a new one (set on the reply)."""
        sent = _cookie(req.headers.get("cookie"), "JSESSIONID")
        if sent is not None and sent in self._sessions:
            return self._sessions[sent], None, False
        new_id = secrets.token_hex(16).upper()
        self._sessions[new_id] = _Session()
        return self._sessions[new_id], new_id, sent is not None

    # -- authentication ------------------------------------------------------------------

    def _lock_active(self, account: _Account) -> bool:
        return (
            account.locked_at is not None
            and time.monotonic() - account.locked_at <= LOCKOUT_SECONDS
        )

    def _authenticate(self, username: str, password: str) -> bool:
        """The platform's login: counts failures of a known user and locks it out."""
        if username != self._username:
            return False  # failures are only counted against an existing account
        account = self._accounts.setdefault(username, _Account())
        if account.locked_at is not None:
            if not self._lock_active(account):
                account.failures, account.locked_at = 0, None
            else:
                # Every attempt during a lockout, even a correct one, restarts the wait.
                account.locked_at = time.monotonic()
                return False
        if password == self._password:
            account.failures = 0
            return True
        account.failures += 1
        if account.failures >= FAILED_LOGINS_BEFORE_LOCKOUT:
            account.locked_at = time.monotonic()
        return False

    def _basic_login(self, req: _Request, session: _Session) -> _Response | None:
        """REST filter: Basic credentials log an unauthenticated session in, silently or not."""
        if session.user is not None:
            return None  # an authenticated session wins over whatever Basic header is sent
        creds = _basic_credentials(req.headers.get("authorization"))
        if creds == "invalid":
            return _html_page(400, "Invalid credentials provided")
        if creds is not None and self._authenticate(*creds):
            session.user = creds[0]
        return None

    # -- REST ----------------------------------------------------------------------------

    def _rest_entry(self, req: _Request, session: _Session, stale: bool) -> _Response:
        refused = self._basic_login(req, session)
        call = _Call(req, session.user, stale)
        if stale:
            # The filter has already sent "Session timed out" but lets the request go on:
            # the controller runs (an upload is stored) and its answer is lost.
            if refused is None:
                self._rest_call(call)
            return _html_page(401, "Session timed out")
        return refused or self._rest_call(call)

    def _rest_call(self, call: _Call) -> _Response:
        try:
            return self._rest_route(call)
        except _RestError as err:
            return self._error_response(call.req, err)

    def _error_response(self, req: _Request, err: _RestError) -> _Response:
        if err.body is not None:
            response = _json(err.status, err.body)
        else:
            inner = "null" if err.message is None else err.message
            text = f"[{inner}]" if err.reason is None else f"{err.reason} [{inner}]"
            error: dict[str, Any] = {"message": text, "code": err.code, "detail": ""}
            if self.generation == "B":
                error["rawMessage"] = err.message
                error["translatedMessage"] = err.message
            response = _json(err.status, {"error": error})
        if err.status == 401 and req.headers.get("disable-www-authenticate") != "true":
            realm = f'Basic realm="OpenMRS at {CONTEXT_PATH}/ws/rest/"'
            response.headers.append(("WWW-Authenticate", realm))
        return response

    def _rest_route(self, call: _Call) -> _Response:
        path = call.req.path
        if not path.startswith(_REST):
            raise _RestError(404, f"Unknown resource: {path}", _CODE_RESOURCE.format(line=172))
        resource, _, rest = path[len(_REST) :].partition("/")
        routes = {
            "session": self._session_resource,
            "patient": self._patient_resource,
            "patientidentifiertype": self._type_resource,
            "attachment": self._attachment_resource,
        }
        handler = routes.get(resource)
        if handler is None:
            raise _RestError(
                404, f"Unknown resource: v1/{resource}", _CODE_RESOURCE.format(line=172)
            )
        return handler(call, rest)

    def _method_not_allowed(self, call: _Call) -> _RestError:
        message = f"Request method '{call.req.method}' not supported"
        return _RestError(405, message, _CODE_METHOD.format(line=213))

    def _require(self, call: _Call, privilege: str) -> None:
        if call.user is None:
            raise _not_logged_in(privilege)

    # session

    def _session_resource(self, call: _Call, rest: str) -> _Response:
        if rest:
            raise _not_found()
        if call.req.method == "DELETE":
            sent = _cookie(call.req.headers.get("cookie"), "JSESSIONID")
            self._sessions.pop(sent or "", None)
            return _Response(204)
        if call.req.method != "GET":
            raise self._method_not_allowed(call)
        body: dict[str, Any] = {"authenticated": call.user is not None, "locale": "en"}
        body["allowedLocales"] = ["en", "es", "fr", "it", "pt"]
        if call.user is not None:
            body["user"] = self._user_json(call.req.base)
            body["sessionLocation"] = None
            body["currentProvider"] = None
        return _json(200, body)

    def _user_json(self, base: str) -> dict[str, Any]:
        def link(kind: str, uuid: str) -> list[dict[str, str]]:
            return [{"rel": "self", "uri": f"{base}{_REST}{kind}/{uuid}", "resourceAlias": kind}]

        role = {"uuid": _SYSTEM_DEVELOPER_UUID, "display": "System Developer"}
        return {
            "uuid": _ADMIN_UUID,
            "display": self._username,
            "username": self._username,
            "systemId": self._username,
            "userProperties": {},
            "person": {"uuid": _ADMIN_PERSON_UUID, "display": "Super User"},
            "privileges": [],
            "roles": [{**role, "name": "System Developer"}],
            "links": link("user", _ADMIN_UUID),
        }

    # patients

    def _patient_resource(self, call: _Call, rest: str) -> _Response:
        if call.req.method != "GET":
            raise self._method_not_allowed(call)
        if rest:
            ctx = _request_context(call.req, "default", self.generation)
            self._require(call, "Get Patients")
            patient = self._patients.get(rest)
            if patient is None:
                raise _not_found()
            return _json(200, _render(self._patient_node(call.req, patient), ctx.spec))
        ctx = _request_context(call.req, "ref", self.generation)
        found = self._patient_search(call)
        body = _page(
            call.req, ctx, found, lambda p: _render(self._patient_node(call.req, p), ctx.spec)
        )
        return _json(200, body)

    def _patient_node(self, req: _Request, patient: _Patient) -> _Node:
        return _patient_node(patient, self._types, req.base)

    def _patient_search(self, call: _Call) -> list[_Patient]:
        """Pick the search the REST module would pick from the non-special parameters."""
        params = set(call.req.query) - _SPECIAL_PARAMS
        if not params:
            raise _not_supported()
        self._require(call, "Get Patients")
        patients = self._patients.values()
        if params <= {"identifier", "searchType"} and "identifier" in params:
            query = call.req.param("identifier") or ""
            if call.req.param("searchType") == "start":
                include_all = (call.req.param("includeAll") or "").lower() == "true"
                return _prefix_search(patients, query, include_all)
            return _fuzzy_search(patients, query)
        # No handler fits: the resource's own search, which only reads q.
        q = call.req.param("q")
        return [] if q is None else _fuzzy_search(patients, q)

    def _type_resource(self, call: _Call, rest: str) -> _Response:
        if call.req.method != "GET":
            raise self._method_not_allowed(call)
        base = call.req.base
        if rest:
            ctx = _request_context(call.req, "default", self.generation)
            self._require(call, "Get Identifier Types")
            # A uuid, or failing that a name.
            kind = self._types.get(rest) or next(
                (t for t in self._types.values() if t.name == rest), None
            )
            if kind is None:
                raise _not_found()
            return _json(200, _render(_type_node(kind, base, self._created), ctx.spec))
        ctx = _request_context(call.req, "ref", self.generation)
        self._require(call, "Get Identifier Types")
        # ?q= is not implemented for this resource: it answers an empty list.
        kinds = [] if "q" in call.req.query else list(self._types.values())
        body = _page(
            call.req, ctx, kinds, lambda t: _render(_type_node(t, base, self._created), ctx.spec)
        )
        return _json(200, body)

    # attachments

    def _attachment_resource(self, call: _Call, rest: str) -> _Response:
        uuid, _, sub = rest.partition("/")
        method = call.req.method
        if not uuid and method == "POST":
            return self._upload(call)
        if not uuid and method == "GET":
            return self._list_attachments(call)
        if uuid and sub == "bytes" and method == "GET":
            return self._attachment_bytes(call, uuid)
        if uuid and not sub and method == "GET":
            return self._get_attachment(call, uuid)
        if uuid and not sub and method == "DELETE":
            return self._delete_attachment(call, uuid)
        if uuid and sub:
            raise _not_found()
        raise self._method_not_allowed(call)

    def _find_attachment(self, uuid: str) -> StoredAttachment:
        att = self._attachments.get(uuid)
        if att is None:
            # getByUniqueId dereferences the missing obs: a NullPointerException, so 500.
            raise _attachment_error(500, None, 104)
        return att

    def _get_attachment(self, call: _Call, uuid: str) -> _Response:
        _request_context(call.req, "default", self.generation)
        self._require(call, "Get Observations")
        att = self._find_attachment(uuid)
        body = _attachment_json(att, call.req.base, self.generation)
        body["resourceVersion"] = "1.8"
        return _json(200, body)

    def _attachment_bytes(self, call: _Call, uuid: str) -> _Response:
        self._require(call, "Get Observations")
        att = self._find_attachment(uuid)
        family = _content_family(att.mime_type)
        thumbnail = call.req.param("view") == "complexdata.view.thumbnail"
        # A thumbnail of a non-image is empty; images are served as stored (no real scaling).
        data = b"" if thumbnail and family != "IMAGE" else att.data
        name = _saved_name(att).replace(" ", "").replace(",", "")
        if self.generation == "B":
            name = att.filename
        ext = _split_extension(name)[1] or "bin"
        headers = [("Content-Family", family), ("File-Name", name), ("File-Ext", ext)]
        return _Response(200, data, att.mime_type, headers)

    def _delete_attachment(self, call: _Call, uuid: str) -> _Response:
        self._require(call, "Get Observations")
        att = self._find_attachment(uuid)
        if (call.req.param("purge") or "").lower() in _TRUE_WORDS:
            del self._attachments[att.uuid]
        else:
            att.voided = True
        return _Response(204)

    def _list_attachments(self, call: _Call) -> _Response:
        req = call.req
        ctx = _request_context(req, "ref", self.generation)
        if not set(req.query) - _SPECIAL_PARAMS:
            raise _not_supported()  # no search parameter at all: getAll, not implemented
        self._require(call, "Get Patients")
        patient_uuid = req.param("patient")
        if patient_uuid is None or patient_uuid not in self._patients:
            message = "A patient parameter must be provided when searching the attachments."
            raise _attachment_error(400, message, 312)
        include_voided = (req.param("includeVoided") or "").lower() == "true"
        found = self._newest_first(patient_uuid, include_voided)
        # Every stored attachment is encounterless; includeEncounterless decides if they count.
        flag = req.param("includeEncounterless")
        if flag is not None and flag != "only" and flag.lower() not in _TRUE_WORDS:
            found = []
        body = _page(req, ctx, found, lambda a: _attachment_json(a, req.base, self.generation))
        return _json(200, body)

    def _form_value(self, call: _Call, parts: Sequence[_Part], name: str) -> str | None:
        # request.getParameter: the query string first, then the multipart text fields.
        value = call.req.param(name)
        if value is not None:
            return value
        part = next((p for p in parts if p.name == name and p.filename is None), None)
        return None if part is None else part.data.decode("utf-8", "replace")

    def _upload(self, call: _Call) -> _Response:
        content_type = call.req.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/"):
            raise _not_supported()  # the generic JSON create, which attachments do not offer
        parts = _parse_multipart(content_type, call.req.body)
        # A part only binds to MultipartFile when it carries a filename.
        file = next((p for p in parts if p.name == "file" and p.filename is not None), None)
        if file is None:
            message = "Required request part 'file' is not present"
            raise _RestError(500, message, _CODE_MISSING_PART.format(line=68))
        self._require(call, "Get Patients")
        if self._fail_uploads > 0 and not call.stale:
            self._fail_uploads -= 1
            message = f"Injected failure ({self._fail_status})"
            raise _RestError(self._fail_status, message, _CODE_ATTACHMENT.format(line=160))
        patient = self._patients.get(self._form_value(call, parts, "patient") or "")
        caption = self._form_value(call, parts, "fileCaption")
        part_type = (file.content_type or "application/octet-stream").split(";")[0].strip()
        self._validate_upload(file, part_type, patient, caption)
        assert patient is not None  # checked by _validate_upload
        mime = part_type if part_type in _KNOWN_MIME_TYPES else "application/octet-stream"
        filename = file.filename or ""
        if self.generation == "B":
            filename = filename.replace("|", "_")
        new_uuid = self._store_attachment(patient.uuid, caption, filename, mime, file.data, _now())
        if self._drop_uploads > 0 and not call.stale:
            self._drop_uploads -= 1
            return _Response(0, drop=True)
        stored = self._attachments[new_uuid]
        body = {
            "uuid": new_uuid,
            "comment": caption,
            "obsDatetime": _format_datetime(stored.obs_datetime),
        }
        return _json(201, body)

    def _validate_upload(
        self, file: _Part, part_type: str, patient: _Patient | None, caption: str | None
    ) -> None:
        """The module's checks, in its order; the caption is only checked when the obs is saved."""
        if len(file.data) > MAX_UPLOAD_BYTES:
            raise _attachment_error(400, "The file exceeds the maximum size", 170)
        if (file.filename or "").lower() in _DENIED_FILE_NAMES:
            raise _attachment_error(400, "The file name is not valid", 186)
        if patient is None:
            message = "A patient parameter must be provided when uploading an attachment."
            raise _attachment_error(400, message, 191)
        if part_type.startswith("image/") and not _is_decodable_image(file.data):
            raise _attachment_error(400, "The file has invalid content", 210)
        if caption is not None and _java_length(caption) > MAX_COMMENT_LENGTH:
            raise _caption_too_long(self.generation)

    # -- FHIR ----------------------------------------------------------------------------

    def _fhir_entry(self, req: _Request, session: _Session) -> _Response:
        sub = req.path[len(_FHIR) :]
        public = sub == "/metadata" or sub.startswith("/.well-known")
        if session.user is None and not public:
            creds = _basic_credentials(req.headers.get("authorization"))
            # Unlike REST, a failed login is refused at once.
            if creds is None or creds == "invalid" or not self._authenticate(*creds):
                return _html_page(401, "Not authenticated")
            session.user = creds[0]
        if req.method != "GET":
            return _operation_outcome(405, "not-supported", f"{req.method} is not supported")
        if sub == "/metadata":
            return _json(
                200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}, _FHIR_JSON
            )
        if sub in ("", "/") and req.param("_getpages"):
            return self._fhir_page(req)
        if sub == "/Patient":
            return self._fhir_patient_search(req)
        if sub.startswith("/Patient/"):
            patient = self._patients.get(sub.removeprefix("/Patient/"))
            if patient is None or patient.voided:
                text = f"Resource Patient/{sub.removeprefix('/Patient/')} is not known"
                return _operation_outcome(404, "processing", text)
            return _json(200, _fhir_patient(patient, self._types), _FHIR_JSON)
        return _operation_outcome(404, "not-supported", f"Unknown resource type '{sub.strip('/')}'")

    def _fhir_patient_search(self, req: _Request) -> _Response:
        # Repeating the parameter means AND; a comma inside one value means OR.
        groups = [value.split(",") for value in req.query.get("identifier", [])]
        found = [
            p.uuid
            for p in self._patients.values()
            if not p.voided
            and all(any(_fhir_identifier_matches(p, t, self._types) for t in g) for g in groups)
        ]
        search_id = str(uuidlib.uuid4())
        self._fhir_searches[search_id] = found
        return self._fhir_bundle(req, search_id, 0, _fhir_count(req))

    def _fhir_page(self, req: _Request) -> _Response:
        search_id = req.param("_getpages") or ""
        if search_id not in self._fhir_searches:
            return _operation_outcome(410, "processing", f'Search ID "{search_id}" does not exist')
        offset = max(_int_param(req, "_getpagesoffset") or 0, 0)
        return self._fhir_bundle(req, search_id, offset, _fhir_count(req))

    def _fhir_bundle(self, req: _Request, search_id: str, offset: int, count: int) -> _Response:
        found = self._fhir_searches[search_id]
        fhir_base = req.base + _FHIR
        links = [{"relation": "self", "url": req.url + _query_string(req)}]
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
                "resource": _fhir_patient(self._patients[uuid], self._types),
                "search": {"mode": "match"},
            }
            for uuid in found[offset : offset + count]
            if uuid in self._patients
        ]
        if entries:
            bundle["entry"] = entries
        return _json(200, bundle, _FHIR_JSON)


def _fhir_count(req: _Request) -> int:
    # HAPI clamps _count to the maximum page size instead of refusing it.
    count = _int_param(req, "_count")
    return FHIR_DEFAULT_COUNT if count is None or count <= 0 else min(count, FHIR_MAX_COUNT)


def _query_string(req: _Request) -> str:
    pairs = [f"{quote(k)}={quote(v)}" for k, values in req.query.items() for v in values]
    return "?" + "&".join(pairs) if pairs else ""


def _cookie(header: str | None, name: str) -> str | None:
    for pair in (header or "").split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            return value.strip('"')
    return None


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], double: OpenMRSDouble
    ) -> None:
        self.double = double
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    # An idle kept-alive connection is closed after this long, as Tomcat does.
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.double._lock:
            self.server.double._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.double._lock:
            self.server.double._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the request log instead."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        double = self.server.double
        body = self._read_body()
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        record = double._record(self.command, split.path, query)
        if double.latency > 0:
            time.sleep(double.latency)
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        headers = {name.lower(): value for name, value in self.headers.items()}
        # Paths outside the context path get a marker no route matches, so they answer 404.
        relative = split.path.removeprefix(CONTEXT_PATH)
        if not split.path.startswith(CONTEXT_PATH + "/"):
            relative = "/__outside_context__" + split.path
        req = _Request(self.command, relative, query, headers, body, f"http://{host}{CONTEXT_PATH}")
        response = double._answer(req)
        double._finish(record, response)
        if response.drop:
            self.close_connection = True
            return
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.content_type is not None:
            self.send_header("Content-Type", response.content_type)
        if response.status != 204:
            # 204 carries no body and, per RFC 9110, no Content-Length either.
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status != 204:
            self.wfile.write(response.body)
