"""The handlers of the review pages: read the ledger and the servers in a worker thread,
decide nothing themselves (ranking.py, people.py, views.py do), render a template."""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orthanc_openmrs.caption import is_orthanc_id
from orthanc_openmrs.errors import SyncError
from orthanc_openmrs.models import NEEDS_A_PERSON, OpenMRSPatient
from orthanc_openmrs.web import ranking, signin, views
from orthanc_openmrs.web.app import (
    _NO_STORE,
    PREFIX,
    Review,
    checked_form,
    current,
    decide,
    page,
    refused,
    to_signin,
)
from orthanc_openmrs.web.people import Privilege, person_of
from orthanc_openmrs.web.sessions import same_token
from orthanc_openmrs.web.thumbnails import thumbnail

log = structlog.get_logger("orthanc_openmrs")
_SEARCH_HITS = 20
_RECENT_FAILURES = 10


class Handlers:
    def __init__(self, review: Review) -> None:
        self.r = review

    def _viewer(self, request: Request) -> tuple[Any, Response | None]:
        session = current(self.r, request)
        if session is None:
            return None, to_signin()
        if not session.person.may(Privilege.VIEW):
            return session, refused(
                session, f"Seeing the queue needs the OpenMRS privilege “{Privilege.VIEW.value}”."
            )
        return session, None

    # -- signing in and out --------------------------------------------------------------
    async def signin_form(self, request: Request) -> Response:
        token = self.r.sessions.signin_token()
        return page("signin.html", None, token=token, message="", username="")

    async def signin(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        username = form.get("username", "").strip()
        password = form.get("password", "")
        token = self.r.sessions.signin_token()
        if not self.r.sessions.signin_token_valid(form.get("csrf", "")):
            return page(
                "signin.html",
                None,
                403,
                token=token,
                username=username,
                message="The sign-in form had expired; please sign in again.",
            )
        if not username or not password:
            return page(
                "signin.html",
                None,
                400,
                token=token,
                username=username,
                message="Enter your OpenMRS username and password.",
            )
        if not self.r.password_signin:
            return page("signin.html", None, 403, token=token, username=username,
                        message=signin.SSO_ONLY)  # fmt: skip
        locked = self.r.failures.locked(username)
        if locked:
            return page(
                "signin.html",
                None,
                403,
                token=token,
                username=username,
                message=signin.lockout_message(locked),
            )
        outcome = await run_in_threadpool(
            signin.ask_openmrs, self.r.openmrs_url, username, password,
            verify=self.r.verify, timeout=self.r.timeout,
        )  # fmt: skip
        if outcome.user is None:
            message = outcome.message
            if not message:  # refused: counted as OpenMRS counts it
                message = signin.refusal(self.r.failures.failed(username))
                log.info("web.signin_refused", reason_code="credentials_refused")
            return page("signin.html", None, 401, token=token, username=username, message=message)
        self.r.failures.succeeded(username)
        person = person_of(outcome.user)
        log.info("web.signed_in", may=sorted(p.name.lower() for p in person.granted))
        _session, value = self.r.sessions.new(person)
        response = RedirectResponse(f"{PREFIX}/", 303, headers=_NO_STORE)
        response.headers.append("Set-Cookie", self.r.sessions.cookie_header(value))
        return response

    async def signout(self, request: Request) -> Response:
        session = current(self.r, request)
        if session is not None:
            form = await request.form()
            if not same_token(str(form.get("csrf", "")), session.csrf):
                return refused(session, "This form did not come from these pages.")
            self.r.sessions.revoke(session)
        response = RedirectResponse(f"{PREFIX}/signin", 303, headers=_NO_STORE)
        response.headers.append("Set-Cookie", self.r.sessions.cookie_header("", max_age=0))
        return response

    # -- reading -------------------------------------------------------------------------
    async def dashboard(self, request: Request) -> Response:
        session, refusal = self._viewer(request)
        if refusal:
            return refusal

        def read() -> dict[str, Any]:
            with self.r.ledger() as store:
                counts = store.counts()
                now = time.time()
                due, cursor = store.count_due(now), store.cursor()
                failures = store.recent_failures(_RECENT_FAILURES)
                catchup = store.catchup_done()
            last_change = self.r.monitor.orthanc_last_change
            lag = max(last_change - cursor, 0) if last_change is not None and cursor else None
            decided, total = views.backfill(counts)
            return {
                "counts": counts, "due": due, "lag": lag, "failures": failures,
                "decided": decided, "total": total, "catchup": catchup,
                "last_pass": self.r.monitor.last_pass,
                "needing": sum(counts[s] for s in NEEDS_A_PERSON),
                "states": NEEDS_A_PERSON,
            }  # fmt: skip

        return page("dashboard.html", session, **await run_in_threadpool(read))

    async def queue(self, request: Request) -> Response:
        session, refusal = self._viewer(request)
        if refusal:
            return refusal
        state = request.query_params.get("state", "")
        text = request.query_params.get("q", "").strip()[:200]
        states = views.queue_states(state)

        def read() -> tuple[list[Any], views.Paging]:
            with self.r.ledger() as store:
                _rows, total = store.review_page(states, text, 1, 0)
                paging = views.paging(request.query_params.get("page", "1"), total)
                rows, _ = store.review_page(states, text, views.PAGE_SIZE, paging.offset)
            return rows, paging

        rows, paging = await run_in_threadpool(read)
        return page("queue.html", session, rows=rows, paging=paging, state=state, q=text,
                    states=NEEDS_A_PERSON)  # fmt: skip

    async def audit(self, request: Request) -> Response:
        session, refusal = self._viewer(request)
        if refusal:
            return refusal

        def read() -> tuple[list[Any], views.Paging]:
            with self.r.ledger() as store:
                _rows, total = store.review_audit(1, 0)
                paging = views.paging(request.query_params.get("page", "1"), total)
                rows, _ = store.review_audit(views.PAGE_SIZE, paging.offset)
            return rows, paging

        rows, paging = await run_in_threadpool(read)
        return page("audit.html", session, rows=rows, paging=paging)

    async def study(self, request: Request) -> Response:
        session, refusal = self._viewer(request)
        if refusal:
            return refusal
        orthanc_id = request.path_params["orthanc_id"]
        query = request.query_params.get("q", "").strip()[:200]
        details = await run_in_threadpool(self._study_details, orthanc_id, query)
        if details is None:
            return page("missing.html", session, 404)
        return page("study.html", session, **details)

    def _study_details(self, orthanc_id: str, query: str) -> dict[str, Any] | None:
        if not is_orthanc_id(orthanc_id):
            return None
        with self.r.ledger() as store:
            row = store.get(orthanc_id)
            history = store.audit(orthanc_id) if row else []
        if row is None:
            return None
        tags, modalities, orthanc_error = self._orthanc_view(orthanc_id)
        dicom = views.dicom_identity(row, tags)
        candidates, errors = self._patients(views.candidate_uuids(row))
        found: list[ranking.Ranked] = []
        if query:
            try:
                found = ranking.rank(
                    tags or _tags_of(row), self.r.openmrs.search_patients(query, _SEARCH_HITS)
                )
            except SyncError as exc:
                errors.append(f"The patient search failed: {exc.message}")
        return {
            "row": row, "dicom": dicom, "modalities": modalities, "history": history[-10:],
            "candidates": ranking.rank(tags or _tags_of(row), candidates),
            "found": found, "q": query, "errors": errors, "orthanc_error": orthanc_error,
            "openmrs_identity": views.openmrs_identity,
            "waiting": row.state in NEEDS_A_PERSON,
        }  # fmt: skip

    def _orthanc_view(self, orthanc_id: str) -> tuple[dict[str, str], list[str], str]:
        try:
            study = self.r.orthanc.study(orthanc_id)
            series = self.r.orthanc.study_series(orthanc_id)
        except SyncError as exc:
            return {}, [], exc.message
        modalities = sorted({s.modality for s in series if s.modality})
        return dict(study.patient_tags), modalities, ""

    def _patients(self, uuids: list[str]) -> tuple[list[OpenMRSPatient], list[str]]:
        found, errors = [], []
        for uuid in uuids:
            try:
                found.append(self.r.openmrs.get_patient(uuid))
            except SyncError as exc:
                errors.append(f"Patient {uuid}: {exc.message}")
        return found, errors

    async def thumbnail(self, request: Request) -> Response:
        session = current(self.r, request)
        if session is None or not session.person.may(Privilege.VIEW):
            return Response(status_code=403, headers={"Cache-Control": "no-store"})
        orthanc_id = request.path_params["orthanc_id"]
        if not is_orthanc_id(orthanc_id):
            return Response(status_code=404)

        def make() -> bytes | None:
            with self.r.ledger() as store:
                row = store.get(orthanc_id)
                crashed = store.not_to_render()
            if row is None:
                return None
            return thumbnail(self.r.orthanc, orthanc_id, row.instance_id, crashed)

        data = await run_in_threadpool(make)
        if data is None:
            return Response(status_code=404, headers={"Cache-Control": "private, max-age=60"})
        # Private: a shared cache must never keep a patient's image.
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})  # fmt: skip

    # -- deciding ------------------------------------------------------------------------
    async def confirm_link(self, request: Request) -> Response:
        session, refusal = self._viewer(request)
        if refusal:
            return refusal
        if not session.person.may(Privilege.LINK):
            return refused(session, f"Linking needs the OpenMRS privilege "
                           f"“{Privilege.LINK.value}”.")  # fmt: skip
        orthanc_id = request.path_params["orthanc_id"]
        patient_uuid = request.query_params.get("patient", "")

        def read() -> dict[str, Any] | None:
            details = self._study_details(orthanc_id, "")
            if details is None:
                return None
            patients, errors = self._patients([patient_uuid])
            if not patients:
                return {**details, "patient": None, "errors": errors}
            tags = self._orthanc_view(orthanc_id)[0] or _tags_of(details["row"])
            ranked = ranking.rank(tags, patients)[0] if not patients[0].voided else None
            return {**details, "patient": ranked, "theirs": views.openmrs_identity(patients[0])}

        details = await run_in_threadpool(read)
        if details is None:
            return page("missing.html", session, 404)
        return page("confirm_link.html", session, **details)

    async def link(self, request: Request) -> Response:
        session, form, refusal = await checked_form(self.r, request, Privilege.LINK)
        if refusal or session is None:
            return refusal or to_signin()
        orthanc_id = request.path_params["orthanc_id"]
        patient_uuid = form.get("patient", "").strip()
        if not is_orthanc_id(orthanc_id) or not patient_uuid:
            return page("missing.html", session, 404)
        results, error = await run_in_threadpool(
            decide, self.r,
            lambda service: service.link(orthanc_id, patient_uuid, session.person.username),
        )  # fmt: skip
        return page("outcome.html", session, action="Link", orthanc_id=orthanc_id,
                    results=results or [], error=error)  # fmt: skip

    async def ignore(self, request: Request) -> Response:
        session, form, refusal = await checked_form(self.r, request, Privilege.IGNORE)
        if refusal or session is None:
            return refusal or to_signin()
        orthanc_id = request.path_params["orthanc_id"]
        reason = " ".join(form.get("reason", "").split())[:500]
        if not is_orthanc_id(orthanc_id):
            return page("missing.html", session, 404)
        if not reason:
            return page("outcome.html", session, action="Ignore", orthanc_id=orthanc_id,
                        results=[], error="Say why the study is to be ignored.")  # fmt: skip
        rows, error = await run_in_threadpool(
            decide, self.r,
            lambda service: service.ignore(orthanc_id, session.person.username, reason),
        )  # fmt: skip
        return page("outcome.html", session, action="Ignore", orthanc_id=orthanc_id,
                    results=[], ignored=rows or [], error=error)  # fmt: skip

    async def retry(self, request: Request) -> Response:
        session, _form, refusal = await checked_form(self.r, request, Privilege.RETRY)
        if refusal or session is None:
            return refusal or to_signin()
        orthanc_id = request.path_params["orthanc_id"]
        if not is_orthanc_id(orthanc_id):
            return page("missing.html", session, 404)
        results, error = await run_in_threadpool(
            decide, self.r, lambda service: service.retry(orthanc_id, session.person.username)
        )
        return page("outcome.html", session, action="Retry", orthanc_id=orthanc_id,
                    results=results or [], error=error)  # fmt: skip


def _tags_of(row: Any) -> dict[str, str]:
    """The patient tags the ledger kept, when Orthanc cannot be asked."""
    return {
        "PatientID": row.dicom_patient_id,
        "PatientName": row.patient_name,
        "PatientBirthDate": row.birth_date,
        "PatientSex": row.patient_sex,
    }
