"""Several users in the OpenMRS double, as the review pages' sign-in meets them: each with its
own password, roles and privileges in `GET /session`, its own failed-login count and lockout,
and OpenMRS's privilege checks applied to each."""

from __future__ import annotations

import httpx
import pytest

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble

REST = "/ws/rest/v1"


@pytest.fixture
def double():
    with OpenMRSDouble() as server:
        server.add_user("clerk", "Clerk123", privileges=["Imaging Review: View Queue"],
                        role="Imaging Clerk")  # fmt: skip
        server.add_user("dev", "Dev12345")
        yield server


def _session(double, username: str, password: str) -> dict:
    with httpx.Client(base_url=double.url, auth=(username, password)) as http:
        return http.get(f"{REST}/session").json()


def test_session_shows_each_users_roles_and_privileges(double) -> None:
    """A user's session lists the privileges of its role; a System Developer lists none of
    its own (every check passes for it)."""
    clerk = _session(double, "clerk", "Clerk123")
    assert clerk["authenticated"] is True
    assert clerk["user"]["username"] == "clerk"
    assert [r["name"] for r in clerk["user"]["roles"]] == ["Imaging Clerk"]
    assert [p["name"] for p in clerk["user"]["privileges"]] == ["Imaging Review: View Queue"]
    dev = _session(double, "dev", "Dev12345")
    assert [r["name"] for r in dev["user"]["roles"]] == ["System Developer"]
    assert dev["user"]["privileges"] == []
    assert dev["user"]["uuid"] != clerk["user"]["uuid"]
    admin = _session(double, "admin", "Admin123")
    assert admin["user"]["username"] == "admin"


def test_each_user_has_its_own_password_and_lockout(double) -> None:
    """Wrong passwords count against that user only; seven lock it, even for the right one."""
    assert _session(double, "clerk", "Admin123")["authenticated"] is False
    assert double.failed_logins("clerk") == 1
    assert double.failed_logins("admin") == 0
    for _ in range(6):
        _session(double, "clerk", "wrong")
    assert double.is_locked("clerk")
    assert _session(double, "clerk", "Clerk123")["authenticated"] is False
    assert _session(double, "admin", "Admin123")["authenticated"] is True
    assert not double.is_locked("admin")


def test_privilege_checks_apply_to_the_signed_in_user(double) -> None:
    """The clerk's role lacks Get Patients: OpenMRS answers 403; the System Developer passes."""
    with httpx.Client(base_url=double.url, auth=("clerk", "Clerk123")) as http:
        response = http.get(f"{REST}/patient", params={"q": "abc"})
    assert response.status_code == 403
    assert "Get Patients" in response.json()["error"]["message"]
    with httpx.Client(base_url=double.url, auth=("dev", "Dev12345")) as http:
        assert http.get(f"{REST}/patient", params={"q": "abc"}).status_code == 200


def test_patient_search_by_name_with_a_custom_representation(double) -> None:
    """`?q=` finds patients by name or identifier; `v=custom:(...)` shapes the answer."""
    uuid = double.add_patient(["UN-4O4"], given="Lena", family="Lost", gender="F")
    rep = "custom:(uuid,display,person:(gender,names:(familyName)))"
    with httpx.Client(base_url=double.url, auth=("admin", "Admin123")) as http:
        by_name = http.get(f"{REST}/patient", params={"q": "lost", "v": rep}).json()
        by_id = http.get(f"{REST}/patient", params={"q": "UN-4O4", "v": rep}).json()
    (hit,) = by_name["results"]
    assert hit["uuid"] == uuid
    assert hit["person"] == {"gender": "F", "names": [{"familyName": "Lost"}]}
    assert [r["uuid"] for r in by_id["results"]] == [uuid]
