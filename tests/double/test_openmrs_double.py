"""The OpenMRS test double answers like the real server, quirks included."""

from __future__ import annotations

import base64
import io
import threading
import time
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from PIL import Image

from orthanc_openmrs_devtools.openmrs_double import (
    ID_CARD_TYPE_UUID,
    OPENMRS_ID_TYPE_UUID,
    Identifier,
    OpenMRSDouble,
)

AUTH = ("admin", "Admin123")
REST = "/ws/rest/v1"


def png_bytes(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), "red").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def double():
    with OpenMRSDouble() as server:
        yield server


@pytest.fixture
def double_b():
    with OpenMRSDouble(generation="B") as server:
        yield server


@pytest.fixture
def client(double):
    with httpx.Client(base_url=double.url, auth=AUTH, timeout=10) as http:
        yield http


def upload(
    http, patient, *, caption="a caption", name="p.png", data=None, mime="image/png", **extra
):
    fields = {"patient": patient, **extra}
    if caption is not None:
        fields["fileCaption"] = caption
    payload = png_bytes() if data is None else data
    return http.post(f"{REST}/attachment", data=fields, files={"file": (name, payload, mime)})


def error_message(response) -> str:
    return response.json()["error"]["message"]


# -- auth and sessions ---------------------------------------------------------------------


def test_first_response_sets_session_cookie(double):
    """The first response sets an HttpOnly JSESSIONID on /openmrs; a known cookie is not reset."""
    with httpx.Client(base_url=double.url) as http:
        first = http.get(f"{REST}/session")
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("JSESSIONID=")
        assert "Path=/openmrs" in cookie
        assert "HttpOnly" in cookie
        assert first.json()["authenticated"] is False
        second = http.get(f"{REST}/session")
        assert "set-cookie" not in second.headers


def test_authenticated_session_skips_basic(double):
    """Once Basic has logged the session in, the cookie alone authenticates, even with bad Basic."""
    with httpx.Client(base_url=double.url) as http:
        logged_in = http.get(f"{REST}/session", auth=AUTH)
        assert logged_in.json()["authenticated"] is True
        assert logged_in.json()["user"]["username"] == "admin"
        again = http.get(f"{REST}/patientidentifiertype", auth=("admin", "wrong"))
        assert again.status_code == 200
        assert double.failed_logins("admin") == 0
        assert http.delete(f"{REST}/session").status_code == 204


def test_stale_cookie_gets_401_but_upload_is_stored(double):
    """A stale JSESSIONID with good Basic gets 401 "Session timed out", yet the upload commits."""
    patient = double.add_patient(["100008E"])
    with httpx.Client(base_url=double.url, auth=AUTH) as http:
        assert http.get(f"{REST}/session").json()["authenticated"] is True
        double.expire_sessions()
        response = upload(http, patient)
    assert response.status_code == 401
    assert "text/html" in response.headers["content-type"]
    assert "Session timed out" in response.text
    assert len(double.attachments(patient)) == 1


