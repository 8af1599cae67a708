"""OpenMRS behind Ozone's single sign-on: OAuth2 client-credentials tokens from Keycloak."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from orthanc_openmrs.auth import ClientCredentials
from orthanc_openmrs.errors import OpenMRSAuthError, TokenRefused
from orthanc_openmrs.models import Outcome, Preview, State
from orthanc_openmrs.openmrs import OpenMRSClient
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer
from support import ledger, load, service, settings_for, sync_pass

CLIENT, SECRET = "eip-openmrs-orthanc", "eip-secret"


@pytest.fixture
def keycloak() -> Iterator[KeycloakDouble]:
    with KeycloakDouble({CLIENT: SECRET}) as double:
        yield double


@pytest.fixture
def sso(keycloak: KeycloakDouble) -> Iterator[OpenMRSDouble]:
    with OpenMRSDouble(sso_keys_url=keycloak.certs_url) as double:
        yield double


def oauth(keycloak: KeycloakDouble, **extra: Any) -> dict[str, Any]:
    return {
        "oauth_enabled": True,
        "oauth_access_token_url": keycloak.token_url,
        "oauth_client_id": CLIENT,
        "oauth_client_secret": SECRET,
        "oauth_client_scope": "profile",
        **extra,
    }


def _captions(double: OpenMRSDouble) -> list[tuple[str | None, str]]:
    return sorted((a.comment, a.patient_uuid) for a in double.attachments())


def _expired_on_arrival(double: OpenMRSDouble) -> list[Any]:
    return [r for r in double.requests if r.token_expires is None or r.arrived >= r.token_expires]


def test_sync_under_sso_is_the_same_as_with_basic(
    orthanc: OrthancServer, keycloak: KeycloakDouble, sso: OpenMRSDouble, tmp_path: Path
) -> None:
    """With OAUTH_ENABLED and Ozone's variables, a sync under SSO attaches what a sync with
    Basic attaches without SSO; every request carries a valid token, one token serves all."""
    specs = [StudySpec(f"s{i}", patient_id=f"P{i % 3}") for i in range(6)]
    specs.append(StudySpec("nobody", patient_id="NOBODY"))
    load(orthanc, *specs)
    with OpenMRSDouble() as plain:
        for double in (plain, sso):
            for i in range(3):
                double.add_patient([f"P{i}"], uuid=f"patient-{i}")
        basic = sync_pass(settings_for(orthanc, plain, tmp_path / "basic.sqlite3"))
        settings = settings_for(orthanc, sso, tmp_path / "sso.sqlite3", **oauth(keycloak))
        with_sso = sync_pass(settings)
        assert with_sso.counts == basic.counts
        assert with_sso.counts[Outcome.SYNCED] == 6
        assert _captions(sso) == _captions(plain)
    assert _expired_on_arrival(sso) == []
    assert keycloak.issued == 1


def test_basic_against_sso_stops_naming_the_oauth_settings(
    orthanc: OrthancServer, sso: OpenMRSDouble, database: Path
) -> None:
    """Basic credentials against SSO stop at the start with a message saying SSO is probably on
    and naming the OAUTH_ settings."""
    sso.add_patient(["P001"])
    load(orthanc, StudySpec("a"))
    with pytest.raises(OpenMRSAuthError) as info:
        sync_pass(settings_for(orthanc, sso, database))
    message = info.value.message
    assert "single sign-on" in message
    assert "/oauth2login" in message
    for name in ("OAUTH_ENABLED", "OAUTH_ACCESS_TOKEN_URL", "OAUTH_CLIENT_ID"):
        assert name in message
    assert sso.attachments() == []


def test_redirect_to_oauth2login_mid_pass_is_reported_as_sso(
    orthanc: OrthancServer, sso: OpenMRSDouble, database: Path
) -> None:
    """A 302 to /oauth2login on a lookup is a refusal naming SSO, not a failed study."""
    sso.add_patient(["P001"])
    ids = load(orthanc, StudySpec("a"))
    with (
        service(settings_for(orthanc, sso, database)) as built,
        pytest.raises(OpenMRSAuthError) as info,
    ):
        built.sync_now(ids["a"])
    assert "single sign-on" in info.value.message
    assert "OAUTH_CLIENT_SECRET" in info.value.message


def test_wrong_client_secret_stops_at_once(
    orthanc: OrthancServer, keycloak: KeycloakDouble, sso: OpenMRSDouble, database: Path
) -> None:
    """A refused client secret stops before any study, after one token request."""
    sso.add_patient(["P001"])
    load(orthanc, *[StudySpec(f"s{i}") for i in range(4)])
    settings = settings_for(orthanc, sso, database, **oauth(keycloak, oauth_client_secret="wrong"))
    with pytest.raises(TokenRefused) as info:
        sync_pass(settings)
    assert "Invalid client or Invalid client credentials" in info.value.message
    assert "OAUTH_CLIENT_SECRET" in info.value.message
    assert keycloak.refused == 1
    assert sso.requests == []


def test_run_with_five_second_tokens_never_sends_an_expired_one(
    orthanc: OrthancServer, keycloak: KeycloakDouble, sso: OpenMRSDouble, database: Path
) -> None:
    """`run` for 30 s while studies arrive, with tokens living 5 s and eight workers: no
    request arrives with an expired token, no study fails, and the endpoint is asked about
    once per lifetime (renewed a little early), not per request or per worker."""
    keycloak.lifetime = 5
    for i in range(4):
        sso.add_patient([f"P{i}"])
    settings = settings_for(
        orthanc, sso, database, **oauth(keycloak), sync_workers=8, sync_poll_interval=0.3
    )
    stop = threading.Event()
    uploaded = 0
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with service(settings) as built:
                built.openmrs.check_credentials()
                built.run_forever(stop)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        while time.monotonic() - started < 30 and not errors:
            specs = [StudySpec(f"r{uploaded}-{j}", patient_id=f"P{j}") for j in range(4)]
            load(orthanc, *specs, wait=False)
            uploaded += len(specs)
            time.sleep(1.5)
        deadline = time.monotonic() + 30
        while len(sso.attachments()) < uploaded and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=30)
    elapsed = time.monotonic() - started
    store = ledger(settings)
    try:
        failed = [r for r in store.needing_a_person() if r.state is State.FAILED]
    finally:
        store.close()
    assert errors == []
    assert len(sso.attachments()) == uploaded
    assert failed == []
    assert _expired_on_arrival(sso) == []
    assert len(sso.requests) > 10 * keycloak.issued
    # Renewed at 3.5 s of 5: at most one token per 3.5 s of running, at least one per 5 s.
    assert elapsed / 5 - 1 <= keycloak.issued <= elapsed / 3.5 + 2


def _frozen_client(double: OpenMRSDouble, keycloak: KeycloakDouble) -> OpenMRSClient:
    """A client whose clock stands still: it keeps its token past the token's real end."""
    auth = ClientCredentials(keycloak.token_url, CLIENT, SECRET, clock=lambda: 0.0)
    return OpenMRSClient(double.url, auth=auth)


