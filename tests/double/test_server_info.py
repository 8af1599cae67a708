"""The double's privileges, module list and concepts, as `orthanc-openmrs check` reads them."""

from __future__ import annotations

import httpx
import pytest
from test_openmrs_double import AUTH, REST, upload

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble

IMAGE_CONCEPT = "7cac8397-53cd-4f00-a6fe-028e8d743f8e"


@pytest.fixture
def double():
    with OpenMRSDouble() as server:
        yield server


@pytest.fixture
def client(double):
    with httpx.Client(base_url=double.url, auth=AUTH, timeout=10) as http:
        yield http


def test_session_shows_the_superuser_role_and_no_privileges_of_its_own(client) -> None:
    """By default the user has the System Developer role, which lists no privileges."""
    user = client.get(f"{REST}/session").json()["user"]
    assert [r["name"] for r in user["roles"]] == ["System Developer"]
    assert user["privileges"] == []


def test_a_limited_user_lists_its_privileges_and_is_refused_the_others(double, client) -> None:
    """With chosen privileges the session lists them, and a call needing another is a 403
    naming the first one missing."""
    patient = double.add_patient(["P1"])
    granted = ["Get Patients", "Get Visits", "Get Encounters", "Get Providers", "Get Concepts"]
    double.set_privileges(granted)
    user = client.get(f"{REST}/session").json()["user"]
    assert sorted(p["name"] for p in user["privileges"]) == sorted(granted)
    assert [r["name"] for r in user["roles"]] == ["Imaging Integration"]
    refused = upload(client, patient)
    assert refused.status_code == 403
    message = refused.json()["error"]["message"]
    assert message == (
        "User is logged in but doesn't have the relevant privilege "
        "[Privileges required: Add Observations,Edit Observations]"
    )
    assert double.attachments() == []
    listing = client.get(f"{REST}/attachment", params={"patient": patient})
    assert listing.status_code == 403
    assert "[Privileges required: View Attachments]" in listing.json()["error"]["message"]
    double.set_privileges([*granted, "Add Observations"])
    assert upload(client, patient).status_code == 201


def test_voiding_needs_edit_observations_and_edit_encounters(double, client) -> None:
    """DELETE of an attachment checks the obs and encounter privileges."""
    patient = double.add_patient(["P1"])
    uuid = double.add_attachment(patient, "c")
    double.set_privileges(["Get Observations", "Edit Observations", "Get Encounters"])
    refused = client.delete(f"{REST}/attachment/{uuid}")
    assert refused.status_code == 403
    assert "[Privileges required: Edit Encounters]" in refused.json()["error"]["message"]
    double.set_privileges(None)
    assert client.delete(f"{REST}/attachment/{uuid}").status_code == 204


def test_modules_are_listed_to_any_logged_in_user(double, client) -> None:
    """`/module?v=full` lists the modules with versions; without a login it is a 401."""
    modules = client.get(f"{REST}/module", params={"v": "full"}).json()["results"]
    by_id = {m["uuid"]: m for m in modules}
    assert set(by_id) == {"webservices.rest", "attachments", "fhir2"}
    assert by_id["attachments"]["version"] == "3.6.0"
    assert by_id["fhir2"]["started"] is True
    ref = client.get(f"{REST}/module").json()["results"][0]
    assert set(ref) == {"uuid", "display", "links"}
    double.stop_module("fhir2")
    again = client.get(f"{REST}/module/fhir2").json()
    assert again["started"] is False
    anonymous = httpx.get(f"{double.url}{REST}/module")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["message"] == (
        "User is not logged in [User must be authenticated]"
    )


def test_attachment_concepts_exist_until_removed(double, client) -> None:
    """The attachments module's image concept is a complex Question; an unknown one is 404."""
    concept = client.get(f"{REST}/concept/{IMAGE_CONCEPT}").json()
    assert concept["display"] == "ATT IMAGE ATTACHMENT"
    assert concept["datatype"]["display"] == "Complex"
    double.remove_concept(IMAGE_CONCEPT)
    assert client.get(f"{REST}/concept/{IMAGE_CONCEPT}").status_code == 404