def test_wrong_credentials_give_401_json_and_lock_after_seven(double):
    """Wrong Basic is a silent anonymous request (401 JSON); the seventh failure locks the user."""
    with httpx.Client(base_url=double.url, auth=("admin", "nope")) as http:
        response = http.get(f"{REST}/patient", params={"q": "abc"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="OpenMRS at /openmrs/ws/rest/"'
        assert response.json() == {
            "error": {
                "message": "User is not logged in [Privileges required: Get Patients]",
                "code": "org.openmrs.aop.AuthorizationAdvice:43",
                "detail": "",
            }
        }
        for _ in range(6):
            http.get(f"{REST}/session")
    assert double.failed_logins("admin") == 7
    assert double.is_locked("admin")
    with httpx.Client(base_url=double.url, auth=AUTH) as http:
        assert http.get(f"{REST}/session").json()["authenticated"] is False


def test_password_with_colon_is_cut_at_the_colon():
    """The server splits Basic on every ':', so a password containing one never matches."""
    with (
        OpenMRSDouble(password="a:b") as server,
        httpx.Client(base_url=server.url, auth=("admin", "a:b")) as http,
    ):
        assert http.get(f"{REST}/session").json()["authenticated"] is False


def test_fhir_refuses_bad_credentials_at_once(double):
    """FHIR answers 401 "Not authenticated" as an HTML page and counts the failed login."""
    response = httpx.get(f"{double.url}/ws/fhir2/R4/Patient", auth=("admin", "bad"))
    assert response.status_code == 401
    assert "Not authenticated" in response.text
    assert double.failed_logins("admin") == 1
    assert httpx.get(f"{double.url}/ws/fhir2/R4/Patient").status_code == 401


# -- patient search ------------------------------------------------------------------------


def test_identifier_search_is_fuzzy_with_exact_hit_first(double, client):
    """identifier= matches substrings of any identifier type, then names; the exact hit leads."""
    containing = double.add_patient(["X1000Y"], given="Ann", family="Lee")
    by_name = double.add_patient(["ZZZ9"], given="Bob", family="Smith1000")
    exact = double.add_patient([Identifier("1000", "ID Card")], given="Cy", family="Ray")
    double.add_patient(["777"], given="Unrelated", family="Person")
    response = client.get(f"{REST}/patient", params={"identifier": "1000"})
    assert response.status_code == 200
    assert [r["uuid"] for r in response.json()["results"]] == [exact, containing, by_name]
    assert response.json()["results"][0]["display"] == "1000 - Cy Ray"


def test_short_query_and_voided_identifiers_find_nothing(double, client):
    """One-character queries, voided identifiers and voided patients never match."""
    kept = double.add_patient(["ABC123", "OLD999"])
    double.void_identifier(kept, "OLD999")
    double.add_patient(["GONE55"], voided=True)
    for query in ("A", "OLD999", "GONE55"):
        response = client.get(f"{REST}/patient", params={"identifier": query})
        assert response.json() == {"results": []}, query


def test_searches_follow_voided_identifiers(double):
    """Voiding an identifier after searches found it takes it out of them; case never matters."""
    patient = double.add_patient(["ABC123", Identifier("abc123", "ID Card")])
    fhir = f"{double.url}/ws/fhir2/R4/Patient"
    with httpx.Client(base_url=double.url, auth=AUTH) as http:

        def found() -> tuple[list[str], int, list[str]]:
            fuzzy = http.get(f"{REST}/patient", params={"identifier": "abc123"}).json()
            exact = http.get(fhir, params={"identifier": "Abc123"}).json()
            start = {"identifier": "ABC", "searchType": "start"}
            prefix = http.get(f"{REST}/patient", params=start).json()
            return (
                [r["uuid"] for r in fuzzy["results"]],
                exact["total"],
                [r["uuid"] for r in prefix["results"]],
            )

        assert found() == ([patient], 1, [patient])
        double.void_identifier(patient, "ABC123")
        assert found() == ([patient], 1, [patient])
        double.void_identifier(patient, "abc123")
        # The identifier-prefix search does not look at the voided flag.
        assert found() == ([], 0, [patient])


def test_patient_paging_links_and_limits(double, client):
    """Pages carry next/prev links with startIndex; limit over 100 or under 1 is a 500."""
    uuids = [double.add_patient([f"PAG{i:03d}"]) for i in range(5)]
    page = client.get(f"{REST}/patient", params={"identifier": "PAG", "limit": 2, "startIndex": 2})
    body = page.json()
    assert [r["uuid"] for r in body["results"]] == uuids[2:4]
    links = {link["rel"]: link["uri"] for link in body["links"]}
    assert links["next"] == f"{double.url}{REST}/patient?identifier=PAG&limit=2&startIndex=4"
    assert links["prev"] == f"{double.url}{REST}/patient?identifier=PAG&limit=2&"
    last = client.get(links["next"]).json()
    assert [r["uuid"] for r in last["results"]] == uuids[4:]
    assert [link["rel"] for link in last["links"]] == ["prev"]
    too_many = client.get(f"{REST}/patient", params={"identifier": "PAG", "limit": 101})
    assert too_many.status_code == 500
    assert error_message(too_many) == "[Administrator has set absolute limit at 100]"
    assert client.get(f"{REST}/patient", params={"q": "PAG", "limit": 0}).status_code == 500


def test_custom_representation_returns_only_listed_properties(double, client):
    """v=custom:(...) nests exactly the properties asked for, and only active identifiers."""
    patient = double.add_patient(
        ["100008E", Identifier("OLD1", voided=True), Identifier("CARD7", "ID Card")],
        given="John",
        family="Smith",
        gender="M",
    )
    spec = (
        "custom:(uuid,voided,identifiers:(identifier,identifierType:(uuid,name),"
        "preferred,voided),person:(uuid,display,gender))"
    )
    response = client.get(f"{REST}/patient", params={"identifier": "100008E", "v": spec})
    assert response.json()["results"] == [
        {
            "uuid": patient,
            "voided": False,
            "identifiers": [
                {
                    "identifier": "100008E",
                    "identifierType": {"uuid": OPENMRS_ID_TYPE_UUID, "name": "OpenMRS ID"},
                    "preferred": True,
                    "voided": False,
                },
                {
                    "identifier": "CARD7",
                    "identifierType": {"uuid": ID_CARD_TYPE_UUID, "name": "ID Card"},
                    "preferred": False,
                    "voided": False,
                },
            ],
            "person": {"uuid": patient, "display": "John Smith", "gender": "M"},
        }
    ]


def test_custom_representation_shows_the_person(double, client):
    """A custom representation of the person shows gender, birth date, whether it is estimated
    and the non-voided names, nested as asked."""
    patient = double.add_patient(
        ["DEM-1"],
        given="Ana",
        family="Silva",
        gender="F",
        birthdate=date(1975, 6, 15),
        birthdate_estimated=True,
    )
    spec = (
        "custom:(uuid,person:(gender,birthdate,birthdateEstimated,"
        "preferredName:(givenName,familyName),names:(familyName,familyName2)))"
    )
    found = client.get(f"{REST}/patient/{patient}", params={"v": spec}).json()
    assert found == {
        "uuid": patient,
        "person": {
            "gender": "F",
            "birthdate": "1975-06-15T00:00:00.000+0000",
            "birthdateEstimated": True,
            "preferredName": {"givenName": "Ana", "familyName": "Silva"},
            "names": [{"familyName": "Silva", "familyName2": None}],
        },
    }
    plain = double.add_patient(["DEM-2"])
    shown = client.get(f"{REST}/patient/{plain}", params={"v": spec}).json()["person"]
    assert (shown["birthdate"], shown["birthdateEstimated"]) == (None, False)


def test_fhir_birth_date_of_an_estimate_keeps_its_year_or_month(double):
    """As fhir2 does, an estimated birth date is sent with its year only, or its year and month
    for a child of 5 or less; a known one whole; gender as FHIR's codes."""
    today = datetime.now(UTC).date()
    child = today.replace(day=1) - timedelta(days=400)
    adult = double.add_patient(
        ["EST-1"], gender="F", birthdate=date(1975, 6, 15), birthdate_estimated=True
    )
    young = double.add_patient(["EST-2"], birthdate=child, birthdate_estimated=True)
    known = double.add_patient(["EST-3"], gender="M", birthdate=date(1980, 1, 2))
    with httpx.Client(base_url=f"{double.url}/ws/fhir2/R4", auth=AUTH) as http:
        resources = {
            r["id"]: r
            for r in (http.get(f"/Patient/{uuid}").json() for uuid in (adult, young, known))
        }
    assert (resources[adult]["birthDate"], resources[adult]["gender"]) == ("1975", "female")
    assert resources[young]["birthDate"] == child.isoformat()[:7]
    assert (resources[known]["birthDate"], resources[known]["gender"]) == ("1980-01-02", "male")


def test_default_and_full_representations(double, client):
    """v=default lists identifiers as "Type = value" refs; v=full adds type and flags."""
    patient = double.add_patient(["100008E"], given="John", family="Smith")
    default = client.get(f"{REST}/patient/{patient}").json()
    assert default["identifiers"][0]["display"] == "OpenMRS ID = 100008E"
    assert set(default["identifiers"][0]) == {"uuid", "display", "links"}
    assert default["resourceVersion"] == "1.8"
    full = client.get(f"{REST}/patient", params={"q": "100008E", "v": "full"}).json()
    ident = full["results"][0]["identifiers"][0]
    assert ident["identifier"] == "100008E"
    assert ident["identifierType"]["display"] == "OpenMRS ID"
    assert (ident["preferred"], ident["voided"]) == (True, False)


def test_explicit_ref_is_refused_only_by_generation_a(double, client, double_b):
    """?v=ref on a search is a 500 on generation A, fine on B; ?v= is a 500 on both."""
    double.add_patient(["100008E"])
    double_b.add_patient(["100008E"])
    refused = client.get(f"{REST}/patient", params={"q": "100008E", "v": "ref"})
    assert refused.status_code == 500
    assert "Do not specify ?v=ref" in error_message(refused)
    assert client.get(f"{REST}/patient", params={"q": "100008E", "v": ""}).status_code == 500
    with httpx.Client(base_url=double_b.url, auth=AUTH) as http:
        accepted = http.get(f"{REST}/patient", params={"q": "100008E", "v": "ref"})
        assert accepted.status_code == 200
        empty = http.get(f"{REST}/patient", params={"q": "100008E", "v": ""})
        assert empty.status_code == 500
        assert empty.json()["error"]["rawMessage"] == "?v=(empty string) is not allowed"


def test_patient_without_search_or_unknown_uuid(client):
    """GET /patient without a search is 400; an unknown uuid is 404 with the REST message."""
    bare = client.get(f"{REST}/patient")
    assert bare.status_code == 400
    assert error_message(bare) == "The Resource Does not Support the Requested Operation [null]"
    missing = client.get(f"{REST}/patient/no-such-uuid")
    assert missing.status_code == 404
    assert error_message(missing) == "Object with given uuid doesn't exist [null]"


def test_identifier_types_are_listed(client):
    """The two default identifier types are listed as refs."""
    results = client.get(f"{REST}/patientidentifiertype").json()["results"]
    assert {(r["uuid"], r["display"]) for r in results} == {
        (OPENMRS_ID_TYPE_UUID, "OpenMRS ID"),
        (ID_CARD_TYPE_UUID, "ID Card"),
    }


def test_fhir_identifier_search_is_exact(double):
    """FHIR identifier= matches whole values only; TYPE|VALUE also needs the type's name."""
    wanted = double.add_patient(["100008E", Identifier("CARD7", "ID Card")], given="John")
    double.add_patient(["100008EX"])
    with httpx.Client(base_url=f"{double.url}/ws/fhir2/R4", auth=AUTH) as http:
        plain = http.get("/Patient", params={"identifier": "100008E"})
        assert plain.headers["content-type"].startswith("application/fhir+json")
        bundle = plain.json()
        assert (bundle["type"], bundle["total"]) == ("searchset", 1)
        resource = bundle["entry"][0]["resource"]
        assert resource["id"] == wanted
        assert resource["identifier"][0] == {
            "id": resource["identifier"][0]["id"],
            "use": "official",
            "type": {"coding": [{"code": OPENMRS_ID_TYPE_UUID}], "text": "OpenMRS ID"},
            "value": "100008E",
        }
        typed = http.get("/Patient", params={"identifier": "ID Card|CARD7"}).json()
        assert typed["total"] == 1
        wrong_type = http.get("/Patient", params={"identifier": "OpenMRS ID|CARD7"}).json()
        assert wrong_type["total"] == 0
        assert "entry" not in wrong_type
        either = http.get("/Patient", params={"identifier": "100008E,100008EX"}).json()
        assert either["total"] == 2


def test_fhir_paging_follows_next_link(double):
    """_count pages the bundle and the next link serves the rest."""
    for i in range(3):
        double.add_patient([f"F{i}"])
    with httpx.Client(auth=AUTH) as http:
        first = http.get(f"{double.url}/ws/fhir2/R4/Patient", params={"_count": 2}).json()
        assert (first["total"], len(first["entry"])) == (3, 2)
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        second = http.get(next_url).json()
        assert len(second["entry"]) == 1


# -- uploads -------------------------------------------------------------------------------


def test_upload_success_shape_and_storage(double, client):
    """A good upload is 201 with uuid, comment and obsDatetime only, and is stored as sent."""
    patient = double.add_patient(["100008E"])
    data = png_bytes()
    response = upload(client, patient, caption="Study CT", data=data, visit="unknown")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"uuid", "comment", "obsDatetime"}
    assert body["comment"] == "Study CT"
    assert body["obsDatetime"].endswith(".000+0000")
    [stored] = double.attachments(patient)
    assert (stored.uuid, stored.filename, stored.mime_type) == (body["uuid"], "p.png", "image/png")
    assert stored.data == data
    assert stored.downscaled is False
    assert client.get(f"{REST}/attachment/{stored.uuid}/bytes").content == data


def test_upload_without_caption_stores_null(double, client):
    """An absent fileCaption is stored and echoed as null."""
    patient = double.add_patient(["100008E"])
    response = upload(client, patient, caption=None)
    assert response.json()["comment"] is None
    assert double.attachments(patient)[0].comment is None


def test_caption_limit_is_255_java_chars(double, client, double_b):
    """255 UTF-16 units pass; 256 are a 500 on generation A and a 400 validation body on B."""
    patient = double.add_patient(["100008E"])
    assert upload(client, patient, caption="x" * 255).status_code == 201
    refused = upload(client, patient, caption="x" * 256)
    assert refused.status_code == 500
    assert error_message(refused) == (
        "['obs id is null' failed to validate with reason: comment: "
        "This value exceeds the maximum length of 255 permitted for this field.]"
    )
    assert refused.json()["error"]["code"].startswith("org.openmrs.validator.ValidateUtil:")
    patient_b = double_b.add_patient(["100008E"])
    with httpx.Client(base_url=double_b.url, auth=AUTH) as http:
        invalid = upload(http, patient_b, caption="x" * 256)
    assert invalid.status_code == 400
    assert invalid.json()["error"]["fieldErrors"]["comment"][0]["code"] == (
        "error.exceededMaxLengthOfField"
    )
    assert len(double.attachments(patient)) == 1
    assert double_b.attachments(patient_b) == []


def test_astral_characters_count_twice(double, client):
    """A character outside the BMP counts as two, as Java's String.length() does."""
    patient = double.add_patient(["100008E"])
    assert upload(client, patient, caption="\U0001f600" * 127 + "x").status_code == 201
    assert upload(client, patient, caption="\U0001f600" * 128).status_code == 500


def test_upload_size_limit_edges(double, client):
    """Exactly 5 MiB is accepted; one byte more is refused with the module's message."""
    patient = double.add_patient(["100008E"])
    limit = 5 * 1024 * 1024
    ok = upload(client, patient, name="a.pdf", data=b"%" * limit, mime="application/pdf")
    assert ok.status_code == 201
    big = upload(client, patient, name="a.pdf", data=b"%" * (limit + 1), mime="application/pdf")
    assert big.status_code == 400
    assert error_message(big) == "[The file exceeds the maximum size]"


def test_upload_refusals(double, client):
    """Missing file part, unknown patient, denied name and undecodable image are refused."""
    patient = double.add_patient(["100008E"])
    no_file = client.post(f"{REST}/attachment", data={"patient": patient}, files={"x": ("a", b"1")})
    assert no_file.status_code == 500
    assert error_message(no_file) == "[Required request part 'file' is not present]"
    unknown = upload(client, "no-such-patient")
    assert unknown.status_code == 400
    assert error_message(unknown) == (
        "[A patient parameter must be provided when uploading an attachment.]"
    )
    eicar = upload(client, patient, name="EICAR.txt", data=b"x", mime="text/plain")
    assert error_message(eicar) == "[The file name is not valid]"
    broken = upload(client, patient, data=b"not a png")
    assert (broken.status_code, error_message(broken)) == (400, "[The file has invalid content]")
    assert double.attachments(patient) == []


def test_large_image_is_flagged_as_downscaled(double, client):
    """An image over 1,200,000 bytes is stored with the down-scaling flag set."""
    patient = double.add_patient(["100008E"])
    buf = io.BytesIO()
    Image.frombytes("L", (1100, 1100), bytes(range(256)) * 4727).save(buf, "BMP")
    assert len(buf.getvalue()) > 1_200_000
    assert upload(client, patient, name="big.bmp", data=buf.getvalue(), mime="image/bmp").is_success
    assert double.attachments(patient)[0].downscaled is True


# -- listing, get, delete ------------------------------------------------------------------


def test_list_is_newest_first_and_paged(double, client):
    """The list is newest first, later uploads first on equal times, with next links."""
    patient = double.add_patient(["100008E"])
    seeded = double.add_attachment(patient, "old", filename="old.pdf", mime_type="application/pdf")
    first = upload(client, patient, caption="one").json()["uuid"]
    second = upload(client, patient, caption="two").json()["uuid"]
    page = client.get(f"{REST}/attachment", params={"patient": patient, "limit": 2}).json()
    assert [item["uuid"] for item in page["results"]] == [second, first]
    assert page["results"][0]["bytesContentFamily"] == "IMAGE"
    assert set(page["results"][0]) == {
        "uuid", "dateTime", "filename", "comment", "bytesMimeType", "bytesContentFamily", "links",
    }  # fmt: skip
    rest = client.get(page["links"][0]["uri"]).json()
    assert [item["uuid"] for item in rest["results"]] == [seeded]
    assert rest["results"][0]["bytesContentFamily"] == "PDF"


def test_list_orders_equal_times_by_upload_and_shows_only_the_patient(double, client):
    """Equal obs times list the later upload first; other patients' attachments never show."""
    patient = double.add_patient(["100008E"])
    other = double.add_patient(["100009C"])
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)

    def seed(owner: str, moment: datetime) -> str:
        return double.add_attachment(owner, "cap", obs_datetime=moment)

    first = seed(patient, noon)
    seed(other, noon)
    second = seed(patient, noon)
    later = seed(patient, noon + timedelta(seconds=1))
    earlier = seed(patient, noon - timedelta(days=1))
    seed(other, noon + timedelta(days=1))
    third = seed(patient, noon)
    expected = [later, third, second, first, earlier]
    listed = client.get(f"{REST}/attachment", params={"patient": patient}).json()
    assert [item["uuid"] for item in listed["results"]] == expected
    assert [a.uuid for a in double.attachments(patient)] == expected
    assert len(double.attachments()) == 7


