"""Signing in to the review pages against the OpenMRS double: one login per attempt, never
retried; the person's privileges come from OpenMRS; the 7th failure stops the pages from
sending more attempts for that username, so that they do not prolong OpenMRS's lockout."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from orthanc_openmrs.monitor import Monitor
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.store import Store
from orthanc_openmrs.web.app import Review, build_review_app
from orthanc_openmrs.web.people import Privilege
from orthanc_openmrs.web.sessions import COOKIE, Sessions

with warnings.catch_warnings():
    # Starlette's test client names an anyio alias that anyio 4.16 deprecates; nothing of ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient


@pytest.fixture
def client(tmp_path: Path, openmrs):
    Store(tmp_path / "ledger.sqlite3").close()
    openmrs.add_user("clerk", "Clerk123", privileges=[Privilege.VIEW.value, "Get Patients"],
                     role="Imaging Viewer")  # fmt: skip
    review = Review(
        orthanc=OrthancClient("http://127.0.0.1:9"),
        openmrs=OpenMRSClient(openmrs.url),
        database=tmp_path / "ledger.sqlite3",
        monitor=Monitor(grace=5),
        open_service=lambda: contextlib.nullcontext(),
        sessions=Sessions("k" * 32, 3600, secure=False),
        openmrs_url=openmrs.url,
        verify=True,
        timeout=5,
    )
    app = Starlette(routes=[Mount("/review", app=build_review_app(review))])
    with TestClient(app) as http:
        yield http, review


def _sign_in(http, review, password: str):
    form = {"csrf": review.sessions.signin_token(), "username": "clerk", "password": password}
    return http.post("/review/signin", data=form, follow_redirects=False)


def test_sign_in_opens_a_session_with_the_openmrs_privileges(client, openmrs) -> None:
    """One GET /session with the person's credentials, the OpenMRS session closed again, and
    a cookie naming the person and their review privileges."""
    http, review = client
    openmrs.reset_requests()
    response = _sign_in(http, review, "Clerk123")
    assert response.status_code == 303
    assert response.headers["location"] == "/review/"
    assert openmrs.count_requests("GET", "/ws/rest/v1/session") == 1
    assert openmrs.count_requests("DELETE", "/ws/rest/v1/session") == 1
    session = review.sessions.read(http.cookies.get(COOKIE))
    assert session is not None
    assert session.person.username == "clerk"
    assert session.person.granted == {Privilege.VIEW}


def test_failures_are_counted_and_the_seventh_stops_the_attempts(client, openmrs) -> None:
    http, review = client
    openmrs.reset_requests()
    for left in range(6, 0, -1):
        refused = _sign_in(http, review, "wrong")
        assert refused.status_code == 401
        assert f"{left} more failed sign-in" in refused.text
    seventh = _sign_in(http, review, "wrong")
    assert "now locks the account for 5 minutes" in seventh.text
    assert openmrs.failed_logins("clerk") == 7
    assert openmrs.is_locked("clerk")
    sent = openmrs.count_requests("GET", "/ws/rest/v1/session")
    assert sent == 7  # one login per attempt, none retried
    locked = _sign_in(http, review, "Clerk123")
    assert locked.status_code == 403
    assert "OpenMRS has locked it" in locked.text
    assert openmrs.count_requests("GET", "/ws/rest/v1/session") == sent  # nothing sent
    assert COOKIE not in http.cookies
