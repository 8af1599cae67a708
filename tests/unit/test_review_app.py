"""The review app in-process (Starlette's test client): no page without a sign-in, the
security headers, POSTs refused without a session, token or privilege, and no password
sign-in behind single sign-on (nothing sent to OpenMRS)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from orthanc_openmrs.models import OpenMRSUser
from orthanc_openmrs.monitor import Monitor
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs.store import Store
from orthanc_openmrs.web.app import Review, build_review_app
from orthanc_openmrs.web.people import Privilege, person_of
from orthanc_openmrs.web.sessions import COOKIE, Sessions

with warnings.catch_warnings():
    # Starlette's test client names an anyio alias that anyio 4.16 deprecates; nothing of ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

NOWHERE = "http://127.0.0.1:9"  # nothing listens: any request would fail


@pytest.fixture
def review(tmp_path: Path) -> Review:
    Store(tmp_path / "ledger.sqlite3").close()

    def no_service() -> contextlib.AbstractContextManager:
        raise AssertionError("no decision may reach the service")

    return Review(
        orthanc=OrthancClient(NOWHERE),
        openmrs=OpenMRSClient(NOWHERE),
        database=tmp_path / "ledger.sqlite3",
        monitor=Monitor(grace=5),
        open_service=no_service,
        sessions=Sessions("k" * 32, 3600, secure=False),
        openmrs_url=NOWHERE,
        verify=True,
        timeout=1,
        password_signin=False,
    )


class _Prefixed(TestClient):
    """Requests to the app as `run` mounts it, under /review."""

    def request(self, method: str, url: str, **kwargs):  # type: ignore[override]
        return super().request(method, "/review" + url, **kwargs)


def _client(review: Review) -> TestClient:
    return _Prefixed(Starlette(routes=[Mount("/review", app=build_review_app(review))]))


def test_every_page_needs_a_sign_in(review: Review) -> None:
    client = _client(review)
    for path in ("/", "/queue", "/audit", "/studies/x", "/studies/x/link?patient=p"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/review/signin"
    assert client.get("/studies/x/thumbnail").status_code == 403
    for action in ("link", "ignore", "retry"):
        response = client.post(f"/studies/x/{action}", data={}, follow_redirects=False)
        assert response.status_code == 303


def test_pages_carry_security_headers(review: Review) -> None:
    response = _client(review).get("/signin")
    assert response.status_code == 200
    assert "script-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert 'name="csrf"' in response.text


def test_no_password_sign_in_behind_single_sign_on(review: Review) -> None:
    """The page says so at once: OpenMRS is not asked, so no failed login is counted there."""
    client = _client(review)
    token = review.sessions.signin_token()
    response = client.post("/signin", data={"csrf": token, "username": "u", "password": "p"})
    assert response.status_code == 403
    assert "single sign-on" in response.text
    forged = client.post("/signin", data={"csrf": "x", "username": "u", "password": "p"})
    assert forged.status_code == 403
    assert "expired" in forged.text


def test_posts_need_the_token_and_the_privilege(review: Review) -> None:
    viewer = person_of(OpenMRSUser("v", frozenset({Privilege.VIEW.value}), frozenset()))
    session, value = review.sessions.new(viewer)
    client = _client(review)
    client.cookies.set(COOKIE, value)
    for action in ("link", "ignore", "retry"):
        refused = client.post(f"/studies/x/{action}", data={"csrf": session.csrf, "reason": "r"})
        assert refused.status_code == 403
        assert "privilege" in refused.text
    clerk = person_of(OpenMRSUser("c", frozenset(p.value for p in Privilege), frozenset()))
    _session, value = review.sessions.new(clerk)
    client.cookies.set(COOKIE, value)
    no_token = client.post("/studies/x/retry", data={})
    assert no_token.status_code == 403
    assert "security token" in no_token.text
