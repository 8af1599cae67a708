"""Orthanc behind token authorization: a real Orthanc whose REST API a Python plugin guards,
answering 403 like the authorization plugin."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from orthanc_openmrs.errors import OrthancAuthError
from orthanc_openmrs.models import Outcome
from orthanc_openmrs.orthanc import OrthancClient
from orthanc_openmrs_devtools.dicom_factory import StudySpec
from orthanc_openmrs_devtools.keycloak_double import KeycloakDouble
from orthanc_openmrs_devtools.openmrs_double import OpenMRSDouble
from orthanc_openmrs_devtools.orthanc_server import OrthancServer, TokenGuard
from support import load, settings_for, sync_pass

API_KEY = "site-api-key-123"


def _guarded(tmp_path: Path, guard: TokenGuard) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc", stable_age=1, token_guard=guard)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[OrthancServer]:
    yield from _guarded(tmp_path, TokenGuard(header="token", keys=(API_KEY,)))


@pytest.fixture
def keycloak() -> Iterator[KeycloakDouble]:
    with KeycloakDouble({"orthanc-client": "orthanc-secret"}) as double:
        yield double


@pytest.fixture
def jwt_guarded(tmp_path: Path, keycloak: KeycloakDouble) -> Iterator[OrthancServer]:
    yield from _guarded(tmp_path, TokenGuard(header="Authorization", jwks_url=keycloak.certs_url))


def _service_entries(server: OrthancServer, since: int) -> list[dict[str, object]]:
    return server.guard_log()[since:]


def test_api_key_in_the_token_header_syncs(
    keyed: OrthancServer, openmrs: OpenMRSDouble, database: Path
) -> None:
    """With ORTHANC_TOKEN_HEADER=token and the API key, a guarded Orthanc is synced."""
    openmrs.add_patient(["P001"])
    load(keyed, StudySpec("a"), StudySpec("b"))
    before = len(keyed.guard_log())
    settings = settings_for(
        keyed, openmrs, database, orthanc_token_header="token", orthanc_api_key=API_KEY
    )
    assert sync_pass(settings).counts[Outcome.SYNCED] == 2
    entries = _service_entries(keyed, before)
    assert entries
    assert all(entry["granted"] for entry in entries)


def test_without_a_token_the_403_stops_the_pass(
    keyed: OrthancServer, openmrs: OpenMRSDouble, database: Path
) -> None:
    """Basic credentials against the guard get 403: the pass stops at once with a message
    naming the token settings, not a failure per study retried again and again."""
    openmrs.add_patient(["P001"])
    load(keyed, *[StudySpec(f"s{i}") for i in range(5)])
    before = len(keyed.guard_log())
    with pytest.raises(OrthancAuthError) as info:
        sync_pass(settings_for(keyed, openmrs, database))
    assert info.value.status == 403
    assert "authorization plugin" in info.value.message
    assert "ORTHANC_TOKEN_HEADER" in info.value.message
    refused = _service_entries(keyed, before)
    assert 1 <= len(refused) <= 2
    assert not any(entry["granted"] for entry in refused)
    assert openmrs.attachments() == []


def test_client_credentials_token_of_its_own_for_orthanc(
    jwt_guarded: OrthancServer, keycloak: KeycloakDouble, openmrs: OpenMRSDouble, database: Path
) -> None:
    """Orthanc's own OAuth client (another than OpenMRS's) gets one token, sent as Bearer in
    Authorization; every request of the pass arrives before that token expires."""
    openmrs.add_patient(["P001"])
    load(jwt_guarded, StudySpec("a"), StudySpec("b"), StudySpec("c"))
    before = len(jwt_guarded.guard_log())
    settings = settings_for(
        jwt_guarded,
        openmrs,
        database,
        orthanc_token_header="Authorization",
        orthanc_oauth_access_token_url=keycloak.token_url,
        orthanc_oauth_client_id="orthanc-client",
        orthanc_oauth_client_secret="orthanc-secret",
    )
    assert sync_pass(settings).counts[Outcome.SYNCED] == 3
    entries = _service_entries(jwt_guarded, before)
    assert all(entry["granted"] for entry in entries)
    assert all(float(e["arrived"]) < float(e["exp"]) for e in entries)  # type: ignore[arg-type]
    assert keycloak.issued == 1


class _StaleFirst:
    """A token that Orthanc has stopped accepting, then a good one once refused: what a
    client-credentials token revoked between two requests looks like."""

    def __init__(self) -> None:
        self.key = "revoked-token"
        self.renewals = 0

    def headers(self) -> Mapping[str, str]:
        return {"token": self.key}

    def renew(self, sent: Mapping[str, str]) -> bool:
        self.renewals += 1
        self.key = API_KEY
        return True

    def describe(self) -> str:
        return "a test token"

    @property
    def settings(self) -> str:
        return "ORTHANC_API_KEY"

    def close(self) -> None:
        return None


def test_a_refused_token_is_renewed_for_a_file_download_too(keyed: OrthancServer) -> None:
    """The DICOM file download (streamed, for local decoding) renews a refused token and tries
    once more, as every other Orthanc request does, instead of failing the study."""
    load(keyed, StudySpec("file"))
    auth = _StaleFirst()
    client = OrthancClient(keyed.url, auth=auth)
    try:
        auth.key = API_KEY
        study_id = next(iter(client.study_id_pages()))[0]
        instance = client.study_series(study_id)[0].instance_ids[0]
        auth.key = "revoked-token"
        before = len(keyed.guard_log())
        data = client.file(instance, max_bytes=10_000_000)
    finally:
        client.close()
    assert data[128:132] == b"DICM"
    assert auth.renewals == 1
    assert [entry["granted"] for entry in _service_entries(keyed, before)] == [False, True]