def test_token_refused_mid_run_is_renewed_once_and_the_request_sent_again(
    keycloak: KeycloakDouble, sso: OpenMRSDouble
) -> None:
    """A token that expired (sessions gone too) gets the redirect; the client fetches one new
    token and sends the read, and the upload the redirect kept from running, once more."""
    keycloak.lifetime = 1
    patient = sso.add_patient(["P001"])
    client = _frozen_client(sso, keycloak)
    try:
        client.check_credentials()
        time.sleep(2.1)
        sso.expire_sessions()
        assert [p.uuid for p in client.find_patients_rest("P001")] == [patient]
        assert keycloak.issued == 2
        time.sleep(2.1)
        sso.expire_sessions()
        jpeg = io.BytesIO()
        Image.new("L", (8, 8)).save(jpeg, "JPEG")
        preview = Preview(jpeg.getvalue(), "image/jpeg", "radiology-image.jpg")
        client.upload(patient, preview, "caption")
    finally:
        client.close()
    assert len(sso.attachments(patient)) == 1
    assert keycloak.issued == 3
    redirected = [r for r in sso.requests if r.status == 302]
    assert len(redirected) == 2


def test_server_ignoring_tokens_is_refused_after_one_renewal(
    keycloak: KeycloakDouble, openmrs: OpenMRSDouble
) -> None:
    """An OpenMRS without SSO answers a Bearer token 401: one fresh token is tried, then the
    refusal names the OAuth client and settings; nothing loops."""
    client = _frozen_client(openmrs, keycloak)
    try:
        with pytest.raises(OpenMRSAuthError) as info:
            client.find_patients_rest("P001")
    finally:
        client.close()
    assert "OAuth2 client 'eip-openmrs-orthanc'" in info.value.message
    assert "OAUTH_CLIENT_SECRET" in info.value.message
    assert keycloak.issued == 2
    # the first token, the fresh one, and the fresh one without the cookie the 401s set
    assert openmrs.count_requests() == 3