def test_voided_and_purged_attachments_in_one_patients_list(double, client):
    """Voided ones keep their place under includeVoided; purging another's changes nothing."""
    patient = double.add_patient(["100008E"])
    other = double.add_patient(["100009C"])
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)
    first = double.add_attachment(patient, "first", obs_datetime=noon)
    voided = double.add_attachment(patient, "voided", obs_datetime=noon)
    theirs = double.add_attachment(other, "theirs", obs_datetime=noon)
    last = double.add_attachment(patient, "last", obs_datetime=noon)

    def listed(owner: str, include_voided: bool = False) -> list[str]:
        params = {"patient": owner, "includeVoided": str(include_voided).lower()}
        return [
            item["uuid"]
            for item in client.get(f"{REST}/attachment", params=params).json()["results"]
        ]

    assert client.delete(f"{REST}/attachment/{voided}").status_code == 204
    assert listed(patient) == [last, first]
    assert listed(patient, include_voided=True) == [last, voided, first]
    assert [a.uuid for a in double.attachments()] == [last, theirs, first]
    purge = {"purge": "true"}
    assert client.delete(f"{REST}/attachment/{theirs}", params=purge).status_code == 204
    assert listed(other, include_voided=True) == []
    assert listed(patient, include_voided=True) == [last, voided, first]
    assert client.delete(f"{REST}/attachment/{first}", params=purge).status_code == 204
    assert listed(patient, include_voided=True) == [last, voided]
    assert [a.uuid for a in double.attachments(include_voided=True)] == [last, voided]


