"""Orthanc REST client: JSON in, our models out; httpx errors mapped to ours here.

Orthanc closes idle connections after one second, so pooled connections expire sooner, and an
idempotent request that loses that race is sent once more.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from orthanc_openmrs.auth import Auth, BasicAuth
from orthanc_openmrs.errors import (
    OrthancAuthError,
    OrthancError,
    OrthancNotFound,
    OrthancUnsupported,
    RenderCrashed,
)
from orthanc_openmrs.models import (
    Change,
    ChangesPage,
    Instance,
    InstanceTags,
    IssuedIds,
    OrthancSystem,
    Series,
    Study,
)
from orthanc_openmrs.transport import (
    NoCookies,
    RequestObserver,
    ThreadClients,
    Verify,
    client_transport,
    describe,
    unreachable,
)

KEEPALIVE_EXPIRY = 0.8
STUDIES_PAGE = 1000
# Expanded studies are about 1 KB of JSON each. Pages of a megabyte, parsed one after the
# other, leave the heap fragmented and the process larger with every page; small ones do not.
EXPANDED_PAGE = 100
_JSON = "application/json"


def _seg(value: str) -> str:
    return quote(value, safe="")


class OrthancClient:
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
            username, password, settings="ORTHANC_USER and ORTHANC_PASSWORD"
        )
        limits = httpx.Limits(
            max_connections=2, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_EXPIRY
        )
        self._clients = ThreadClients(
            lambda: httpx.Client(
                base_url=base_url,
                cookies=NoCookies(),
                timeout=timeout,
                follow_redirects=False,
                # Also for the transports httpx makes itself, for proxies of the environment.
                verify=verify,
                limits=limits,
                transport=client_transport(limits, verify, observe, transport),
            )
        )
        self.requests = 0
        self._lock = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        return self._clients.get()

    def close(self) -> None:
        self._clients.close()
        self._auth.close()

    @property
    def auth(self) -> Auth:
        return self._auth

    # -- transport -------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        accept: str = _JSON,
        content: bytes | None = None,
        renders: str = "",
    ) -> httpx.Response:
        dropped = renewed = False
        while True:
            with self._lock:
                self.requests += 1
            headers = {"Accept": accept, **self._auth.headers()}
            try:
                response = self._client.request(
                    method, path, params=params, headers=headers, content=content
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.TimeoutException) as exc:
                if renders:
                    # Connections expire before Orthanc's idle timeout, so a render that loses
                    # its answer is a decoder that took Orthanc down; resending would crash a
                    # restarted Orthanc again.
                    raise RenderCrashed(
                        f"Orthanc stopped answering while rendering instance {renders}: {exc}",
                        instance_id=renders,
                    ) from exc
                if isinstance(exc, httpx.TimeoutException):
                    raise OrthancError(describe("Orthanc", method, path, exc)) from exc
                # The server dropped a kept-alive connection as we reused it: safe to resend once.
                if dropped or isinstance(exc, httpx.ReadError):
                    raise OrthancError(f"Orthanc {method} {path}: {exc}") from exc
                dropped = True
                continue
            except httpx.HTTPError as exc:
                raise OrthancError(
                    describe("Orthanc", method, path, exc), unavailable=unreachable(exc)
                ) from exc
            # Every request sent here only reads: one more try with a fresh token is safe.
            if response.status_code in (401, 403) and not renewed and self._auth.renew(headers):
                renewed = True
                continue
            return self._check(method, path, response)

    def _check(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        if status < 300:
            return response
        what = f"Orthanc {method} {path}: HTTP {status}"
        if status == 404:
            raise OrthancNotFound(what)
        if status == 415:
            raise OrthancUnsupported(what + " (cannot decode this image)")
        if status == 403:
            # The authorization plugin's answer to whatever it does not let through, Basic
            # credentials included: a refusal of us, not of this study.
            if isinstance(self._auth, BasicAuth):
                hint = (
                    "it probably wants a token: set ORTHANC_TOKEN_HEADER with ORTHANC_API_KEY "
                    "or the ORTHANC_OAUTH_* settings"
                )
            else:
                hint = f"check ORTHANC_TOKEN_HEADER and {self._auth.settings}"
            raise OrthancAuthError(
                f"{what}: Orthanc forbids the request: its authorization plugin refuses "
                f"{self._auth.describe()} ({hint})",
                status=status,
            )
        if status == 401:
            raise OrthancAuthError(
                f"{what}: credentials refused ({self._auth.describe()}; check "
                f"{self._auth.settings})",
                status=status,
            )
        detail = _error_detail(response)
        raise OrthancError(f"{what}{detail}", status=status)

    def _json(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        response = self._send("GET", path, params=params)
        try:
            return response.json()
        except ValueError as exc:
            raise OrthancError(f"Orthanc GET {path}: answer is not JSON") from exc

    # -- discovery -------------------------------------------------------------------------
    def changes(self, since: int, limit: int) -> ChangesPage:
        data = self._json("/changes", {"since": int(since), "limit": int(limit)})
        changes = tuple(
            Change(
                seq=int(item["Seq"]),
                change_type=str(item.get("ChangeType", "")),
                resource_type=str(item.get("ResourceType", "")),
                orthanc_id=str(item.get("ID", "")),
            )
            for item in data.get("Changes", [])
        )
        return ChangesPage(
            changes=changes, last=int(data.get("Last", since)), done=bool(data["Done"])
        )

    def high_water_mark(self) -> int:
        """The newest change sequence number (never moves backwards, unlike `?last`)."""
        return int(self._json("/changes", {"since": 0, "limit": 0}).get("Last", 0))

    def _study_pages(self, size: int, *, expand: bool) -> Iterator[list[Any]]:
        """Orthanc's list of studies, in insertion order, a page at a time (memory stays flat on
        a big PACS)."""
        params: dict[str, str | int] = {"expand": ""} if expand else {}
        offset = 0
        while page := self._json("/studies", {**params, "since": offset, "limit": size}):
            yield page
            offset += len(page)

    def study_id_pages(self, size: int = STUDIES_PAGE) -> Iterator[list[str]]:
        """Every study ID Orthanc holds, a page at a time."""
        for page in self._study_pages(size, expand=False):
            yield [str(i) for i in page]

    def studies_with_uids(self, size: int = EXPANDED_PAGE) -> Iterator[dict[str, str]]:
        """Every study Orthanc holds with its StudyInstanceUID, a page at a time: the
        expanded list costs Orthanc far less than asking for each UID's studies later."""
        for page in self._study_pages(size, expand=True):
            yield {
                str(item["ID"]): str(item.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
                for item in page
            }

    def study_uids(self, orthanc_ids: Iterable[str]) -> dict[str, str]:
        """The StudyInstanceUID of each of these studies that can be read now; a study that
        cannot (deleted, or an error of its own) is left out. A server that is unavailable or
        refuses the credentials stops the reading."""
        uids: dict[str, str] = {}
        for orthanc_id in orthanc_ids:
            try:
                uids[orthanc_id] = self.study(orthanc_id).study_uid
            except OrthancAuthError:
                raise
            except OrthancError as exc:
                if exc.unavailable:
                    raise
        return uids

    def lookup_study_uid(self, study_uid: str) -> list[str]:
        response = self._send("POST", "/tools/lookup", content=study_uid.encode("ascii"))
        return [str(item["ID"]) for item in response.json() if item.get("Type") == "Study"]

    # -- one study -------------------------------------------------------------------------
    def study(self, orthanc_id: str) -> Study:
        data = self._json(f"/studies/{_seg(orthanc_id)}")
        tags = data.get("MainDicomTags", {})
        return Study(
            orthanc_id=str(data["ID"]),
            study_uid=str(tags.get("StudyInstanceUID", "")),
            is_stable=bool(data.get("IsStable", False)),
            last_update=str(data.get("LastUpdate", "")),
            patient_tags={str(k): str(v) for k, v in data.get("PatientMainDicomTags", {}).items()},
            study_date=str(tags.get("StudyDate", "")),
            study_time=str(tags.get("StudyTime", "")),
            description=str(tags.get("StudyDescription", "")),
            accession=str(tags.get("AccessionNumber", "")),
            series_ids=tuple(str(s) for s in data.get("Series", [])),
        )

    def modified_from(self, orthanc_id: str) -> str:
        """The study this one was made from by Orthanc's own /modify (its ModifiedFrom
        metadata), or "" for a study received as it is."""
        try:
            response = self._send(
                "GET", f"/studies/{_seg(orthanc_id)}/metadata/ModifiedFrom", accept="text/plain"
            )
        except OrthancNotFound:
            return ""
        return response.text.strip()

    def issued_ids(self, orthanc_id: str) -> IssuedIds:
        """Who issued the study's patient identifiers. Orthanc indexes neither
        IssuerOfPatientID nor OtherPatientIDsSequence, so they are read from the patient module
        of one of the study's instances: one request whatever the study's size (`shared-tags`
        reads every instance, and leaves sequences out)."""
        tags = self._json(f"/studies/{_seg(orthanc_id)}/module-patient", {"simplify": ""})
        items = tags.get("OtherPatientIDsSequence") if isinstance(tags, dict) else None
        others = tuple(
            (_str(item.get("PatientID")), _str(item.get("IssuerOfPatientID")))
            for item in (items if isinstance(items, list) else [])
            if isinstance(item, dict)
        )
        issuer = _str(tags.get("IssuerOfPatientID")) if isinstance(tags, dict) else ""
        return IssuedIds(patient_id_issuer=issuer, others=others)

    def study_series(self, orthanc_id: str) -> list[Series]:
        return [_series(item) for item in self._json(f"/studies/{_seg(orthanc_id)}/series")]

    def series_instances(self, series_id: str) -> list[Instance]:
        return [
            Instance(
                orthanc_id=str(item["ID"]),
                sop_uid=str(item.get("MainDicomTags", {}).get("SOPInstanceUID", "")),
                number=_opt(item.get("MainDicomTags", {}).get("InstanceNumber")),
                index_in_series=_opt_int(item.get("IndexInSeries")),
            )
            for item in self._json(f"/series/{_seg(series_id)}/instances")
        ]

    def instance_tags(self, instance_id: str) -> InstanceTags:
        tags = self._json(f"/instances/{_seg(instance_id)}/simplified-tags")
        return InstanceTags(
            sop_class_uid=str(tags.get("SOPClassUID", "")).strip(),
            rows=_opt_int(tags.get("Rows")),
            columns=_opt_int(tags.get("Columns")),
            window_center=_opt(tags.get("WindowCenter")),
            window_width=_opt(tags.get("WindowWidth")),
            number_of_frames=_opt_int(tags.get("NumberOfFrames")) or 1,
        )

    def rendered(self, instance_id: str, max_side: int | None) -> bytes:
        """Frame 0 with the file's own window applied, fitted into max_side when given.

        Orthanc keeps the aspect ratio but also enlarges small images, so only pass a bound
        for images larger than it.
        """
        params = {"width": max_side, "height": max_side} if max_side else None
        path = f"/instances/{_seg(instance_id)}/rendered"
        return self._send(
            "GET", path, params=params, accept="image/jpeg", renders=instance_id
        ).content

    def preview(self, instance_id: str) -> bytes:
        """Frame 0 stretched over its full range: visible even without window tags."""
        path = f"/instances/{_seg(instance_id)}/preview"
        return self._send(
            "GET", path, params={"quality": 90}, accept="image/jpeg", renders=instance_id
        ).content

    def file(self, instance_id: str, max_bytes: int) -> bytes:
        """The instance's DICOM file as stored, refused past max_bytes (read as it streams, so
        a huge file never sits in memory whole)."""
        path = f"/instances/{_seg(instance_id)}/file"
        renewed = False
        while True:
            with self._lock:
                self.requests += 1
            headers = {"Accept": "application/dicom", **self._auth.headers()}
            try:
                with self._client.stream("GET", path, headers=headers) as response:
                    if response.status_code >= 300:
                        response.read()  # the error's JSON body, for the message
                    # A read, so one more try with a fresh token is as safe as in _send.
                    if (
                        response.status_code in (401, 403)
                        and not renewed
                        and self._auth.renew(headers)
                    ):
                        renewed = True
                        continue
                    self._check("GET", path, response)
                    return _bounded(response, path, max_bytes)
            except httpx.HTTPError as exc:
                raise OrthancError(
                    describe("Orthanc", "GET", path, exc), unavailable=unreachable(exc)
                ) from exc

    def pdf(self, instance_id: str) -> bytes:
        return self._send(
            "GET", f"/instances/{_seg(instance_id)}/pdf", accept="application/pdf"
        ).content

    # -- the server itself -------------------------------------------------------------------
    def system(self) -> OrthancSystem:
        """Orthanc's version and the plugins it loaded (`orthanc-openmrs check`)."""
        version = str(self._json("/system").get("Version", ""))
        return OrthancSystem(version, tuple(str(p) for p in self._json("/plugins")))


def _bounded(response: httpx.Response, path: str, max_bytes: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise OrthancError(
                f"Orthanc GET {path}: the file is over {max_bytes} bytes", retryable=False
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _series(item: Mapping[str, Any]) -> Series:
    tags = item.get("MainDicomTags", {})
    return Series(
        orthanc_id=str(item["ID"]),
        series_uid=str(tags.get("SeriesInstanceUID", "")),
        number=_opt(tags.get("SeriesNumber")),
        modality=str(tags.get("Modality", "")),
        date=_opt(tags.get("SeriesDate")),
        time=_opt(tags.get("SeriesTime")),
        description=str(tags.get("SeriesDescription", "")),
        instance_ids=tuple(str(i) for i in item.get("Instances", [])),
    )


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _opt(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _opt_int(value: Any) -> int | None:
    text = _opt(value)
    if text is None:
        return None
    try:
        return int(float(text.split("\\")[0]))
    except ValueError:
        return None


def _error_detail(response: httpx.Response) -> str:
    # Orthanc's error JSON comes without a Content-Type, so parse it whatever the header says.
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        message = body.get("Details") or body.get("Message")
        if message:
            return f" ({message})"
    return ""
