"""The review pages as an ASGI app, mounted at /review on `run`'s HTTP surface.

Every page needs a signed-in person; every state-changing request is a POST carrying the
session's CSRF token and is checked against the person's privileges (people.py), whatever the
page showed. Decisions go through the same `Service` operations as the `link`, `ignore` and
`retry` commands (a service of their own per decision, with its own ledger connection and
leases), so they wait for and refuse like those commands and land in the same audit trail,
with the person's OpenMRS username.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orthanc_openmrs.errors import SyncError
from orthanc_openmrs.ledger.location import LedgerLocation
from orthanc_openmrs.monitor import Monitor
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.service import Service
from orthanc_openmrs.store import Store
from orthanc_openmrs.transport import Verify
from orthanc_openmrs.web import signin, views
from orthanc_openmrs.web.people import Privilege
from orthanc_openmrs.web.sessions import COOKIE, Session, Sessions, same_token

log = structlog.get_logger("orthanc_openmrs")
_HERE = Path(__file__).parent
PREFIX = "/review"


class LedgerSignOuts:
    """Sign-outs kept in the ledger, so that every process sharing it refuses the cookie."""

    def __init__(self, location: LedgerLocation) -> None:
        self._location = location

    def sign_out(self, session_id: str, until: float, now: float) -> None:
        store = Store(self._location)
        try:
            store.sign_out(session_id, until, now)
        finally:
            store.close()

    def signed_out(self, session_id: str) -> bool:
        store = Store(self._location, read_only=True)
        try:
            return store.signed_out(session_id)
        finally:
            store.close()


@dataclass
class Review:
    """What the pages work with: the service's clients (the browser never sees their
    credentials), the ledger, and how to open a service for one decision."""

    orthanc: OrthancClient
    openmrs: OpenMRSClient
    database: LedgerLocation
    monitor: Monitor
    open_service: Callable[[], AbstractContextManager[Service]]
    sessions: Sessions
    openmrs_url: str
    verify: Verify
    timeout: float
    # False behind single sign-on: OpenMRS's password login is off there (oauth2login).
    password_signin: bool = True
    failures: signin.FailedSignIns = field(default_factory=lambda: signin.FailedSignIns(time.time))

    @contextlib.contextmanager
    def ledger(self) -> Iterator[Store]:
        store = Store(self.database, read_only=True)
        try:
            yield store
        finally:
            store.close()


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every DICOM value is shown as text: Orthanc keeps `<script>` verbatim
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["dicom_date"] = views.shown_date
_ENV.filters["when"] = views.shown_time
_ENV.filters["name"] = views.shown_name
_ENV.globals.update(prefix=PREFIX, Privilege=Privilege, labels=views.STATE_LABELS)


def page(
    template: str,
    session: Session | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    body = _ENV.get_template(template).render(session=session, **context)
    return HTMLResponse(body, status, headers=_NO_STORE)


_NO_STORE = {
    "Cache-Control": "no-store",
    # Belt and braces beside the escaping: no script runs but the pages' own (there is none).
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def build_review_app(review: Review) -> Starlette:
    from orthanc_openmrs.web import pages  # the handlers need page() and Review from here

    handlers = pages.Handlers(review)
    return Starlette(
        routes=[
            Route("/", handlers.dashboard),
            Route("/signin", handlers.signin_form, methods=["GET"]),
            Route("/signin", handlers.signin, methods=["POST"]),
            Route("/signout", handlers.signout, methods=["POST"]),
            Route("/queue", handlers.queue),
            Route("/audit", handlers.audit),
            Route("/studies/{orthanc_id}", handlers.study),
            Route("/studies/{orthanc_id}/thumbnail", handlers.thumbnail),
            Route("/studies/{orthanc_id}/link", handlers.confirm_link, methods=["GET"]),
            Route("/studies/{orthanc_id}/link", handlers.link, methods=["POST"]),
            Route("/studies/{orthanc_id}/ignore", handlers.ignore, methods=["POST"]),
            Route("/studies/{orthanc_id}/retry", handlers.retry, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="static"),
        ]
    )


# -- shared by the handlers -------------------------------------------------------------------
def current(review: Review, request: Request) -> Session | None:
    return review.sessions.read(request.cookies.get(COOKIE))


def to_signin() -> Response:
    return RedirectResponse(f"{PREFIX}/signin", 303, headers=_NO_STORE)


def refused(session: Session, what: str) -> HTMLResponse:
    return page("refused.html", session, 403, what=what)


async def checked_form(
    review: Review, request: Request, privilege: Privilege
) -> tuple[Session | None, dict[str, str], Response | None]:
    """A POST's session and form, or the answer refusing it: no session, a wrong CSRF token,
    or a privilege the person does not hold (403 for the last two)."""
    session = current(review, request)
    if session is None:
        return None, {}, to_signin()
    form = {k: str(v) for k, v in (await request.form()).items()}
    if not same_token(form.get("csrf", ""), session.csrf):
        return (
            session,
            form,
            refused(
                session,
                "This form has expired or did not come from "
                "these pages (its security token does not match).",
            ),
        )
    if not session.person.may(privilege):
        return (
            session,
            form,
            refused(session, f"This needs the OpenMRS privilege “{privilege.value}”."),
        )
    return session, form, None


def decide(review: Review, act: Callable[[Service], Any]) -> tuple[Any, str]:
    """Run one decision on a service of its own: (its result, "") or (None, why it failed)."""
    try:
        with review.open_service() as service:
            return act(service), ""
    except SyncError as exc:
        return None, exc.message


__all__ = ["PREFIX", "Review", "build_review_app"]