def test_list_requires_a_known_patient(double, client):
    """No search parameter is "not supported"; a missing or unknown patient is also a 400."""
    bare = client.get(f"{REST}/attachment")
    assert bare.status_code == 400
    assert error_message(bare) == "The Resource Does not Support the Requested Operation [null]"
    unknown = client.get(f"{REST}/attachment", params={"patient": "nobody"})
    assert unknown.status_code == 400


def test_void_then_purge_and_unknown_uuid(double, client):
    """DELETE voids (hidden unless includeVoided), purge removes; unknown uuids are a 500."""
    patient = double.add_patient(["100008E"])
    att = double.add_attachment(patient, "cap")
    assert client.delete(f"{REST}/attachment/{att}").status_code == 204
    assert client.delete(f"{REST}/attachment/{att}").status_code == 204
    listed = client.get(f"{REST}/attachment", params={"patient": patient}).json()
    assert listed == {"results": []}
    with_voided = client.get(
        f"{REST}/attachment", params={"patient": patient, "includeVoided": "true"}
    ).json()
    assert [item["uuid"] for item in with_voided["results"]] == [att]
    one = client.get(f"{REST}/attachment/{att}").json()
    assert one["resourceVersion"] == "1.8"
    assert client.delete(f"{REST}/attachment/{att}", params={"purge": "true"}).status_code == 204
    assert double.attachments(patient, include_voided=True) == []
    gone = client.get(f"{REST}/attachment/{att}")
    assert (gone.status_code, error_message(gone)) == (500, "[null]")
    assert client.delete(f"{REST}/attachment/{att}").status_code == 500


