"""OpenMRS REST client: exact patient lookup, attachments list / upload / void.

Two traps of the real server shape this module:
- a stale JSESSIONID gets 401 even with good Basic credentials, and the request may have run
  anyway; so cookies are dropped on 401, reads are sent again, and an upload is reported as
  "outcome unknown" for the caller to verify instead of being sent twice;
- wrong credentials are counted towards a lockout after 7 failures; so they are checked once
  (`check_credentials`) and a refusal is final;
- behind single sign-on (oauth2login), whatever lacks a valid token is redirected to
  /oauth2login; so that redirect is an authentication failure, a token turned down is renewed
  once (docs/openmrs-sso.md), and redirects are never followed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from typing import Any
from urllib.parse import quote

import httpx

from orthanc_openmrs.auth import Auth, BasicAuth
from orthanc_openmrs.errors import OpenMRSAuthError, OpenMRSError, UploadOutcomeUnknown
from orthanc_openmrs.models import (
    Attachment,
    OpenMRSModule,
    OpenMRSPatient,
    OpenMRSUser,
    PatientChange,
    PatientIdentifier,
    Preview,
)
from orthanc_openmrs.transport import (
    RequestObserver,
    ThreadClients,
    Verify,
    client_transport,
    describe,
    unreachable,
)

REST = "/ws/rest/v1"
FHIR = "/ws/fhir2/R4"
# OpenMRS's REST patient search answers nothing for queries shorter than the global property
# minSearchCharacters (default 2); FHIR's identifier search has no minimum.
REST_MIN_SEARCH = 2
PAGE = 100  # the server's absolute maximum per page; more gives a 500
# identifiers and names are limited to non-voided ones by the server; voided is asked for all
# the same. The person's gender, birth date and family names are for the demographic check.
_PATIENT_REP = (
    "custom:(uuid,display,voided,identifiers:(identifier,voided,identifierType:(uuid,name)),"
    "person:(gender,birthdate,birthdateEstimated,names:(familyName,familyName2)))"
)
# FHIR's gender codes, as fhir2 translates OpenMRS's.
_FHIR_GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


class OpenMRSClient:
    def __init__(
        self,
        base_url: str,
        *,
        username: str = "",
        password: str = "",
        auth: Auth | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: Verify = True,
        observe: RequestObserver | None = None,
    ) -> None:
        self._auth: Auth = auth or BasicAuth(
            username,
            password,
            settings="OPENMRS_USER and OPENMRS_PASSWORD; the account locks after 7 failed logins",
        )
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=1)
        self._clients = ThreadClients(
            lambda: httpx.Client(
                base_url=base_url,
                timeout=timeout,
                follow_redirects=False,
                # Also for the transports httpx makes itself, for proxies of the environment.
                verify=verify,
                limits=limits,
                transport=client_transport(limits, verify, observe, transport),
            )
        )
        self._lock = threading.Lock()
        self.requests = 0

    @property
    def auth(self) -> Auth:
        return self._auth

    @property
    def _client(self) -> httpx.Client:
        return self._clients.get()

    def close(self) -> None:
        self._clients.close()
        self._auth.close()

    # -- transport -------------------------------------------------------------------------
    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json", **self._auth.headers()}

    def _get(self, path: str, params: Mapping[str, str | int]) -> Any:
        response = self._send("GET", path, params=params)
        try:
            return response.json()
        except ValueError as exc:
            raise OpenMRSError(f"OpenMRS GET {path}: answer is not JSON") from exc

    def _send(
        self, method: str, path: str, params: Mapping[str, str | int] | None = None
    ) -> httpx.Response:
        """A read (or a void, which may be sent again), retried once for each of: a dropped
        kept-alive connection, a stale session cookie, a token the server no longer takes."""
        session_retried = token_retried = dropped = False
        while True:
            had_session = bool(self._client.cookies)
            self._count()
            headers = self._headers()
            try:
                response = self._client.request(method, path, params=params, headers=headers)
            except httpx.RemoteProtocolError as exc:
                if dropped:
                    raise OpenMRSError(f"OpenMRS {method} {path}: {exc}") from exc
                dropped = True
                continue
            except httpx.HTTPError as exc:
                raise OpenMRSError(
                    describe("OpenMRS", method, path, exc), unavailable=unreachable(exc)
                ) from exc
            if response.status_code == 401 and had_session and not session_retried:
                # "Session timed out": the cookie is stale, not the credentials.
                self._client.cookies.clear()
                session_retried = True
                continue
            if _refused(response) and not token_retried and self._auth.renew(headers):
                token_retried = True
                continue
            self._raise_for(path, method, response)
            return response

    def _raise_for(self, path: str, method: str, response: httpx.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        message = _error_message(response)
        what = f"OpenMRS {method} {path}: HTTP {status}"
        if _to_sso(response):
            raise OpenMRSAuthError(f"{what}: {self._sso_refusal()}", status=status)
        if 300 <= status < 400:
            where = response.headers.get("location", "")
            raise OpenMRSError(f"{what}: redirects to {where} (check OPENMRS_URL)", status=status)
        if status == 401:
            raise OpenMRSAuthError(
                f"{what}: OpenMRS refuses {self._auth.describe()} (check {self._auth.settings})"
            )
        if status == 403:
            raise OpenMRSError(f"{what}: user lacks a privilege: {message}", status=status)
        raise OpenMRSError(f"{what}: {message}" if message else what, status=status)

    def _sso_refusal(self) -> str:
        if isinstance(self._auth, BasicAuth):
            return (
                "redirected to /oauth2login: single sign-on (OpenMRS's oauth2login module) is "
                "probably on, so Basic authentication is inactive; set OAUTH_ENABLED=true with "
                "OAUTH_ACCESS_TOKEN_URL, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET and "
                "OAUTH_CLIENT_SCOPE"
            )
        return (
            f"redirected to /oauth2login: OpenMRS's single sign-on does not accept the token "
            f"of {self._auth.describe()}, even a fresh one (check {self._auth.settings}, and "
            "that oauth2login trusts that realm's keys)"
        )

    # -- session ---------------------------------------------------------------------------
    def check_credentials(self) -> None:
        """One login attempt; raises OpenMRSAuthError if refused. Call once, before the work."""
        data = self._get(f"{REST}/session", {})
        if data.get("authenticated"):
            return
        if self._behind_sso():
            raise OpenMRSAuthError(f"OpenMRS {self._sso_refusal()}")
        raise OpenMRSAuthError(
            f"OpenMRS refuses {self._auth.describe()} (check {self._auth.settings}; "
            "nothing was retried)"
        )

    def _behind_sso(self) -> bool:
        """Whether OpenMRS sends the unauthenticated to /oauth2login. The session resource is
        exempt from that redirect, so a refused login there cannot tell; one request without
        credentials (no failed login counted) to another resource does."""
        request = self._client.build_request(
            "GET", f"{REST}/patientidentifiertype", params={"limit": 1}
        )
        self._count()
        try:
            return _to_sso(self._client.send(request))
        except httpx.HTTPError:
            return False

    # -- patients --------------------------------------------------------------------------
    def find_patients_rest(self, identifier: str) -> list[OpenMRSPatient]:
        """Every hit of the fuzzy identifier search, all pages. Filter exactly afterwards."""
        patients: list[OpenMRSPatient] = []
        start = 0
        while True:
            data = self._get(
                f"{REST}/patient",
                {"identifier": identifier, "v": _PATIENT_REP, "limit": PAGE, "startIndex": start},
            )
            results = data.get("results", [])
            patients.extend(_rest_patient(item) for item in results)
            if not results or not _has_next(data):
                return patients
            start += len(results)

    def find_patients_fhir(self, identifier: str) -> list[OpenMRSPatient]:
        """The exact FHIR identifier search, all pages."""
        # FHIR token syntax: '|' separates system and value, ',' means OR; escape both.
        token = identifier.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,")
        return [_fhir_patient(r) for r in self._fhir_search({"identifier": token})]

    def patients_changed(self, since: str) -> list[PatientChange]:
        """Patients whose FHIR `lastUpdated` is at or after `since` (ISO 8601), every page.

        One request while few patients change, however many studies wait for one. Voided
        patients are not listed by FHIR searches; what a merge gives the surviving patient is."""
        return [
            PatientChange(
                uuid=str(resource.get("id", "")),
                identifiers=tuple(i.identifier for i in _fhir_patient(resource).identifiers),
                last_updated=str((resource.get("meta") or {}).get("lastUpdated") or ""),
            )
            for resource in self._fhir_search({"_lastUpdated": f"ge{since}"})
        ]

    def live_patients(self, uuids: Sequence[str]) -> set[str]:
        """Which of these patients OpenMRS still holds unvoided: FHIR searches leave voided
        patients out, so one `_id` search per hundred patients tells (a merge voids one)."""
        found: set[str] = set()
        for start in range(0, len(uuids), PAGE):
            chunk = ",".join(uuids[start : start + PAGE])
            found.update(str(r.get("id", "")) for r in self._fhir_search({"_id": chunk}))
        return found

    def _fhir_search(self, params: dict[str, str]) -> Iterator[Mapping[str, Any]]:
        """The resources of a FHIR Patient search, following its `next` links."""
        path, query = f"{FHIR}/Patient", {**params, "_count": str(PAGE)}
        while True:
            data = self._get(path, query)
            entries = data.get("entry", []) or []
            for entry in entries:
                yield entry.get("resource", {}) or {}
            following = [
                str(link.get("url", ""))
                for link in data.get("link", []) or []
                if link.get("relation") == "next"
            ]
            if not entries or not following:
                return
            # The next link is absolute, as the server sees itself; keep only path and query.
            url = httpx.URL(following[0])
            path = FHIR + url.path.split(FHIR, 1)[-1] if FHIR in url.path else f"{FHIR}/Patient"
            query = dict(url.params)

    def get_patient(self, patient_uuid: str) -> OpenMRSPatient:
        """One patient by uuid; an unknown uuid is an error naming it."""
        try:
            data = self._get(f"{REST}/patient/{quote(patient_uuid, safe='')}", {"v": _PATIENT_REP})
        except OpenMRSError as exc:
            if exc.status == 404:
                raise OpenMRSError(
                    f"OpenMRS has no patient {patient_uuid}", status=404, retryable=False
                ) from exc
            raise
        return _rest_patient(data)

    # -- attachments -----------------------------------------------------------------------
    def attachments(self, patient_uuid: str) -> Iterator[Attachment]:
        """All of the patient's attachments, newest first, every page."""
        start = 0
        while True:
            data = self._get(
                f"{REST}/attachment", {"patient": patient_uuid, "limit": PAGE, "startIndex": start}
            )
            results = data.get("results", [])
            for item in results:
                yield Attachment(
                    uuid=str(item["uuid"]),
                    comment=item.get("comment"),
                    filename=str(item.get("filename") or ""),
                )
            if not results or not _has_next(data):
                return
            start += len(results)

    def upload(self, patient_uuid: str, preview: Preview, caption: str) -> str:
        """POST one attachment; its uuid. Not resent blindly here: a resend could duplicate it.

        The one resend: OpenMRS's single sign-on redirected it to /oauth2login, which its
        filter does before anything else runs (nothing was stored)."""
        path = f"{REST}/attachment"
        for attempt in (1, 2):
            had_session = bool(self._client.cookies)
            self._count()
            headers = self._headers()
            try:
                response = self._client.post(
                    path,
                    data={"patient": patient_uuid, "fileCaption": caption},
                    files={"file": (preview.filename, preview.data, preview.mime_type)},
                    headers=headers,
                )
            except httpx.HTTPError as exc:
                if unreachable(exc):  # never sent: nothing can have been stored
                    raise OpenMRSError(
                        describe("OpenMRS", "POST", path, exc), unavailable=True
                    ) from exc
                raise UploadOutcomeUnknown(describe("OpenMRS", "POST", path, exc)) from exc
            if response.status_code == 401 and had_session:
                self._client.cookies.clear()
                raise UploadOutcomeUnknown(
                    f"OpenMRS POST {path}: HTTP 401 with a stale session (the upload may have run)",
                    status=401,
                )
            if _to_sso(response) and attempt == 1 and self._auth.renew(headers):
                continue
            if response.status_code == 401 and self._auth.renew(headers):
                # A token refused after the request was read: it may have run; the next
                # request carries a fresh token.
                raise UploadOutcomeUnknown(
                    f"OpenMRS POST {path}: HTTP 401 for the token (the upload may have run)",
                    status=401,
                )
            self._raise_for(path, "POST", response)
            try:
                return str(response.json()["uuid"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UploadOutcomeUnknown(f"OpenMRS POST {path}: answer has no uuid") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def void_attachment(self, attachment_uuid: str) -> None:
        self._send("DELETE", f"{REST}/attachment/{quote(attachment_uuid, safe='')}")

    # -- the server itself (`orthanc-openmrs check`) -----------------------------------------
    def whoami(self) -> OpenMRSUser | None:
        """The logged-in user, or None when OpenMRS refuses the credentials: one login."""
        return session_user(self._get(f"{REST}/session", {}))

    def search_patients(self, query: str, limit: int) -> list[OpenMRSPatient]:
        """OpenMRS's own patient search (by name or identifier, fuzzy), its first `limit`
        hits; fewer than REST_MIN_SEARCH characters find nothing there."""
        data = self._get(f"{REST}/patient", {"q": query, "v": _PATIENT_REP, "limit": limit})
        return [_rest_patient(item) for item in data.get("results", [])]

    def modules(self) -> list[OpenMRSModule]:
        """The modules OpenMRS loaded, with their versions (any logged-in user may list them)."""
        return [
            OpenMRSModule(
                module_id=str(item.get("uuid", "")),
                version=str(item.get("version") or ""),
                started=bool(item.get("started")),
            )
            for item in self._all_pages(f"{REST}/module", {"v": "full"})
        ]

    def has_concept(self, concept_uuid: str) -> bool:
        try:
            self._get(f"{REST}/concept/{quote(concept_uuid, safe='')}", {})
        except OpenMRSError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def identifier_types(self) -> list[tuple[str, str]]:
        """Every patient identifier type as (uuid, name)."""
        return [
            (str(item.get("uuid", "")), str(item.get("display", "")))
            for item in self._all_pages(f"{REST}/patientidentifiertype", {})
        ]

    def _all_pages(self, path: str, params: Mapping[str, str]) -> Iterator[Mapping[str, Any]]:
        start = 0
        while True:
            data = self._get(path, {**params, "limit": PAGE, "startIndex": start})
            results = data.get("results", []) or []
            yield from results
            if not results or not _has_next(data):
                return
            start += len(results)


def _to_sso(response: httpx.Response) -> bool:
    """A redirect to oauth2login's login page: what single sign-on answers the
    unauthenticated (its OAuth2LoginRequestFilter)."""
    location = response.headers.get("location", "")
    return response.is_redirect and "/oauth2login" in httpx.URL(location).path


def _refused(response: httpx.Response) -> bool:
    return response.status_code == 401 or _to_sso(response)


def session_user(data: Any) -> OpenMRSUser | None:
    """The user of a `GET /session` answer, or None when it is not authenticated."""
    if not isinstance(data, dict) or data.get("authenticated") is not True:
        return None
    user = data.get("user") or {}

    def names(items: Any) -> frozenset[str]:
        return frozenset(str(i.get("name") or i.get("display") or "") for i in items or [])

    return OpenMRSUser(
        username=str(user.get("username") or user.get("display") or ""),
        privileges=names(user.get("privileges")),
        roles=names(user.get("roles")),
    )


def _has_next(data: Mapping[str, Any]) -> bool:
    return any(link.get("rel") == "next" for link in data.get("links", []) or [])


def _rest_patient(item: Mapping[str, Any]) -> OpenMRSPatient:
    identifiers = tuple(
        PatientIdentifier(
            identifier=str(ident.get("identifier", "")),
            type_uuid=str((ident.get("identifierType") or {}).get("uuid", "")),
            type_name=str((ident.get("identifierType") or {}).get("name", "")),
            voided=bool(ident.get("voided", False)),
        )
        for ident in item.get("identifiers", []) or []
    )
    person = item.get("person") or {}
    return OpenMRSPatient(
        uuid=str(item["uuid"]),
        identifiers=identifiers,
        display=str(item.get("display", "")),
        voided=bool(item.get("voided", False)),
        gender=_text(person.get("gender")),
        # "1980-01-02T00:00:00.000+0300": midnight of the birth date in the server's time zone,
        # so the date is the text before the T; converting to UTC could move it a day back.
        birthdate=_iso_date(_text(person.get("birthdate"))[:10]),
        birthdate_estimated=person.get("birthdateEstimated") is True,
        family_names=_family_names(
            (_text(n.get("familyName")), _text(n.get("familyName2")))
            for n in person.get("names", []) or []
            if isinstance(n, dict)
        ),
    )


def _fhir_patient(resource: Mapping[str, Any]) -> OpenMRSPatient:
    identifiers = []
    for ident in resource.get("identifier", []) or []:
        kind = ident.get("type") or {}
        coding = (kind.get("coding") or [{}])[0]
        identifiers.append(
            PatientIdentifier(
                identifier=str(ident.get("value", "")),
                type_uuid=str(coding.get("code", "")),
                type_name=str(kind.get("text", "")),
            )
        )
    birthdate, estimated = _fhir_birth_date(_text(resource.get("birthDate")))
    return OpenMRSPatient(
        uuid=str(resource.get("id", "")),
        identifiers=tuple(identifiers),
        voided=resource.get("active") is False,
        gender=_FHIR_GENDER.get(_text(resource.get("gender")), ""),
        birthdate=birthdate,
        birthdate_estimated=estimated,
        family_names=_family_names(
            (_text(n.get("family")), "")
            for n in resource.get("name", []) or []
            if isinstance(n, dict)
        ),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _iso_date(text: str) -> date | None:
    if len(text) != len("1980-01-02"):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _fhir_birth_date(text: str) -> tuple[date | None, bool]:
    """FHIR's birthDate, and whether it is an estimate. FHIR has no birthdateEstimated: fhir2
    sends an estimated birth date with its year only (year and month for children up to 5)."""
    if len(text) in (len("1980"), len("1980-01")):
        return _iso_date((text + "-01-01")[:10]), True
    return _iso_date(text), False


def _family_names(names: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """Each name's family name; with a second one (familyName2), both together too, as
    DICOM writes a double surname in one component."""
    found: dict[str, None] = {}
    for family, second in names:
        for form in (family, f"{family} {second}".strip() if second else ""):
            if form.strip():
                found.setdefault(form, None)
    return tuple(found)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        error = body.get("error") or {}
        if isinstance(error, dict):
            fields = error.get("fieldErrors") or {}
            details = [f"{name}: {e.get('message')}" for name, errs in fields.items() for e in errs]
            return "; ".join([str(error.get("message", "")), *details]).strip("; ")
    return ""
