"""The double's patient change times and merges follow OpenMRS's source
(docs/openmrs-patient-changes.md): what moves FHIR's lastUpdated, what a merge does."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble

AUTH = ("admin", "Admin123")
FHIR = "/ws/fhir2/R4"


@pytest.fixture
def double():
    with OpenMRSDouble() as server:
        yield server


@pytest.fixture
def fhir(double):
    with httpx.Client(base_url=double.url + FHIR, auth=AUTH, timeout=10) as http:
        yield http


def changed_since(fhir, since: datetime, prefix: str = "ge") -> dict[str, str]:
    """uuid -> meta.lastUpdated of the patients a _lastUpdated search returns."""
    bundle = fhir.get(
        "/Patient", params={"_lastUpdated": prefix + since.isoformat(), "_count": 100}
    ).json()
    return {
        e["resource"]["id"]: e["resource"]["meta"]["lastUpdated"] for e in bundle.get("entry", [])
    }


def next_second() -> datetime:
    """Wait into the next whole second and return it: the double's clock keeps whole seconds."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()) + 0.01)
    return start


def test_a_new_patient_is_in_a_last_updated_search(double, fhir):
    """A patient created after the mark is listed, with its creation time as lastUpdated."""
    mark = next_second()
    old_patient = double.add_patient(["OLD-1"])
    assert old_patient in changed_since(fhir, mark)
    assert changed_since(fhir, mark + timedelta(seconds=5)) == {}


def test_gt_is_as_inclusive_as_ge_at_second_precision(double, fhir):
    """fhir2 caps the comparison at seconds and treats gt like ge: the boundary comes back."""
    mark = next_second()
    uuid = double.add_patient(["EDGE-1"])
    assert uuid in changed_since(fhir, mark + timedelta(milliseconds=700), prefix="gt")


def test_identifier_changes_do_not_move_last_updated(double, fhir):
    """Adding or voiding an identifier touches only the identifier row (invisible to FHIR)."""
    uuid = double.add_patient(["ID-1"])
    mark = next_second()
    double.add_identifier(uuid, "ID-2")
    double.void_identifier(uuid, "ID-1")
    assert changed_since(fhir, mark) == {}


def test_a_person_edit_moves_last_updated(double, fhir):
    """A birthdate or gender edit dirties the person row: the patient is listed again."""
    uuid = double.add_patient(["BD-1"], birthdate=date(1980, 1, 1))
    mark = next_second()
    double.edit_person(uuid, birthdate=date(1980, 1, 2))
    assert uuid in changed_since(fhir, mark)


def test_voided_patients_are_never_listed(double, fhir):
    """Voiding moves date_changed, but FHIR searches leave voided patients out."""
    mark = next_second()
    uuid = double.add_patient(["V-1"])
    double.void_patient(uuid)
    assert uuid not in changed_since(fhir, mark)


def test_id_search_lists_only_live_patients(double, fhir):
    """`_id=a,b` is an OR; a voided patient among them is left out."""
    live, voided = double.add_patient(["L-1"]), double.add_patient(["L-2"])
    double.void_patient(voided)
    bundle = fhir.get("/Patient", params={"_id": f"{live},{voided}"}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [live]


def test_bad_last_updated_value_is_a_400(fhir):
    """An unreadable date is refused as HAPI refuses it."""
    assert fhir.get("/Patient", params={"_lastUpdated": "ge-not-a-date"}).status_code == 400


def test_merge_moves_encounterless_attachments_as_new_obs(double):
    """The other patient's attachment is voided and a copy with a new uuid, the same caption
    and the same bytes appears on the preferred patient; its identifiers are copied over."""
    keep = double.add_patient(["KEEP-1"], gender="F")
    other = double.add_patient(["DUP-9"], gender="F")
    old = double.add_attachment(other, "CT - study=1.2.3", data=b"bytes")
    moved = double.merge_patients(keep, other)
    (copy,) = double.attachments(keep)
    assert moved == {old: copy.uuid}
    assert (copy.comment, copy.data) == ("CT - study=1.2.3", b"bytes")
    assert double.attachments(other) == []
    assert [a.voided for a in double.attachments(other, include_voided=True)] == [True]
    with httpx.Client(base_url=double.url, auth=AUTH) as http:
        found = http.get(
            "/ws/rest/v1/patient",
            params={"identifier": "DUP-9", "v": "custom:(uuid,voided)"},
        ).json()["results"]
    assert found == [{"uuid": keep, "voided": False}]


def test_merge_is_invisible_to_last_updated_unless_a_demographic_is_copied(double, fhir):
    """Copied identifiers are child rows; only a copied birthdate or gender moves the winner."""
    plain_keep, plain_other = double.add_patient(["PK"], gender="M"), double.add_patient(["PO"])
    filled_keep = double.add_patient(["FK"], gender="M")
    filled_other = double.add_patient(["FO"], gender="M", birthdate=date(1970, 5, 5))
    mark = next_second()
    double.merge_patients(plain_keep, plain_other)
    double.merge_patients(filled_keep, filled_other)
    assert set(changed_since(fhir, mark)) == {filled_keep}