# -- fault injection and observation -------------------------------------------------------


def test_fail_next_uploads(double, client):
    """Injected failures answer with the chosen status and store nothing, then uploads work."""
    patient = double.add_patient(["100008E"])
    double.fail_next_uploads(2, status=503)
    assert upload(client, patient).status_code == 503
    assert "error" in upload(client, patient).json()
    assert double.attachments(patient) == []
    assert upload(client, patient).status_code == 201


def test_drop_after_commit(double, client):
    """A dropped upload is stored but the client sees the connection close unanswered."""
    patient = double.add_patient(["100008E"])
    double.drop_after_commit(1)
    with pytest.raises(httpx.TransportError):
        upload(client, patient)
    assert len(double.attachments(patient)) == 1
    assert upload(client, patient).status_code == 201


def test_outage_answers_everything_with_html(double, client):
    """During an outage every request gets the status and an HTML page, until it ends."""
    double.set_outage(503)
    response = client.get(f"{REST}/session")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    double.set_outage(None)
    assert client.get(f"{REST}/session").status_code == 200


def test_latency_delays_answers(double, client):
    """The latency setting is slept before every answer and can change at any time."""
    double.latency = 0.3
    started = time.monotonic()
    client.get(f"{REST}/session")
    assert time.monotonic() - started >= 0.3
    double.latency = 0.0


def test_requests_are_recorded_and_counted(double, client):
    """Requests are logged with path, query and status, counted by method and path prefix."""
    patient = double.add_patient(["100008E"])
    client.get(f"{REST}/patient", params={"identifier": "100008E"})
    upload(client, patient)
    upload(client, patient)
    assert double.count_requests("POST", f"{REST}/attachment") == 2
    assert double.count_requests(path_prefix=f"{REST}/patient") == 1
    first = double.requests[0]
    assert (first.method, first.path, first.query, first.status) == (
        "GET",
        f"{REST}/patient",
        {"identifier": ["100008E"]},
        200,
    )
    double.reset_requests()
    assert double.count_requests() == 0


def test_concurrent_keep_alive_clients(double):
    """Several threads sharing a keep-alive client are all answered correctly."""
    patient = double.add_patient(["100008E"])
    errors: list[BaseException] = []

    def work(http):
        try:
            for _ in range(5):
                assert upload(http, patient).status_code == 201
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    with httpx.Client(base_url=double.url, auth=AUTH) as http:
        threads = [threading.Thread(target=work, args=(http,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(double.attachments(patient)) == 20


def test_malformed_basic_header_is_a_400(double):
    """A Basic token without a colon gets the filter's 400 page."""
    token = base64.b64encode(b"nocolon").decode()
    response = httpx.get(f"{double.url}{REST}/session", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 400
    assert "Invalid credentials provided" in response.text
